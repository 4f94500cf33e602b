"""Small helpers shared by the data, callback and CLI code."""

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn


def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder, as ``trainer.log_dir`` gives it, without its broadcast.

    ``trainer.log_dir`` is a collective call under DDP: reached on rank zero alone (inside
    rank-zero-only code) it waits forever for the other ranks. This reads the same folder locally;
    it is the true one on rank zero, where files are written.
    """
    if trainer.loggers:
        logger = trainer.loggers[0]
        folder = logger.log_dir if isinstance(logger, (CSVLogger, TensorBoardLogger)) else logger.save_dir
    else:
        folder = trainer.default_root_dir
    return Path(folder or trainer.default_root_dir)


def plain_hparams(owner: L.LightningModule | L.LightningDataModule) -> None:
    """Keep saved hyperparameters loadable with ``torch.load(weights_only=True)``, in place.

    Under the CLI, nets and optimizers are ``class_path`` configs that rebuild the model from the
    checkpoint alone. Live objects of a model built in Python are dropped (pass them again:
    ``load_from_checkpoint(path, net=...)``) and dataclasses become dicts, both in ``hparams`` and
    in the initial copy that loggers receive.
    """
    for hparams in (owner.hparams, getattr(owner, "_hparams_initial", None) or {}):
        for key, value in list(hparams.items()):
            if isinstance(value, nn.Module) or callable(value):
                del hparams[key]
            elif is_dataclass(value):
                hparams[key] = asdict(value)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Inference inside: eval mode (no dropout, running norm statistics) and no gradients. Every
    submodule's own mode is restored on the way out, also after an error."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


# mallopt's parameters (malloc.h) and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 64 << 20}


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of giving it back at once.

    A CPU training step allocates and frees the same large tensors every time (a batch's logits over a
    vocabulary, their gradients: tens of MB each). glibc serves a block over 32 MB with fresh pages
    from the system and returns them when it is freed, so every step pays a page fault and a zero fill
    per 4 KB: a third of a word-level LSTM step on 2 cores (benchmarks/RESULTS.md). With blocks up to
    1 GB taken from the heap, and the heap kept until 1 GB of it is free, a step reuses the last step's
    memory. The price: the process keeps the memory of its largest step. The command line calls this
    at start; ``LIGHTNING_SEQ_MALLOC=system`` leaves malloc as it is.

    Returns:
        Whether the settings were made (False where the C library is not glibc, or when opted out).
    """
    if os.environ.get("LIGHTNING_SEQ_MALLOC", "").lower() == "system":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process already has loaded
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), or no such handle (Windows)
        return False
    return all(mallopt(param, value) == 1 for param, value in _KEEP.items())


def training_ends(trainer: L.Trainer) -> bool:
    """Whether the training epoch ending now is the run's last (``max_steps`` or ``max_epochs`` reached,
    or a callback asked the run to stop). Asked in ``on_train_epoch_end``, which Lightning calls also
    when ``max_steps`` ends the run mid-epoch, before ``on_train_end``."""
    loop = trainer.fit_loop
    steps = loop.max_steps not in (None, -1) and trainer.global_step >= loop.max_steps
    epochs = loop.max_epochs not in (None, -1) and loop.epoch_progress.current.processed >= loop.max_epochs
    return steps or epochs or trainer.should_stop

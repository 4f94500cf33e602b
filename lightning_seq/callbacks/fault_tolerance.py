"""Callbacks that keep long runs safe: a NaN/Inf guard, checkpoint-and-requeue on Slurm's warning
signal, and the W&B run id kept with each checkpoint. The command line adds all three to every
``fit`` (a recipe may configure its own instances instead)."""

import os
import signal
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_seq.errors import InputError
from lightning_seq.utils import run_dir

# Exit status of a run that stopped on the requeue signal after saving its checkpoint: the batch
# script (slurm/train.sbatch) requeues the job when it sees it.
EXIT_REQUEUE = 3


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` goes: the first ModelCheckpoint's folder, else ``<run dir>/checkpoints``."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return run_dir(trainer) / "checkpoints" / "last.ckpt"


def _newest_checkpoint(trainer: L.Trainer) -> str:
    paths = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks]
    paths = [p for p in paths if p and Path(p).is_file()]
    return max(paths, key=lambda p: Path(p).stat().st_mtime) if paths else ""


class NonFiniteLoss(L.Callback):
    """Stop the run, or skip the step, when the training loss is NaN or infinite.

    The check sits between backward and the optimizer step, so a bad step never reaches the weights:
    the run stops with the weights of the last good step, naming the step and the newest checkpoint
    (``stop``), or the step's update is dropped (``skip``: every gradient set to None, so the
    optimizer moves neither weights nor moments). Under DDP all ranks take the same decision.
    It costs one host sync per step (reading one boolean) and, under DDP, one tiny all-reduce.

    Args:
        action: ``stop`` or ``skip``.
        max_skips: with ``skip``, stop anyway after this many bad steps in a row.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", max_skips: int = 10):
        if action not in ("stop", "skip"):
            raise InputError(f"NonFiniteLoss.action: expected 'stop' or 'skip', got '{action}'.")
        self.action, self.max_skips = action, max_skips
        self._finite: torch.Tensor | None = None
        self.skipped_in_a_row = 0

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor):
        self._finite = torch.isfinite(loss.detach()).all()

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._finite is None:
            return
        finite = trainer.strategy.reduce_boolean_decision(bool(self._finite), all=True)
        self._finite = None
        if finite:
            self.skipped_in_a_row = 0
            return
        step = trainer.global_step
        if self.action == "skip" and self.skipped_in_a_row < self.max_skips:
            self.skipped_in_a_row += 1
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            rank_zero_warn(f"Step {step}: the training loss is not finite; the step is skipped.")
            return
        newest = _newest_checkpoint(trainer)
        last_good = f"the newest checkpoint is {newest}" if newest else "no checkpoint was written yet"
        in_a_row = f" ({self.skipped_in_a_row} skipped in a row before it)" if self.skipped_in_a_row else ""
        raise InputError(
            f"training stopped at step {step}: the loss is NaN or infinite{in_a_row}; {last_good}. "
            "Fix: lower the learning rate, add warmup or gradient clipping (or check the data); resume "
            "with --ckpt_path, or skip such steps with NonFiniteLoss(action=skip)."
        )


class RequeueRequested(Exception):  # noqa: N818 - a request, not an error
    """Raised to end a run that saved its checkpoint on the requeue signal (exit status 3)."""


_received: set[int] = set()  # signals received since the handler was installed


def listen_for(signum: int) -> None:
    """Record ``signum`` instead of dying of it (the default action of SIGUSR1).

    The command line calls this first thing in a Slurm job: the warning can come before training
    starts (slurmctld checks limits every 30 s, so it comes up to 30 s earlier than asked).
    """
    if signal.getsignal(signum) is not _record:
        signal.signal(signum, _record)


def _record(signum: int, frame) -> None:
    _received.add(signum)  # only a flag: everything else happens between training steps


class RequeueOnSignal(L.Callback):
    """Save ``last.ckpt`` and stop when Slurm warns that the time limit is near (``--signal=USR1@90``).

    The signal handler only sets a flag. At the end of the next training step the checkpoint is
    written; the run then stops before the following step or validation, so every logged step is in
    the checkpoint and nothing is logged twice after the restart. The process exits with status 3,
    on which ``slurm/train.sbatch`` requeues the job; the restarted job resumes from ``last.ckpt`` in
    the same run folder and W&B run. Active in Slurm batch jobs only (``SLURM_JOB_ID`` set).

    Under DDP the ranks agree on the step through one collective every ``check_every_n_steps``
    steps (a single process checks at every step, for free).

    Args:
        signal_name: the signal Slurm sends (``SIGUSR1``).
        check_every_n_steps: how often ranks compare flags under DDP.
    """

    def __init__(self, signal_name: str = "SIGUSR1", check_every_n_steps: int = 10):
        self.signum = signal.Signals[signal_name]
        self.check_every_n_steps = check_every_n_steps
        self.saved: Path | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's own SIGUSR1 handler, when it installed one, would save from inside the signal
        # handler, in the middle of a step; ours replaces it.
        if os.environ.get("SLURM_JOB_ID"):
            listen_for(self.signum)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.saved is not None:
            return
        received = self.signum in _received
        if trainer.world_size > 1:
            if trainer.global_step % self.check_every_n_steps:
                return
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if received:
            path = last_checkpoint_path(trainer)
            trainer.save_checkpoint(path)
            self.saved = path
            for logger in trainer.loggers:  # tell W&B the run will come back
                run = getattr(logger, "_experiment", None)
                if run is not None and hasattr(run, "mark_preempting"):
                    run.mark_preempting()

    def _stop_if_saved(self, trainer: L.Trainer) -> None:
        if self.saved is not None:
            rank_zero_info(f"Requeue signal: checkpoint saved at step {trainer.global_step} to {self.saved}.")
            raise RequeueRequested(f"saved {self.saved} at step {trainer.global_step}")

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._stop_if_saved(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved(trainer)


class RunIdentity(L.Callback):
    """Keep the W&B run id in each checkpoint, so a resumed run continues the same W&B run.

    The command line reads it back before the loggers exist (:func:`lightning_seq.runs.wandb_id`).
    """

    def __init__(self):
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict:
        for logger in self._trainer.loggers if self._trainer is not None else ():
            if isinstance(logger, WandbLogger) and logger.version:
                return {"wandb_id": logger.version}
        return {}

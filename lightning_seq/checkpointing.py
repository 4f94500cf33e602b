"""Checkpoint files that survive a crash, and loading that runs no code.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin under the command line. It writes a
checkpoint to a temporary file beside the target, flushes it to disk, then renames it over the
target: a process killed in the middle of a save leaves the previous checkpoint whole, and the
rename is durable. (Lightning's own plugin serialises into memory, writes a temporary file in the
system's temp folder and moves it: where checkpoints live on another filesystem, a cluster's shared
disk, that move is a copy into the target, which a kill cuts short.)

Loading uses ``torch.load(weights_only=True)``: our checkpoints hold only tensors, numbers, strings
and containers of them, and such a load cannot execute code. A checkpoint that holds other objects
(from other code, or hyperparameters that are live Python objects) is refused with a message; load
it with ``weights_only=False`` only if you trust where it came from, since unpickling it may run
arbitrary code.
"""

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_seq.errors import InputError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save by write-to-temporary, fsync, rename; load with ``weights_only=True`` by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_folder(path.parent)  # make the rename itself durable

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise InputError(
                f"checkpoint '{path}' holds Python objects beyond tensors and plain values, and loading "
                f"it could run code ({str(err).splitlines()[0]}). Fix: load only checkpoints you trust, "
                "with weights_only=False (`--weights_only false` on the command line)."
            ) from None


def _is_local(path: _PATH) -> bool:
    return "file" in get_filesystem(path).protocol


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

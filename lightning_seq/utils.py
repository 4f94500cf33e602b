"""Small helpers shared by the data, callback and CLI code."""

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger


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

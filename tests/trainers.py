"""A Trainer for in-process tests: CPU, no logger, checkpoints, progress bar or summary."""

from pathlib import Path

import lightning as L


def quiet_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """A silent CPU Trainer writing under ``tmp_path``; ``kwargs`` replace any default."""
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})

"""Which run folder a ``fit`` writes to, and which checkpoint it resumes from.

A run's folder is ``<save_dir>/<name>/<version>/`` of its first logger (``runs/char_lstm/version_3/``);
checkpoints go to its ``checkpoints/``. Resuming continues the same folder and the same W&B run:

* ``--ckpt_path last``: the newest ``last.ckpt`` among the recipe's runs, continued in its folder;
* ``--ckpt_path runs/x/version_3/checkpoints/epoch=1.ckpt``: that file, in ``version_3``;
* in a Slurm batch job, the folder is ``slurm-<job id>`` (``slurm-<array job>_<task>`` in an array),
  fixed for the job, so a requeued job finds its own ``last.ckpt`` there and resumes from it.

The W&B run id is read from the checkpoint (see :class:`~lightning_seq.callbacks.RunIdentity`).
"""

import glob
import os
from pathlib import Path
from typing import Any

from lightning_seq.checkpointing import names_a_file, newest_match, read_checkpoint

_VERSIONED = ("CSVLogger", "TensorBoardLogger")  # loggers whose folder is save_dir/name/version
_DEFAULT_NAME = "lightning_logs"


def slurm_job() -> str | None:
    """The id of this Slurm batch job (``<array job>_<task>`` in an array), or None outside one."""
    if os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive") or "SLURM_JOB_ID" not in os.environ:
        return None
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def _loggers(trainer: Any) -> list:
    loggers = trainer.get("logger")
    if loggers is None or isinstance(loggers, bool):
        return []
    return loggers if isinstance(loggers, list) else [loggers]


def _kind(logger: Any) -> str:
    return str(logger.get("class_path", "")).rsplit(".", 1)[-1]


def runs_folder(trainer: Any) -> Path:
    """``<save_dir>/<name>`` of the first logger (Lightning's default when none is configured)."""
    for logger in _loggers(trainer):
        if _kind(logger) in _VERSIONED:
            args = logger.get("init_args") or {}
            save_dir = args.get("save_dir") or trainer.get("default_root_dir") or "."
            return Path(save_dir) / (args.get("name") or _DEFAULT_NAME)
        break
    return Path(trainer.get("default_root_dir") or ".") / _DEFAULT_NAME


def wandb_id(checkpoint: Path, weights_only: bool = True) -> str | None:
    """The W&B run id kept in a checkpoint by RunIdentity, if any."""
    state = read_checkpoint(checkpoint, weights_only=weights_only)  # mapped: only this entry is read
    callbacks = state.get("callbacks")
    identity = callbacks.get("RunIdentity") if isinstance(callbacks, dict) else None
    return identity.get("wandb_id") if isinstance(identity, dict) else None


def plan_fit(config: Any) -> None:
    """Settle, in a parsed ``fit`` config, the run folder (logger versions) and the checkpoint to resume."""
    trainer = config["trainer"]
    folder = runs_folder(trainer)
    ckpt, version = config.get("ckpt_path"), None
    job = slurm_job()
    if ckpt == "last":
        fix = (
            f"train first (no run under '{folder}' has saved a last.ckpt yet), give the checkpoint's path, "
            "or save last checkpoints (ModelCheckpoint save_last: true)."
        )
        pattern = os.path.join(glob.escape(str(folder)), "*", "checkpoints", "last.ckpt")
        ckpt = str(newest_match(pattern, "--ckpt_path last", fix))
    elif job is not None:
        version = f"slurm-{job}"
        last = folder / version / "checkpoints" / "last.ckpt"
        if ckpt is None and last.is_file():  # a requeued job: go on where it stopped
            ckpt = str(last)
    if ckpt is not None and ckpt != "last":
        path = Path(ckpt)
        if path.parent.name == "checkpoints" and path.parent.parent.parent.resolve() == folder.resolve():
            version = path.parent.parent.name  # continue in the checkpoint's own run folder
    config["ckpt_path"] = ckpt
    weights_only = config.get("weights_only") is not False
    run_id = wandb_id(Path(ckpt), weights_only) if names_a_file(ckpt) else None
    for logger in _loggers(trainer):
        args = logger.get("init_args")
        if args is None:
            continue
        if _kind(logger) in _VERSIONED and version is not None and args.get("version") is None:
            args["version"] = version
        elif _kind(logger) == "WandbLogger" and run_id is not None and args.get("id") is None:
            args["id"] = run_id

"""Which run folder a ``fit`` writes to, which checkpoint a run starts from, and what earlier runs left.

A run's folder is ``<save_dir>/<name>/<version>/`` of its first logger (``runs/char_lstm/version_3/``);
checkpoints go to its ``checkpoints/``. Resuming continues the same folder and the same W&B run:

* ``--ckpt_path last``: the newest ``last.ckpt`` among the recipe's runs, continued in its folder
  (``validate``, ``test`` and ``predict`` take the same file, and stop when there is none). When a
  newer run has no ``last.ckpt`` (it stopped, or is still, before its first checkpoint), a line says so;
* ``--ckpt_path runs/x/version_3/checkpoints/epoch=1.ckpt``: that file, in ``version_3``;
* in a Slurm batch job, the folder is ``slurm-<job id>`` (``slurm-<array job>_<task>`` in an array),
  fixed for the job, so a requeued job finds its own ``last.ckpt`` there and resumes from it.

The W&B run id is read from the checkpoint (see :class:`~lightning_seq.callbacks.RunIdentity`).

**Leftovers.** Every run of the recipe (any subcommand) first removes what earlier runs under
``<save_dir>/<name>/`` left behind, and only that (:func:`remove_leftovers`):

* a run folder holding nothing but what a run writes before its first step (``config.yaml``,
  ``hparams.yaml``, the tokenizers a text DataModule copies from its cache, its marker, the sanity
  check's ``predictions/step_000000.png``, empty folders) and at least its ``config.yaml``, whose run
  has ended. A run holds a lock on its
  folder's marker, ``.lightning_seq.run``, from before it writes its config until its process ends
  (:func:`hold_run_folder`); a folder is taken for a leftover only when that lock can be taken, so
  the folder of a live run (a DDP job still preparing its data, on any host of a file system with
  locks) is never touched, nor a folder without a marker (from an older version, or another tool);
* temporary files of checkpoint saves that were killed midway, in the run folders' ``checkpoints/``
  (:func:`~lightning_seq.checkpointing.remove_leftover_temporaries`).

Neither is ever what ``--ckpt_path last`` picks: it takes only a ``last.ckpt``.
"""

import glob
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_seq.checkpointing import (
    names_a_file,
    newest_match,
    read_checkpoint,
    remove_leftover_temporaries,
)
from lightning_seq.errors import InputError

try:
    import fcntl
except ImportError:  # not on Windows: no run is then ever taken for a leftover
    fcntl = None

_VERSIONED = ("CSVLogger", "TensorBoardLogger")  # loggers whose folder is save_dir/name/version
_DEFAULT_NAME = "lightning_logs"
RUN_MARKER = ".lightning_seq.run"  # in a run folder: which run made it; locked while that run lives
# all that a run writes into its folder before its first step: its config, hyperparameters, the tokenizers
# that text DataModules copy from their cache (copies), its marker; and in these folders, the pictures of
# the sanity check's validation at step 0
_BEFORE_FIRST_STEP = frozenset(
    {"config.yaml", "hparams.yaml", "tokenizer.json", "src_tokenizer.json", RUN_MARKER}
)
_STEP_ZERO_FOLDERS, _STEP_ZERO = frozenset({"predictions", "samples"}), "step_000000.png"


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


def plan_fit(config: Any) -> str | None:
    """Settle, in a parsed ``fit`` config, the run folder (logger versions) and the checkpoint to resume.

    Returns:
        The name of the run folder the run continues (``version_3``, ``slurm-<job>``), when it is fixed.

    Raises:
        InputError: ``last`` and no run has saved a ``last.ckpt``; ``best``; an unreadable checkpoint.
    """
    trainer = config["trainer"]
    folder = runs_folder(trainer)
    ckpt, version = config.get("ckpt_path"), None
    job = slurm_job()
    weights_only = config.get("weights_only") is not False
    if ckpt == "last":
        ckpt = str(newest_last(folder, "resuming", weights_only))
    elif ckpt == "best":
        raise InputError(_best_message(folder, "fit"))
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
    run_id = wandb_id(Path(ckpt), weights_only) if names_a_file(ckpt) else None
    for logger in _loggers(trainer):
        args = logger.get("init_args")
        if args is None:
            continue
        if _kind(logger) in _VERSIONED and version is not None and args.get("version") is None:
            args["version"] = version
        elif _kind(logger) == "WandbLogger" and run_id is not None and args.get("id") is None:
            args["id"] = run_id
    return version


def plan_evaluation(config: Any, subcommand: str) -> None:
    """Settle, in a parsed ``validate``/``test``/``predict`` config, the checkpoint: ``last`` becomes the
    newest ``last.ckpt`` among the recipe's runs, as for ``fit`` (Lightning would look only in the new
    run's own folder, find none, and go on with untrained weights).

    Raises:
        InputError: ``last`` and no run has saved a ``last.ckpt``; ``best`` (which only a ``fit`` in the
            same process has).
    """
    folder = runs_folder(config["trainer"])
    if config.get("ckpt_path") == "last":
        config["ckpt_path"] = str(newest_last(folder, "using", config.get("weights_only") is not False))
    elif config.get("ckpt_path") == "best":
        raise InputError(_best_message(folder, subcommand))


def predictions_file(ckpt_path: str | None, output: str | None) -> Path:
    """Where ``predict`` writes its predictions: ``--output`` (a file, or a folder to put the default name
    in); else beside the checkpoint, in the run folder that saved it (``runs/x/version_3/
    predictions_last.jsonl`` for ``runs/x/version_3/checkpoints/last.ckpt``) or the checkpoint's own
    folder; ``predictions.jsonl`` in the current folder when there is no checkpoint."""
    name = f"predictions_{Path(ckpt_path).stem}.jsonl" if ckpt_path else "predictions.jsonl"
    if output:
        return Path(output) / name if Path(output).is_dir() else Path(output)
    if not ckpt_path:
        return Path(name)
    ckpt = Path(ckpt_path)
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / name


def newest_last(folder: Path, verb: str = "resuming", weights_only: bool = True) -> Path:
    """The newest ``last.ckpt`` among the runs under ``folder``; when a newer run saved none, one info
    line says which run ``--ckpt_path last`` takes (``verb``: resuming, using) and which runs had none.

    Raises:
        InputError: no run under ``folder`` has saved a ``last.ckpt``.
    """
    fix = (
        f"train first (no run under '{folder}' has saved a last.ckpt yet), give the checkpoint's path, "
        "or save last checkpoints (ModelCheckpoint save_last: true)."
    )
    pattern = os.path.join(glob.escape(str(folder)), "*", "checkpoints", "last.ckpt")
    ckpt = newest_match(pattern, "--ckpt_path last", fix)
    run, written = ckpt.parent.parent, ckpt.stat().st_mtime
    newer = [
        other
        for other in _run_folders(folder)
        if other.name != run.name and _stage(other) == "fit" and _started(other) > written
        if not (other / "checkpoints" / "last.ckpt").is_file()
    ]
    if newer:
        step = read_checkpoint(ckpt, weights_only=weights_only).get("global_step")
        at = f" (step {step})" if isinstance(step, int) else ""
        names = ", ".join(f"'{other}'" for other in newer)
        runs = f"the newer run {names} has" if len(newer) == 1 else f"the newer runs {names} have"
        rank_zero_info(f"--ckpt_path last: {verb} '{run}' from its last.ckpt{at}; {runs} no checkpoint.")
    return ckpt


def _best_message(folder: Path, subcommand: str) -> str:
    found = map(Path, glob.glob(os.path.join(glob.escape(str(folder)), "*", "checkpoints", "*.ckpt")))
    found = sorted((p for p in found if p.name != "last.ckpt"), key=lambda p: p.stat().st_mtime)
    example = f", e.g. '{found[-1]}' (the newest)" if found else ""
    return (
        f"--ckpt_path best: Lightning's 'best' is the best checkpoint of a fit earlier in the same "
        f"process, and `lightning {subcommand}` has none. Fix: give the checkpoint's path{example}."
    )


# ------------------------------------------------------------------------------- leftovers
def hold_run_folder(folder: Path, stage: str) -> IO[str] | None:
    """Mark ``folder`` as the folder of this process's run (``stage``: fit, validate...) while it lives.

    Writes ``folder/.lightning_seq.run`` (the stage, host, process id and start time) and holds an
    exclusive lock on it, which the system releases when the process ends, however it ends: while the
    lock is held, no other run takes the folder for a leftover.

    Returns:
        The open marker (closing it releases the lock early), or None where the lock cannot be taken
        (another live process holds it, or the file system has no locks).
    """
    folder.mkdir(parents=True, exist_ok=True)
    marker = _locked(folder / RUN_MARKER, create=True)
    if marker is not None:
        marker.truncate(0)
        marker.write(json.dumps({"stage": stage, "host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.time()}))  # fmt: skip
        marker.flush()
    return marker


def remove_leftovers(folder: Path, keep: str | None = None) -> list[Path]:
    """Remove what earlier runs under ``folder`` (``<save_dir>/<name>``) left: run folders of runs that
    ended before their first step, and temporary files of killed checkpoint saves (see the module's
    docstring for what counts, precisely). Rank zero only; says in one line which folders went.

    Args:
        folder: the recipe's runs.
        keep: the name of a run folder to leave alone (the one this run writes to).

    Returns:
        The run folders removed.
    """
    if rank_zero_only.rank != 0 or not folder.is_dir():
        return []
    removed = []
    for run in _run_folders(folder):
        if run.name == keep:
            continue
        if (run / "checkpoints").is_dir():
            remove_leftover_temporaries(run / "checkpoints")
        if not _only_config(run):
            continue
        marker = _locked(run / RUN_MARKER, create=False)
        if marker is None:  # its run lives, or nothing says whether it does
            continue
        with marker:
            if _only_config(run):  # again, now that no run can start in it
                shutil.rmtree(run, ignore_errors=True)
                removed.append(run)
    if removed:
        names = ", ".join(run.name for run in removed)
        rank_zero_info(
            f"{folder}: removed {names}, left by runs that stopped before their first step (holding "
            "only their config)."
        )
    return removed


def _run_folders(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []


def _only_config(run: Path) -> bool:
    """Whether ``run`` holds nothing but what a run writes before its first step (and a config)."""
    if not (run / "config.yaml").is_file():
        return False
    for path in run.rglob("*"):
        if path.is_symlink():
            return False
        if path.is_dir() or (path.parent == run and path.name in _BEFORE_FIRST_STEP):
            continue
        if not (
            path.name == _STEP_ZERO and path.parent.parent == run and path.parent.name in _STEP_ZERO_FOLDERS
        ):
            return False
    return True


def _locked(path: Path, create: bool) -> IO[str] | None:
    """``path`` opened and locked exclusively, or None: locked by another process, absent (unless
    ``create``), or a file system without locks."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return os.fdopen(fd, "r+", encoding="utf-8")


def _stage(run: Path) -> str:
    """The subcommand that made ``run`` (from its marker; ``fit`` when it has none)."""
    try:
        stage = json.loads((run / RUN_MARKER).read_text(encoding="utf-8")).get("stage")
    except (OSError, ValueError, AttributeError):
        return "fit"
    return stage if isinstance(stage, str) else "fit"


def _started(run: Path) -> float:
    """When the run in ``run`` (last) started: its marker's time, else its config's, else the folder's."""
    for path in (run / RUN_MARKER, run / "config.yaml", run):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0

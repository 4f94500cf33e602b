"""Slurm: ``lightning-seq submit`` writes and submits a batch script whose numbers come from the
recipe, and a check, inside a job, that the job's tasks match the Trainer's devices.

Lightning under Slurm expects one task per device: ``--ntasks-per-node`` equal to
``trainer.devices`` and ``--nodes`` equal to ``trainer.num_nodes``. It refuses ``--ntasks`` alone,
and on a mismatch waits forever at "Initializing distributed"; :func:`check_slurm_tasks` says so
before anything starts.
"""

import argparse
import os
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lightning_seq.errors import InputError
from lightning_seq.runs import slurm_job

# The part of every batch script after its #SBATCH header; slurm/train.sbatch ends with it too.
BODY = r"""# ---- the same in every lightning_seq batch script ----
set -uo pipefail
: "${SLURM_NTASKS_PER_NODE:?one task per device: set --ntasks-per-node (--ntasks alone is not supported)}"
# The run folder is runs/<recipe>/slurm-<job id>, fixed for the job: a requeued job resumes there from
# its own last.ckpt, into the same W&B run. On the warning signal (--signal=USR1@90) the run saves
# last.ckpt and exits with status 3; the job is then requeued.
srun lightning fit "$@" --trainer.num_nodes="$SLURM_JOB_NUM_NODES" --trainer.devices="$SLURM_NTASKS_PER_NODE"
status=$?
if [ "$status" -eq 3 ]; then
    job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
    job="${job:-$SLURM_JOB_ID}"
    echo "requeueing job $job (restart $((${SLURM_RESTART_COUNT:-0} + 1)))"
    scontrol requeue "$job"
fi
exit "$status"
"""


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").split("(")[0]  # "2(x3)": 2 tasks on each of 3 nodes
    return int(value) if value.isdigit() else None


def check_slurm_tasks(trainer: Any) -> None:
    """In a Slurm job, fail with one message unless its tasks match ``trainer.devices`` and ``num_nodes``."""
    if slurm_job() is None or "SLURM_NTASKS" not in os.environ:
        return
    ntasks, per_node = _int_env("SLURM_NTASKS"), _int_env("SLURM_NTASKS_PER_NODE")
    nodes = _int_env("SLURM_JOB_NUM_NODES") or _int_env("SLURM_NNODES") or 1
    devices, num_nodes = trainer.get("devices"), trainer.get("num_nodes") or 1
    fix = "Fix: start it with slurm/train.sbatch or `lightning-seq submit`, which keep them equal."
    if (ntasks or 1) > 1 and per_node is None:
        raise InputError(
            f"Slurm: the job has --ntasks={ntasks} without --ntasks-per-node; Lightning needs one task per "
            f"device on each node: --ntasks-per-node=<devices> --nodes=<num_nodes>. {fix}"
        )
    if (ntasks or 1) > 1 and "SLURM_STEP_ID" not in os.environ:
        raise InputError(
            f"Slurm: the job has {ntasks} tasks but this process is the batch script itself; the other "
            f"processes would never start. Fix: launch with `srun lightning fit ...`. {fix}"
        )
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or per_node is None:
        return  # "auto" or a list of ids: Lightning checks them itself
    if devices != per_node or num_nodes != nodes:
        raise InputError(
            f"Slurm: trainer.devices={devices} and trainer.num_nodes={num_nodes}, but the job runs "
            f"--ntasks-per-node={per_node} on --nodes={nodes}; Lightning would wait forever for the missing "
            f"processes. {fix}"
        )


# ------------------------------------------------------------------------------------- submit
def _trainer_value(configs: list[str], overrides: list[str], key: str) -> Any:
    """``trainer.<key>`` as the recipe files and command-line overrides set it (last one wins)."""
    value = None
    for path in configs:
        try:
            trainer = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("trainer") or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(f"--config: cannot read '{path}': {err}. Fix: check the file.") from None
        value = trainer.get(key, value)
    for arg in overrides:
        if arg.startswith(f"--trainer.{key}="):
            value = yaml.safe_load(arg.split("=", 1)[1])
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-seq submit",
        description="Write a Slurm batch script for a recipe and submit it with sbatch. Options that "
        "are not listed here (--model..., --trainer...) are passed on to `lightning fit`.",
    )
    add = parser.add_argument
    add("-c", "--config", action="append", required=True, help="recipe and fragments, in order")
    add("--nodes", type=int, help="nodes (default: the recipe's trainer.num_nodes, else 1)")
    add("--gpus-per-node", type=int, help="GPUs per node, one task each (default: trainer.devices)")
    add("--tasks-per-node", type=int, help="processes per node without GPUs (CPU DDP; default 1)")
    add("--cpus-per-task", type=int, default=8, help="CPU cores per task (DataLoader workers)")
    add("--time", default="04:00:00", help="time limit per run of the job (requeues continue it)")
    add("--partition", help="Slurm partition")
    add("--account", help="Slurm account")
    add("--job-name", help="job name (default: the recipe's file name)")
    add("--signal-seconds", type=int, default=90, help="seconds before the limit to checkpoint")
    add("--sbatch-option", action="append", default=[], help="any other sbatch option, e.g. --mem=64G")
    add("--script", help="where to write the script (default runs/slurm/<job name>-<time>.sbatch)")
    add("--dry-run", action="store_true", help="write and print the script; do not submit")
    return parser


def _job_name(args: argparse.Namespace) -> str:
    return args.job_name or Path(args.config[0]).stem


def render(args: argparse.Namespace, overrides: list[str]) -> str:
    """The batch script: an #SBATCH header from the options and recipe, the fit arguments, :data:`BODY`."""
    nodes = args.nodes or _trainer_value(args.config, overrides, "num_nodes") or 1
    devices = _trainer_value(args.config, overrides, "devices")
    gpus = args.gpus_per_node
    if gpus is None and args.tasks_per_node is None and isinstance(devices, int):
        gpus = devices if _trainer_value(args.config, overrides, "accelerator") != "cpu" else None
    tasks = gpus or args.tasks_per_node or 1
    name = _job_name(args)
    options = [
        f"--job-name={name}", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
        f"--cpus-per-task={args.cpus_per_task}", f"--time={args.time}",
        f"--signal=USR1@{args.signal_seconds}", "--requeue", "--open-mode=append",
        "--output=runs/slurm/%x-%j.out",
    ]  # fmt: skip
    if gpus:
        options.append(f"--gpus-per-node={gpus}")
    options += [f"--partition={args.partition}"] * bool(args.partition)
    options += [f"--account={args.account}"] * bool(args.account)
    options += args.sbatch_option
    fit_args = [arg for path in args.config for arg in ("--config", path)]
    fit_args += ["--trainer.accelerator=gpu" if gpus else "--trainer.accelerator=cpu", *overrides]
    return "\n".join([
        "#!/bin/bash",
        f"# Written by `lightning-seq submit` on {datetime.now():%Y-%m-%d %H:%M} for {' '.join(args.config)}",
        *(f"#SBATCH {option}" for option in options),
        f"cd {shlex.quote(os.getcwd())}",
        f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"  # the submitting environment',
        f"set -- {shlex.join(fit_args)}",
        BODY,
    ])  # fmt: skip


def submit(argv: list[str]) -> int:
    """``lightning-seq submit``: write the batch script, then submit it (or print it with ``--dry-run``)."""
    args, overrides = _parser().parse_known_args(argv)
    for path in args.config:
        if not Path(path).is_file():
            raise InputError(f"--config: '{path}' does not exist. Fix: check the path (recipes in recipes/).")
    script = render(args, overrides)
    path = Path(args.script or f"runs/slurm/{_job_name(args)}-{datetime.now():%Y%m%d-%H%M%S}.sbatch")
    path.parent.mkdir(parents=True, exist_ok=True)
    Path("runs/slurm").mkdir(parents=True, exist_ok=True)  # the jobs' output files
    path.write_text(script, encoding="utf-8")
    if args.dry_run:
        print(script)
        print(f"# written to {path}; submit with: sbatch {path}", file=sys.stderr)
        return 0
    try:
        done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        raise InputError(f"sbatch not found: is this a Slurm login node? The script is in {path}.") from None
    print(done.stdout.strip() or done.stderr.strip(), file=sys.stdout if done.returncode == 0 else sys.stderr)
    return done.returncode

"""Helpers shared by the command-line tests (importable because pytest puts tests/ on the path)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T, R = TypeVar("T"), TypeVar("R")
REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FRAGMENTS = REPO / "recipes" / "fragments"
SMOKE, CSV_ONLY = str(FRAGMENTS / "smoke.yaml"), str(FRAGMENTS / "csv_only.yaml")
DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]  # 2 processes, gloo
# a few hundred embedded scenes instead of 16,000, so that an image recipe's command takes seconds
SMALL_IMAGES = [
    "--data.init_args.num_train=256", "--data.init_args.num_val=64", "--data.init_args.num_test=64",
    "--data.init_args.batch_size=32",
]  # fmt: skip
# a few dozen embedded caption scenes instead of 11,000
FEW_CAPTIONS = [
    "--data.init_args.train_size=64", "--data.init_args.val_size=16", "--data.init_args.test_size=16",
    "--data.init_args.batch_size=16",
]  # fmt: skip
# SampleQuality at a smoke run's size: 64 samples against the 64 validation images, with a feature net
# trained in seconds (the recipes' default one takes a minute; its quality is not what these tests check)
FEW_SAMPLES = [
    "--trainer.callbacks.init_args.num_samples=64", "--trainer.callbacks.init_args.batch_size=32",
    "--trainer.callbacks.init_args.kid_subset_size=32",
    '--trainer.callbacks.init_args.feature_net_training={"widths": [8, 16, 32], "epochs": 2, '
    '"num_train": 600, "num_test": 200, "batch_size": 50, "min_accuracy": 0.0}',
]  # fmt: skip


def two_at_a_time(run: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[run(item) for item in items]`` with two items at a time, for commands that each start a process
    and mostly wait for Python's imports on one core (bad-input cases that stop before training)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, items))


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``result``, after asserting that the command succeeded (showing its output if not)."""
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{tail}"
    return result


def run_dir(cwd: Path, name: str) -> Path:
    """The newest ``runs/<name>/version_*`` folder under ``cwd`` (by version number: 10 after 9)."""
    dirs = sorted((cwd / "runs" / name).glob("version_*"), key=lambda p: int(p.name.removeprefix("version_")))
    assert dirs, f"no run directory under {cwd / 'runs' / name}"
    return dirs[-1]


def predictions_of(ckpt: Path) -> list:
    """The rows ``lightning predict --ckpt_path ckpt`` wrote beside the checkpoint, in its run folder."""
    written = ckpt.parent.parent / f"predictions_{ckpt.stem}.jsonl"
    return [json.loads(line) for line in written.read_text().splitlines()]


def metric_columns(run: Path) -> set[str]:
    """The column names of ``run/metrics.csv``."""
    return set((run / "metrics.csv").read_text().splitlines()[0].split(","))


def snapshot(folder: Path) -> dict[Path, int]:
    """Every file under ``folder`` with its modification time, to show later that nothing changed."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def assert_one_error(result: subprocess.CompletedProcess, message: str, case: str) -> None:
    """Bad input: exit status 2, exactly one ``error:`` line, holding ``message``, and no traceback."""
    assert result.returncode == 2, f"{case}: exit {result.returncode}\n{result.stderr[-2000:]}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], f"{case}: {result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, case


def samples_in_a_fresh_process(module: str, ckpt: Path, cwd: Path, arguments: str = "8") -> list:
    """``lightning_seq.modules.<module>.load_from_checkpoint(ckpt).sample(<arguments>, generator=<seed 0>)``
    in a new process (the checkpoint alone rebuilds the model), as nested lists."""
    script = f"""
        import json, torch
        from lightning_seq.modules import {module} as Module
        model = Module.load_from_checkpoint({str(ckpt)!r}, map_location="cpu")
        images = model.sample({arguments}, generator=torch.Generator().manual_seed(0))
        print(json.dumps(images.tolist()))
        """
    return json.loads(run_python(script, cwd))


def run_python(script: str, cwd: Path) -> str:
    """Run ``python -c script`` (dedented) in a fresh process; assert it succeeds; its last stdout line."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=cwd
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def checkpointing_fragment(
    folder: Path, steps: int, checkpoint_every: int, val_every: int, net: dict, data: dict, seed: int = 7
) -> str:
    """A recipe fragment for resume tests: ``last.ckpt`` every ``checkpoint_every`` steps, a CSV row at
    every step (flushed at once) and an offline W&B run, both named ``job``; ``net`` and ``data`` are
    init_args of the recipe's net and DataModule. Its path."""
    path = folder / "fragment.yaml"
    path.write_text(
        textwrap.dedent(f"""
        seed_everything: {seed}
        trainer:
          max_steps: {steps}
          val_check_interval: {val_every}
          check_val_every_n_epoch: null
          limit_val_batches: 2
          log_every_n_steps: 1
          enable_progress_bar: false
          logger:
            - class_path: lightning_seq.loggers.CSVLogger
              init_args: {{save_dir: runs, name: job, flush_logs_every_n_steps: 1}}
            - class_path: lightning_seq.loggers.WandbLogger
              init_args: {{save_dir: runs, name: job}}
          callbacks:
            - class_path: lightning_seq.callbacks.GradientClipping
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {{every_n_train_steps: {checkpoint_every}, save_top_k: 0, save_last: true}}
        model: {{init_args: {{net: {{init_args: {json.dumps(net)}}}}}}}
        data: {{init_args: {json.dumps(data)}}}
        """),
        encoding="utf-8",
    )
    return str(path)


def logged_steps(run: Path, column: str = "train/loss") -> int:
    """The highest step with a ``column`` value in ``run/metrics.csv`` (-1 before the first)."""
    path = run / "metrics.csv"
    if not path.is_file():
        return -1
    lines = path.read_text().splitlines()
    if not lines:
        return -1
    header = lines[0].split(",")
    step, value = header.index("step"), header.index(column) if column in header else None
    rows = [line.split(",") for line in lines[1:]]
    return max((int(r[step]) for r in rows if value is not None and len(r) > value and r[value]), default=-1)


def kill_after(args: list[str], cwd: Path, step: int, env: dict[str, str], column: str = "train/loss") -> int:
    """Start ``lightning ARGS`` in ``cwd`` (its run folder ``runs/job/version_0``, as
    :func:`checkpointing_fragment` names it), SIGKILL it once ``step`` is logged (a ``column`` value
    in its metrics.csv); the last step it logged."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **env}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_seq", *args], cwd=cwd, env=full_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    run = cwd / "runs" / "job" / "version_0"
    deadline = time.monotonic() + 300
    try:
        while logged_steps(run, column) < step:
            assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before step {step}"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    return logged_steps(run, column)

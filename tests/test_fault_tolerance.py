"""Fault tolerance through the real command line: kill -9 at a random step, then resume with
``--ckpt_path last``. (The parts one by one: tests/callbacks/test_fault_tolerance_parts.py.)"""

import csv
from pathlib import Path

import pytest
import torch
from clitools import REPO, checkpointing_fragment, kill_after, ok

RECIPE = str(REPO / "recipes" / "char_lstm.yaml")
MAX_STEPS = 60
CHECKPOINT_EVERY = 3

# A char LSTM with dropout (so the random state matters) on 40 KB: 38 batches per epoch, so the run
# crosses an epoch boundary.

# One intra-op thread in every process: with two, two identical uninterrupted runs on this CPU were
# seen to differ by 2e-7 (from the first step after a validation on), which is rounding in threaded
# kernels, not resuming; bitwise equality can only be asked of runs that are themselves reproducible.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NET = {"embed_dim": 32, "hidden_size": 256, "num_layers": 2, "dropout": 0.2}
DATA = {"block_size": 64, "batch_size": 16}


def _args(tmp: Path, corpus: Path, mode: str) -> list[str]:
    fragment = checkpointing_fragment(tmp, MAX_STEPS, CHECKPOINT_EVERY, 10, NET, DATA)
    return ["fit", "--config", RECIPE, "--config", fragment, f"--data.init_args.source={corpus}",
            f"--data.init_args.mode={mode}"]  # fmt: skip


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == MAX_STEPS
    return state["state_dict"]


@pytest.mark.slow
def test_kill_minus_9_then_resume_from_last_gives_the_weights_of_an_uninterrupted_run(
    cli, corpus_file, tmp_path
):
    """Three kills at different steps (mid-epoch, just before and past the epoch boundary at 38), in
    stream mode (carried LSTM state) and window mode (shuffled windows); each resumed run ends with
    exactly the weights of the uninterrupted run, in the same run folder and W&B run. (Two more mid-epoch
    kills took 30 s more of the suite for no case these lack.)"""
    trials = [(29, "stream"), (37, "window"), (47, "stream")]
    reference = {}
    for mode in ("stream", "window"):
        cwd = _mkdir(tmp_path / mode)
        ok(cli(*_args(cwd, corpus_file, mode), cwd=cwd, env=ONE_THREAD))
        reference[mode] = _weights(tmp_path / mode / "runs" / "job" / "version_0")
    for target, mode in trials:
        cwd = _mkdir(tmp_path / f"kill{target}")
        args = _args(cwd, corpus_file, mode)
        killed_at = kill_after(args, cwd, target, ONE_THREAD)
        assert killed_at < MAX_STEPS - 1
        run = cwd / "runs" / "job" / "version_0"
        saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        assert saved <= killed_at + 1
        rows_before = _rows(run)
        print(f"{mode}: killed after logging step {killed_at}, resumed from last.ckpt at step {saved}")
        ok(cli(*args, "--ckpt_path", "last", cwd=cwd, env=ONE_THREAD))
        assert sorted(p.name for p in (cwd / "runs" / "job").iterdir()) == ["version_0"]
        weights = _weights(run)
        assert weights.keys() == reference[mode].keys()
        for name, value in weights.items():
            assert torch.equal(value, reference[mode][name]), f"kill at {killed_at}: {name} differs"
        assert _rows(run)[: len(rows_before)] == rows_before  # the resumed run appended to metrics.csv
        wandb_ids = {p.name.rsplit("-", 1)[-1] for p in (cwd / "runs" / "wandb").glob("offline-run-*")}
        assert len(wandb_ids) == 1, wandb_ids


def _rows(run: Path) -> list[dict[str, str]]:
    """The rows of metrics.csv, without empty cells (a resumed run may add columns)."""
    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

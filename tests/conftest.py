"""Shared fixtures: an isolated cache and W&B environment, small corpora, and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Caches and run files in temporary folders; W&B never reaches the network."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("LIGHTNING_SEQ_CACHE", str(base / "cache"))
    monkeypatch.setenv("HF_HOME", str(base / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(base / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """A small English text (about 40 KB) with a repeated structure a tiny model can learn."""
    lines = []
    for i in range(600):
        lines.append(f"the cat sat on the mat number {i % 7}. the dog ran to the park.")
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m lightning_seq ARGS`` in a fresh process; returns the completed process."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lightning_seq", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def cli():
    """The :func:`run_cli` helper: ``cli("fit", "--config", ..., cwd=tmp_path)``."""
    return run_cli

"""Shared fixtures: an isolated cache and W&B environment, a small corpus, and a CLI runner."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest


def isolated_env(base: Path) -> dict[str, str]:
    """Caches and W&B settings in temporary folders; nothing reaches the network."""
    return {
        "LIGHTNING_SEQ_CACHE": str(base / "cache"),
        "HF_HOME": str(base / "hf"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_CONFIG_DIR": str(base / "wandb-config"),
    }


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    for key, value in isolated_env(tmp_path_factory.getbasetemp()).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread for in-process tests: on a small shared CPU, threads waiting on each other
    make tiny training steps up to 10x slower. Subprocesses (CLI tests) keep torch's default."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """A small English text (about 40 KB) with a repeated structure a tiny model can learn."""
    lines = [f"the cat sat on the mat number {i % 7}. the dog ran to the park." for i in range(600)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """Run ``python -m lightning_seq ARGS`` in a fresh process: ``cli("fit", "--config", ..., cwd=tmp_path)``.

    The process gets the isolated environment; ``env`` adds or replaces variables.
    """
    base = tmp_path_factory.getbasetemp()

    def run(
        *args: str, cwd: Path, env: dict | None = None, timeout: int = 600
    ) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **isolated_env(base), "PYTHONWARNINGS": "ignore", **(env or {})}
        full_env.pop("WANDB_API_KEY", None)
        return subprocess.run(
            [sys.executable, "-m", "lightning_seq", *args],
            cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    return run


@pytest.fixture
def lightning_log(caplog):
    """``caplog``, with the lines of Lightning's logger too (``rank_zero_info``; it does not propagate)."""
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="lightning.pytorch")
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)

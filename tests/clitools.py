"""Helpers shared by the command-line tests (importable because pytest puts tests/ on the path)."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FRAGMENTS = REPO / "recipes" / "fragments"
SMOKE, CSV_ONLY = str(FRAGMENTS / "smoke.yaml"), str(FRAGMENTS / "csv_only.yaml")


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """``result``, after asserting that the command succeeded (showing its output if not)."""
    tail = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    assert result.returncode == 0, f"exit {result.returncode}\n{tail}"
    return result


def run_dir(cwd: Path, name: str) -> Path:
    """The newest ``runs/<name>/version_*`` folder under ``cwd``."""
    dirs = sorted((cwd / "runs" / name).glob("version_*"))
    assert dirs, f"no run directory under {cwd / 'runs' / name}"
    return dirs[-1]

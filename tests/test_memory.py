"""keep_freed_memory: a large block freed by one training step stays with the process for the next."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from lightning_seq.utils import keep_freed_memory

SCRIPT = textwrap.dedent("""
    import torch
    from lightning_seq.utils import keep_freed_memory

    def resident() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    applied = keep_freed_memory()
    block = torch.ones(16 << 20)  # 64 MB: over the 32 MB that glibc serves with mmap by default
    before = resident()
    del block
    print(applied, (before - resident()) >> 20)
""")


def _freed_mb(env: dict[str, str]) -> tuple[bool, int]:
    """In a fresh process: whether the settings applied, and the MB given back by freeing 64 MB."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)
    applied, freed = out.stdout.split()
    return applied == "True", int(freed)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_kept_for_reuse_unless_opted_out():
    applied, freed = _freed_mb(dict(os.environ))
    assert applied and freed < 8  # kept in the heap, for the next step's tensors
    system, freed = _freed_mb({**os.environ, "LIGHTNING_SEQ_MALLOC": "system"})
    assert not system and freed >= 60  # glibc's default: unmapped at once, faulted in again next step


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv("LIGHTNING_SEQ_MALLOC", "system")
    assert keep_freed_memory() is False

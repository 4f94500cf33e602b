"""The on-disk cache shared by the DataModules: where it is, and building an entry exactly once."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def default_cache_dir(cache_dir: str | None = None) -> Path:
    """``cache_dir`` (a DataModule's argument, ``~`` expanded) when given, else ``$LIGHTNING_SEQ_CACHE``,
    else ``~/.cache/lightning_seq``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("LIGHTNING_SEQ_CACHE", Path.home() / ".cache" / "lightning_seq"))


def key_of(ident) -> str:
    """A cache entry's name: the first 20 hex digits of the SHA-256 of ``ident`` as sorted-key JSON."""
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def build_once(final: Path, write: Callable[[Path], None], done: str = "meta.json") -> bool:
    """Build the cache folder ``final`` unless it is complete (holds ``done``); returns whether it was.

    ``write(folder)`` fills a temporary folder next to ``final``, which is then renamed into place,
    so a killed run never leaves a half-written entry. A file lock makes concurrent processes (DDP
    ranks, parallel runs) wait for the first one instead of building it again.
    """
    if (final / done).is_file():
        return True
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / done).is_file():  # another process built it while we waited
            return True
        replace_folder(final, write)  # also removes an incomplete folder left by a killed run
    return False


def replace_folder(final: Path, write: Callable[[Path], None]) -> None:
    """Replace the folder ``final`` with one that ``write(folder)`` fills beside it, whole or not at all."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    try:
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

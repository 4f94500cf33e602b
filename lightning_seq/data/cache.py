"""The on-disk cache shared by the DataModules: where it is, and building an entry exactly once."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning as L
from filelock import FileLock

from lightning_seq.utils import run_dir


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


class CachedDataModule(L.LightningDataModule):
    """A DataModule whose source is read and tokenized once into ``cache_root/CACHE_KIND/cache_key``.

    Subclasses set ``CACHE_KIND``, and in ``__init__`` ``cache_root``, ``_meta = None`` and
    ``cache_hit = None``; they define ``cache_key`` and ``_write_cache(folder)``, which must write
    ``meta.json`` last.
    """

    CACHE_KIND: ClassVar[str]

    @property
    def cache_path(self) -> Path:
        return self.cache_root / self.CACHE_KIND / self.cache_key

    @property
    def meta(self) -> dict:
        """The cached data's description; builds the cache on first use (safe across processes)."""
        if self._meta is None:
            self.prepare_data()
            self._meta = json.loads((self.cache_path / "meta.json").read_text())
        return self._meta

    def prepare_data(self) -> None:
        """Read and tokenize the source into the cache, unless it is there already."""
        hit = build_once(self.cache_path, self._write_cache)
        self.cache_hit = hit if self.cache_hit is None else self.cache_hit and hit

    def copy_to_run(self, stage: str, files: dict[str, str]) -> None:
        """At the start of a fit, rank zero copies cached files (``{cached name: name in the run}``, the
        tokenizers) into the run folder, so that checkpoints and predictions can find them there."""
        trainer = self.trainer
        if stage == "fit" and trainer is not None and trainer.is_global_zero:
            folder = run_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            for cached, name in files.items():
                shutil.copyfile(self.cache_path / cached, folder / name)

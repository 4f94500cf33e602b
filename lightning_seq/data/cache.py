"""The on-disk cache shared by the DataModules: where it is, and building an entry exactly once."""

import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import lightning as L
from filelock import FileLock, Timeout
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lightning_seq.errors import InputError
from lightning_seq.utils import run_dir

MANIFEST = "manifest.json"  # sizes and checksums of an entry's files, written last: the entry is complete
HASH_WHOLE = 32 << 20  # files up to 32 MiB are hashed whole (about 30 ms at 1 GB/s)
SAMPLE_BLOCKS, SAMPLE_BYTES = 64, 64 << 10  # bigger ones: 64 evenly spaced blocks of 64 KiB (4 MiB in all)
CACHE_FIX = "set data.init_args.cache_dir (or $LIGHTNING_SEQ_CACHE) to"
_BUILD_SUFFIX = re.compile(r"\.[a-z0-9_]{8}")  # what tempfile.mkdtemp adds to "<name>." in replace_folder
# write errors a user fixes by freeing space or choosing another folder, in their words
WRITE_FAILURES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "a file is too large for the file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "the folder does not allow it (permissions or an immutable attribute)",
}


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
    """Build the cache folder ``final`` unless it is complete and intact; returns whether it was.

    ``write(folder)`` fills a temporary folder next to ``final``; the sizes and checksums of its files
    are recorded in ``manifest.json`` (see :func:`write_manifest`), and it is renamed into place, so a
    killed run never leaves a half-written entry. An entry is complete when it holds ``done``
    (``manifest.json`` to require a manifest; an entry from before manifests holding ``done`` is
    taken as it is) and intact when its files match its manifest; one that does not (a truncated or
    edited file) is built again, with a line saying why. A file lock makes concurrent processes (DDP
    ranks, parallel runs) wait for the first one instead of building it again. The temporary folders
    of builds killed midway are removed by the next build (or use) of the entry that finds its lock
    free (:func:`remove_leftover_builds`).

    Raises:
        InputError: the entry cannot be written: a full disk, a read-only or unwritable folder, a file
            where a folder should be. Nothing of it is left behind.
    """
    problem = entry_problem(final, done)
    if problem is None:
        _tidy(final)
        return True

    def write_entry(folder: Path) -> None:
        write(folder)
        write_manifest(folder)

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(final) + ".lock"):
            problem = entry_problem(final, done)
            remove_leftover_builds(final)
            if problem is None:  # another process built it while we waited
                return True
            if final.exists():
                rank_zero_info(f"cache: '{final}' {problem}; building it again.")
            replace_folder(final, write_entry)
    except OSError as err:
        error = unwritable(err, final, problem if final.exists() else None)
        if error is None:
            raise
        raise error from None
    return False


def entry_problem(final: Path, done: str = MANIFEST) -> str | None:
    """Why the cache entry ``final`` cannot be used as it is (a phrase), or None when it is complete and
    intact: see :func:`build_once`."""
    if done == MANIFEST or (final / MANIFEST).is_file():
        return check_manifest(final)  # (the manifest lists ``done``)
    return None if (final / done).is_file() else "is incomplete"  # from before manifests: unchecked


def write_manifest(folder: Path) -> None:
    """Record the size and :func:`file_digest` of every file below ``folder`` in ``folder/manifest.json``."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        files[path.relative_to(folder).as_posix()] = [size, file_digest(path, size)]
    (folder / MANIFEST).write_text(json.dumps({"version": 1, "files": files}))


def check_manifest(folder: Path) -> str | None:
    """What differs between ``folder`` and its manifest (a phrase), or None when nothing does.

    Every file's size is checked first (a truncated file shows there at no cost), then the digests.
    """
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        entries = [(name, int(size), str(digest)) for name, (size, digest) in files.items()]
    except FileNotFoundError:
        return f"has no {MANIFEST} (an older version wrote it, or it was not finished)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"has an unreadable {MANIFEST}"
    for name, size, _ in entries:
        try:
            found = (folder / name).stat().st_size
        except OSError:
            return f"lacks its file {name}"
        if found != size:
            return f"has {name} of {found} bytes where {size} were written"
    for name, size, digest in entries:
        if file_digest(folder / name, size) != digest:
            return f"has {name} changed since it was written (its checksum differs)"
    return None


def file_digest(path: Path, size: int) -> str:
    """The SHA-256 of a file of ``size`` bytes: of all of it up to ``HASH_WHOLE`` bytes, else of
    ``SAMPLE_BLOCKS`` blocks at evenly spaced offsets (the first and the last included), so that
    checking a large token file at every start stays cheap; its size is checked apart."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        if size <= HASH_WHOLE:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        else:
            step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
            for i in range(SAMPLE_BLOCKS):
                f.seek(round(i * step))
                sha.update(f.read(SAMPLE_BYTES))
    return sha.hexdigest()


def unwritable(err: OSError, final: Path, problem: str | None = None) -> InputError | None:
    """The user's error when writing the cache entry ``final`` failed with ``err`` for a reason they can
    fix (None otherwise, e.g. a source file that cannot be read). ``problem``: why an existing entry
    was being built again."""
    blocker = _file_in_the_way(final)
    if blocker is not None:
        return InputError(
            f"data.init_args.cache_dir: '{blocker}' is a file, so the cache folder '{final.parent}' "
            f"cannot be made. Fix: {CACHE_FIX} a folder, or move the file away."
        )
    reason = WRITE_FAILURES.get(err.errno)
    if reason is None or not _about(err, final):
        return None
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    if problem:  # a damaged entry, never read as it is
        what = f"the cache entry '{final}' {problem}, and it cannot be built again there: {reason}"
        fix = "free space there, or " if full else "delete the entry from a writable place, or "
    else:
        what = f"cannot write the cache entry '{final}': {reason} (nothing of it was kept)"
        fix = "free space there, or " if full else ""
    return InputError(f"data.init_args.cache_dir: {what}. Fix: {fix}{CACHE_FIX} a writable folder with room.")


def _file_in_the_way(final: Path) -> Path | None:
    """The nearest existing ancestor of ``final`` when it is a file, not a folder."""
    for parent in Path(os.path.abspath(final)).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _about(err: OSError, final: Path) -> bool:
    """Whether ``err`` is about ``final``'s folder, an ancestor of it or a file in it (or names no file)."""
    folder = os.path.abspath(final.parent)
    names = [os.path.abspath(n) for n in (err.filename, err.filename2) if isinstance(n, (str, Path))]
    return not names or any(os.path.commonpath([n, folder]) in (n, folder) for n in names)


def remove_leftover_builds(final: Path) -> list[Path]:
    """Remove the temporary folders that builds of ``final`` killed midway left beside it; returns them.

    A build fills ``<name>.<8 random characters>`` beside ``final`` (:func:`replace_folder`) and holds
    ``final``'s lock (``<name>.lock``) meanwhile. Call this only while holding that lock, as
    :func:`build_once` does: no such folder then belongs to a build that is still running.
    """
    removed = []
    for path in final.parent.glob(f"{glob.escape(final.name)}.*"):
        if _BUILD_SUFFIX.fullmatch(path.name[len(final.name) :]) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _tidy(final: Path) -> None:
    """Remove leftover builds of the complete entry ``final`` unless a process holds its lock now (one
    that builds it again); never waits, never fails."""
    suffixes = (p.name[len(final.name) :] for p in final.parent.glob(f"{glob.escape(final.name)}.*"))
    if not any(_BUILD_SUFFIX.fullmatch(suffix) for suffix in suffixes):
        return
    try:
        with FileLock(str(final) + ".lock", timeout=0):
            remove_leftover_builds(final)
    except (OSError, Timeout):  # held by a build, or a read-only cache
        pass


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
    ``cache_hit = None``; they define ``cache_key`` and ``_write_cache(folder)``, which writes
    ``meta.json`` (the manifest is added after it).
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
        """Read and tokenize the source into the cache, unless it is there already and intact (checked
        against its manifest once per DataModule, see :func:`build_once`; a damaged entry is built again).
        """
        if self.cache_hit is None:
            self.cache_hit = build_once(self.cache_path, self._write_cache, done=MANIFEST)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        """The DataLoader of ``split``; training's (``shuffle``) is shuffled and resumable."""
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def copy_to_run(self, stage: str, files: dict[str, str]) -> None:
        """At the start of a fit, rank zero copies cached files (``{cached name: name in the run}``, the
        tokenizers) into the run folder, so that checkpoints and predictions can find them there."""
        trainer = self.trainer
        if stage == "fit" and trainer is not None and trainer.is_global_zero:
            folder = run_dir(trainer)
            folder.mkdir(parents=True, exist_ok=True)
            for cached, name in files.items():
                shutil.copyfile(self.cache_path / cached, folder / name)

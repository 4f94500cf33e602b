"""Variable-length sequences of token ids on disk, and padding them into batches.

A :class:`Ragged` file pair holds ``N`` sequences: ``NAME.ids.npy`` is their concatenation and
``NAME.offsets.npy`` the ``N + 1`` boundaries, so sequence ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.
Both are memory-mapped on first access, and pickle cheaply to DataLoader workers.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def write_ragged(folder: Path, name: str, seqs: Sequence[Sequence[int]], dtype: np.dtype) -> None:
    """Write sequences as ``folder/NAME.ids.npy`` and ``folder/NAME.offsets.npy``."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((i for s in seqs for i in s), dtype=dtype, count=int(offsets[-1]))
    np.save(folder / f"{name}.ids.npy", flat)
    np.save(folder / f"{name}.offsets.npy", offsets)


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest dtype that holds every token id."""
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)


class Ragged:
    """The sequences written by :func:`write_ragged`; item ``i`` is a 1-D array."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = Path(folder), name
        self._ids: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    def _load(self) -> None:
        self._ids = np.load(self.folder / f"{self.name}.ids.npy", mmap_mode="r")
        self._offsets = np.load(self.folder / f"{self.name}.offsets.npy")

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:
            self._load()
        return self._offsets

    def lengths(self) -> np.ndarray:
        """The length of every sequence, ``(N,)``."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if self._ids is None:
            self._load()
        return self._ids[self.offsets[i] : self.offsets[i + 1]]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_ids": None, "_offsets": None}


def pad(seqs: Sequence[np.ndarray | Sequence[int]], value: int) -> torch.Tensor:
    """Stack sequences into a ``(B, T)`` long tensor, right-padded with ``value`` (T: the longest)."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)  # (B, T)
    for row, seq in zip(out, seqs, strict=True):
        row[: len(seq)] = torch.as_tensor(np.asarray(seq, dtype=np.int64))
    return out

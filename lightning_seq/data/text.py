"""TextDataModule: text corpora -> cached token streams -> LM batches.

Every batch is a ``(B, T + 1)`` tensor of token ids: the model reads ``batch[:, :-1]`` and
predicts ``batch[:, 1:]``. Two batching modes:

* ``stream`` (stateful RNNs, truncated BPTT): each split's token stream is cut into
  ``batch_size x world_size`` contiguous streams; rank ``r`` reads streams
  ``[r * batch_size, (r + 1) * batch_size)``, and batch ``i`` holds tokens
  ``[i * T, (i + 1) * T]`` of each of them, so row ``b`` of batch ``i + 1`` continues row ``b`` of
  batch ``i`` and the hidden state can be carried over. Batches come in order.
* ``window``: non-overlapping windows of ``block_size + 1`` tokens, shuffled for training
  (Transformers).

Tokenization happens once: the tokenizer and the token ids of each split are written to
``cache_dir/text/<key>/`` (key: source identity + tokenizer settings + split fractions) and
memory-mapped by later runs, which do not read the source again.
"""

import json
import math
import warnings
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_seq.data import sources
from lightning_seq.data.cache import CachedDataModule, default_cache_dir, key_of
from lightning_seq.data.resumable import ResumableLoader, batched_loader, rank_and_world, trainer_epoch
from lightning_seq.data.tokenizers import TokenizerConfig, build_tokenizer, save_tokenizer, special_ids
from lightning_seq.errors import InputError
from lightning_seq.utils import plain_hparams

CACHE_VERSION = 1

# TokenStreams is an IterableDataset with a length on purpose (already sharded; read in-process).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class TokenFile:
    """A flat binary file of token ids, memory-mapped on first access (pickles cheaply to workers)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._array

    def __len__(self) -> int:
        return self.path.stat().st_size // self.dtype.itemsize

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}


class TokenStreams(IterableDataset):
    """Stream mode: consecutive ``(B, T + 1)`` chunks of ``B`` parallel contiguous streams.

    It is already sharded by rank, so it is iterable (Lightning adds no distributed sampler).

    Args:
        tokens: the split's token ids, ``(N,)`` (an array or a :class:`TokenFile`).
        batch_size: streams per rank ``B``.
        bptt: tokens per chunk ``T``.
        rank: this process's rank.
        world_size: number of processes; the stream is cut into ``B * world_size`` streams.
    """

    def __init__(
        self, tokens: TokenFile | np.ndarray, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1
    ):
        self.tokens, self.batch_size, self.bptt = tokens, batch_size, bptt
        self.stream_len = (len(tokens) - 1) // (batch_size * world_size)  # inputs per stream
        self.first = rank * batch_size * self.stream_len  # offset of this rank's first stream
        self.skip = 0  # chunks to leave out once, at the start of the next iteration (a resumed run)

    def __len__(self) -> int:
        return math.ceil(self.stream_len / self.bptt)

    def __iter__(self):
        # Stream b covers tokens [first + b * L, first + (b + 1) * L]: neighbours share one boundary
        # token, the last target of one stream and the first input of the next.
        starts = self.first + np.arange(self.batch_size) * self.stream_len  # (B,)
        skip, self.skip = self.skip, 0
        for i in range(skip, len(self)):
            t = min(self.bptt, self.stream_len - i * self.bptt)
            index = starts[:, None] + i * self.bptt + np.arange(t + 1)  # (B, t + 1)
            yield torch.from_numpy(self.tokens[index].astype(np.int64))


class TokenWindows(Dataset):
    """Window mode: item ``i`` is tokens ``[i * S, i * S + T]`` (``T + 1`` ids) for stride ``S``.

    The default stride ``S = T`` gives non-overlapping windows; ``S = 1`` gives a window at every
    offset (shuffled, this is the random sampling of nanoGPT-style training loops).
    """

    def __init__(self, tokens: TokenFile | np.ndarray, block_size: int, stride: int | None = None):
        self.tokens, self.block_size = tokens, block_size
        self.stride = stride or block_size

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1 - self.block_size) // self.stride + 1)

    def __getitem__(self, i: int) -> torch.Tensor:
        start = i * self.stride
        return torch.from_numpy(self.tokens[start : start + self.block_size + 1].astype(np.int64))


class TextDataModule(CachedDataModule):
    """Language-modelling data from the embedded corpus, local files or a Hugging Face dataset.

    Args:
        source: None for the embedded corpus (Python's documentation); a file, folder or glob of
            .txt/.jsonl/.csv/.parquet; or a Hugging Face dataset name. See :mod:`.sources`.
        text_column: the column holding the text in .jsonl/.csv/.parquet files and hub datasets.
        dataset_config: the Hugging Face dataset configuration (``wikitext-2-raw-v1``).
        dataset_splits: which Hugging Face splits to use, e.g. ``{train: "train[:90%]", val: "validation"}``;
            by default the dataset's own train/validation/test splits.
        tokenizer: which tokenizer to train on the train split, or a tokenizer.json to use.
        mode: ``stream`` (contiguous streams for stateful RNNs) or ``window`` (shuffled windows).
        block_size: tokens per training sequence ``T`` (the truncated-BPTT length in stream mode).
        train_stride: window mode: a training window starts every ``train_stride`` tokens; None
            for ``block_size`` (non-overlapping), 1 for every offset. Evaluation windows never overlap.
        batch_size: sequences per batch on each device.
        eval_batch_size: sequences per validation and test batch (streams, in stream mode); None for
            ``batch_size``. Fewer, longer streams lose less to each stream's cold start.
        val_fraction: share of the corpus carved off for validation when the source has no such split.
        test_fraction: likewise for test; 0 for no test split (``lightning test`` then has no data).
        num_workers: DataLoader worker processes (window mode; stream mode reads a memory map in-process).
        seed: seed of the window order, a new permutation each epoch (the same on every rank).
        cache_dir: where tokenized corpora are cached; default ``$LIGHTNING_SEQ_CACHE`` or
            ``~/.cache/lightning_seq``.
        prompts: texts to continue in ``lightning predict``.
    """

    CACHE_KIND = "text"

    def __init__(
        self,
        source: str | None = None,
        text_column: str = "text",
        dataset_config: str | None = None,
        dataset_splits: dict[str, str] | None = None,
        tokenizer: TokenizerConfig | None = None,
        mode: Literal["stream", "window"] = "stream",
        block_size: int = 128,
        train_stride: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        prompts: list[str] | None = None,
    ):
        super().__init__()
        if isinstance(tokenizer, dict):  # from a checkpoint's hyperparameters
            tokenizer = TokenizerConfig(**tokenizer)
        self.save_hyperparameters()
        plain_hparams(self)
        self.tokenizer_config = tokenizer or TokenizerConfig()
        _check_positive(
            block_size=block_size, batch_size=batch_size, train_stride=train_stride or 1,
            eval_batch_size=eval_batch_size or 1,
        )  # fmt: skip
        if mode not in ("stream", "window"):
            raise InputError(f"data.mode: unknown mode '{mode}'; expected 'stream' or 'window'.")
        if not 0.0 < val_fraction < 0.5:
            raise InputError(f"data.val_fraction: expected a fraction in (0, 0.5), got {val_fraction}.")
        if not 0.0 <= test_fraction < 0.5:
            raise InputError(f"data.test_fraction: expected a fraction in [0, 0.5), got {test_fraction}.")
        self.source, self.text_column, self.dataset_config = source, text_column, dataset_config
        self.dataset_splits = dataset_splits
        self.mode, self.block_size, self.batch_size = mode, block_size, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers, self.seed = num_workers, seed
        self.train_stride = train_stride
        self.cache_root = default_cache_dir(cache_dir)
        self.prompts = prompts if prompts is not None else ["The "]
        self._meta: dict | None = None
        self._tokenizer: Tokenizer | None = None
        self._tokens: dict[str, TokenFile] = {}
        self.cache_hit: bool | None = None  # after preparation: whether the cache already existed

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def pad_id(self) -> int:
        return self.meta["special_ids"]["pad"]

    @property
    def eos_id(self) -> int:
        return self.meta["special_ids"]["eos"]

    @property
    def carry_state(self) -> bool:
        """Whether each batch continues the previous one (stream mode): the model keeps its state."""
        return self.mode == "stream"

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = Tokenizer.from_file(str(self.cache_path / "tokenizer.json"))
        return self._tokenizer

    def chars_per_token(self, split: str) -> float:
        """Characters per token in a split, to turn bits per token into bits per character."""
        return self.meta["num_chars"][split] / max(
            1, self.meta["num_tokens"][split] - self.meta["num_docs"][split]
        )

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def cache_key(self) -> str:
        ident = {
            "version": CACHE_VERSION,
            "source": sources.fingerprint(
                self.source, self.text_column, self.dataset_config, self.dataset_splits
            ),
            "tokenizer": self.tokenizer_config.identity(),
            "fractions": [self.val_fraction, self.test_fraction],
        }
        return key_of(ident)

    def _write_cache(self, out: Path) -> None:
        corpus = sources.read_corpus(
            self.source,
            self.text_column,
            self.dataset_config,
            self.val_fraction,
            self.test_fraction,
            self.dataset_splits,
        )
        tokenizer = build_tokenizer(self.tokenizer_config, corpus["train"])
        save_tokenizer(tokenizer, out / "tokenizer.json")
        ids = special_ids(tokenizer)
        vocab_size = tokenizer.get_vocab_size()
        dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
        meta = {
            "source": self.source or sources.PYDOC_SOURCE,
            "tokenizer": asdict(self.tokenizer_config),
            "vocab_size": vocab_size,
            "special_ids": ids,
            "dtype": np.dtype(dtype).name,
            "num_tokens": {},
            "num_chars": {},
            "num_docs": {},
        }
        for split, docs in corpus.items():
            docs = [d for d in docs if d]
            meta["num_tokens"][split] = _write_tokens(
                tokenizer, docs, ids["eos"], dtype, out / f"{split}.bin"
            )
            meta["num_chars"][split] = sum(len(d) for d in docs)
            meta["num_docs"][split] = len(docs)
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def tokens(self, split: str) -> TokenFile:
        """The memory-mapped token ids of a split, ``(N,)``."""
        if split not in self._tokens:
            self._tokens[split] = TokenFile(self.cache_path / f"{split}.bin", self.meta["dtype"])
        return self._tokens[split]

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        for split in splits:
            self._check_length(split)
        self.copy_to_run(stage, {"tokenizer.json": "tokenizer.json"})

    def _check_length(self, split: str) -> None:
        n = len(self.tokens(split))
        if n == 0:
            raise InputError(
                f"data.test_fraction: the {split} split is empty (test_fraction = 0). Fix: set "
                "data.test_fraction above 0, or give a source with a test split."
            )
        world = rank_and_world(self.trainer)[1]
        if self.mode == "window" and n < self.block_size + 1:
            raise InputError(
                f"data.block_size: the {split} split has {n} tokens, fewer than block_size + 1 = "
                f"{self.block_size + 1}. Fix: lower data.block_size or use a larger corpus."
            )
        batch_size = self._batch_size(split)
        per_stream = (n - 1) // (batch_size * world)
        need = self.block_size if split == "train" else 1  # evaluation takes shorter streams
        if self.mode == "stream" and per_stream < need:
            which = "batch_size" if split == "train" else "eval_batch_size"
            raise InputError(
                f"data.block_size: the {split} split has {n} tokens: {per_stream} per stream for "
                f"{batch_size} x {world} streams, fewer than {need} (block_size = {self.block_size}). "
                f"Fix: lower data.block_size or data.{which}, or use a larger corpus."
            )

    def _batch_size(self, split: str) -> int:
        return self.batch_size if split == "train" else self.eval_batch_size

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        tokens = self.tokens(split)
        rank, world = rank_and_world(self.trainer)
        if self.mode == "stream":
            streams = TokenStreams(tokens, self._batch_size(split), self.block_size, rank, world)
            return ResumableLoader(streams, batch_size=None, seed=self.seed, epoch=trainer_epoch(self))
        windows = TokenWindows(tokens, self.block_size, self.train_stride if split == "train" else None)
        return batched_loader(self, windows, shuffle, batch_size=self._batch_size(split))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.prompts, batch_size=len(self.prompts), collate_fn=list)

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"cache_key": self.cache_key, "vocab_size": self.vocab_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("vocab_size") not in (None, self.vocab_size):
            raise InputError(
                f"data.tokenizer: the checkpoint was trained with a vocabulary of {state['vocab_size']} "
                f"tokens, but this data gives {self.vocab_size}. Fix: use the same data.source and "
                "data.tokenizer settings as the run that wrote the checkpoint."
            )


def _write_tokens(tokenizer: Tokenizer, docs: list[str], eos: int, dtype: np.dtype, path: Path) -> int:
    """Encode documents, each followed by ``<|eos|>`` (unless it already ends with one: a line end of the
    ``whitespace`` tokenizer), appending them to a flat binary file."""
    count = 0
    with path.open("wb") as f:
        for start in range(0, len(docs), 1024):
            encodings = tokenizer.encode_batch(docs[start : start + 1024], add_special_tokens=False)
            for enc in encodings:
                ends = enc.ids[-1:] == [eos]
                ids = np.asarray(enc.ids if ends else [*enc.ids, eos], dtype=dtype)
                f.write(ids.tobytes())
                count += len(ids)
    return count


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise InputError(f"data.{name}: expected a positive integer, got {value}.")

"""ParallelTextDataModule: translation pairs -> cached token ids -> padded seq2seq batches.

Every batch is ``{"src": (B, S), "tgt": (B, T)}`` of token ids, right-padded with ``pad_id``:
``src`` holds the source tokens alone, ``tgt`` is ``[<|bos|>, y_1, ..., y_n, <|eos|>]``, so a model
reads ``tgt[:, :-1]`` and predicts ``tgt[:, 1:]``. The key padding masks are ``src != pad_id`` and
``tgt != pad_id``. Special ids are the same in both tokenizers (pad 0, unk 1, bos 2, eos 3 for
trained ones).

Sources:

* none (``embedded:numbers``): English number words and their digits, ``"three hundred forty-two
  thousand one hundred five"`` -> ``"342105"`` (``direction: digits_to_words`` for the way back),
  train/val/test disjoint by number; see :mod:`.embedded_tasks`;
* local ``.tsv`` files (``source<TAB>target`` per line, no header) and ``.jsonl``/``.json`` files
  (``{"src": ..., "tgt": ...}`` with configurable keys, or Hugging Face style ``{"translation":
  {"de": ..., "en": ...}}`` with ``src_lang``/``tgt_lang``), and ``.parquet`` files with such columns
  (read with Hugging Face ``datasets``); a file, a folder or a glob, files named by split as for
  :mod:`.sources` (``train.tsv``, ``valid.tsv``, ``test.tsv``);
* a Hugging Face dataset name (``wmt14`` with ``dataset_config: de-en``, ``src_lang: en``,
  ``tgt_lang: de``), used when the network allows.

Tokenization happens once: the tokenizers and the token ids of each split are written to
``cache_dir/parallel/<key>/`` and memory-mapped by later runs.
"""

import json
import warnings
from dataclasses import asdict
from functools import cached_property, partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset

from lightning_seq.data import embedded_tasks, sources
from lightning_seq.data.cache import CachedDataModule, default_cache_dir, key_of
from lightning_seq.data.ragged import Ragged, id_dtype, pad, write_ragged
from lightning_seq.data.resumable import batched_loader, rank_and_world
from lightning_seq.data.tokenizers import (
    SpecialTokenIds,
    TokenizerConfig,
    build_tokenizer,
    encode_texts,
    save_tokenizer,
    special_ids,
)
from lightning_seq.errors import InputError
from lightning_seq.utils import plain_hparams

CACHE_VERSION = 1
PAIR_FORMATS = {".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
NUMBER_EXAMPLES = (7, 42, 1999, 342105, 999999)  # default `lightning predict` inputs of the embedded data

Pair = tuple[str, str]


class PairDataset(Dataset):
    """Item ``i``: the source ids and the target ids (``<|bos|>`` and ``<|eos|>`` included) of pair ``i``."""

    def __init__(self, src: Ragged, tgt: Ragged):
        self.src, self.tgt = src, tgt

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.src[i], self.tgt[i]


def collate_pairs(items: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """``[(src, tgt), ...]`` -> ``{"src": (B, S), "tgt": (B, T)}``, right-padded with ``pad_id``."""
    return {"src": pad([s for s, _ in items], pad_id), "tgt": pad([t for _, t in items], pad_id)}


class ParallelTextDataModule(SpecialTokenIds, CachedDataModule):
    """Translation data from the embedded number words, local TSV/JSONL files or a Hugging Face dataset.

    Args:
        source: None for the embedded number words; a ``.tsv``/``.jsonl``/``.json``/``.parquet`` file,
            folder or glob; or a Hugging Face dataset name.
        direction: for the embedded data: ``words_to_digits`` or ``digits_to_words``.
        train_size: pairs in the embedded train split.
        val_size: pairs in the embedded validation split.
        test_size: pairs in the embedded test split.
        src_column: the key of the source text in JSON rows (and Hugging Face columns).
        tgt_column: the key of the target text.
        translation_column: the key of a ``{language: text}`` dict in Hugging Face style rows.
        src_lang: the source language in that dict (``en``).
        tgt_lang: the target language in that dict (``de``).
        dataset_config: the Hugging Face dataset configuration (``de-en``).
        dataset_splits: which Hugging Face splits to use, e.g. ``{train: "train[:100000]"}``; by default
            the dataset's own train/validation/test splits.
        tokenizer: the source tokenizer, or the joint one when ``tgt_tokenizer`` is not given (trained on
            the sources and targets of the train split). Default: for the embedded data, separate
            tokenizers, ``word`` for number words and ``char`` for digits; else a joint ``bpe`` of 8192
            tokens.
        tgt_tokenizer: the target tokenizer; when given, the two are separate.
        max_length: the longest ``src`` or ``tgt`` row (``tgt`` counts ``<|bos|>`` and ``<|eos|>``).
            Longer pairs are dropped from every split (with a warning giving the counts), never
            truncated, since a cut target is a wrong translation.
        batch_size: pairs per batch on each device.
        val_fraction: share of train carved off (at random, fixed seed) when the source has no val split.
        test_fraction: likewise for test.
        num_workers: DataLoader worker processes.
        seed: seed of the embedded data and of the training order (a new permutation each epoch).
        cache_dir: where tokenized data is cached; default ``$LIGHTNING_SEQ_CACHE`` or
            ``~/.cache/lightning_seq``.
        inputs: source sentences to translate in ``lightning predict``; default a few examples.
    """

    CACHE_KIND = "parallel"

    def __init__(
        self,
        source: str | None = None,
        direction: Literal["words_to_digits", "digits_to_words"] = "words_to_digits",
        train_size: int = 20_000,
        val_size: int = 1000,
        test_size: int = 1000,
        src_column: str = "src",
        tgt_column: str = "tgt",
        translation_column: str = "translation",
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        dataset_config: str | None = None,
        dataset_splits: dict[str, str] | None = None,
        tokenizer: TokenizerConfig | None = None,
        tgt_tokenizer: TokenizerConfig | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        inputs: list[str] | None = None,
    ):
        super().__init__()
        tokenizer, tgt_tokenizer = (
            TokenizerConfig(**t) if isinstance(t, dict) else t for t in (tokenizer, tgt_tokenizer)
        )
        self.save_hyperparameters()
        plain_hparams(self)
        if direction not in ("words_to_digits", "digits_to_words"):
            raise InputError(
                f"data.direction: unknown direction '{direction}'; "
                "expected 'words_to_digits' or 'digits_to_words'."
            )
        _check_sizes(max_length=max_length, batch_size=batch_size)
        _check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
        if (src_lang is None) != (tgt_lang is None):
            raise InputError("data.src_lang / data.tgt_lang: give both languages, or neither.")
        self.source, self.direction = source, direction
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.columns = {"src": src_column, "tgt": tgt_column, "translation": translation_column}
        self.langs = (src_lang, tgt_lang) if src_lang is not None else None
        self.dataset_config, self.dataset_splits = dataset_config, dataset_splits
        self.src_config, self.tgt_config = self._tokenizer_configs(tokenizer, tgt_tokenizer)
        self.max_length, self.batch_size = max_length, batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers, self.seed = num_workers, seed
        self.cache_root = default_cache_dir(cache_dir)
        self.inputs = inputs
        self._meta: dict | None = None
        self._tokenizers: dict[str, Tokenizer] = {}
        self.cache_hit: bool | None = None  # after preparation: whether the cache already existed

    @property
    def embedded(self) -> bool:
        return self.source is None or self.source == embedded_tasks.NUMBERS_SOURCE

    @property
    def joint(self) -> bool:
        """Whether source and target share one tokenizer (and one vocabulary)."""
        return self.tgt_config is None

    def _tokenizer_configs(
        self, tokenizer: TokenizerConfig | None, tgt_tokenizer: TokenizerConfig | None
    ) -> tuple[TokenizerConfig, TokenizerConfig | None]:
        """(source or joint, target or None); a side not given takes the default."""
        if not self.embedded:
            return tokenizer or TokenizerConfig(kind="bpe", vocab_size=8192), tgt_tokenizer
        if tokenizer is not None and tgt_tokenizer is None:
            return tokenizer, None
        words, digits = TokenizerConfig(kind="word", min_frequency=1), TokenizerConfig(kind="char")
        src, tgt = (words, digits) if self.direction == "words_to_digits" else (digits, words)
        return tokenizer or src, tgt_tokenizer or tgt

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def src_vocab_size(self) -> int:
        return self.meta["src_vocab_size"]

    @property
    def tgt_vocab_size(self) -> int:
        return self.meta["tgt_vocab_size"]

    @property
    def src_tokenizer(self) -> Tokenizer:
        return self._load_tokenizer("src")

    @property
    def tgt_tokenizer(self) -> Tokenizer:
        return self.src_tokenizer if self.joint else self._load_tokenizer("tgt")

    @property
    def tokenizer(self) -> Tokenizer:
        """The target tokenizer (what a model's outputs are decoded with)."""
        return self.tgt_tokenizer

    def _load_tokenizer(self, side: str) -> Tokenizer:
        if side not in self._tokenizers:
            self.prepare_data()
            self._tokenizers[side] = Tokenizer.from_file(str(self.cache_path / f"{side}_tokenizer.json"))
        return self._tokenizers[side]

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def cache_key(self) -> str:
        if self.embedded:
            data: object = [embedded_tasks.NUMBERS_SOURCE, self.direction, self.sizes, self.seed]
        else:
            columns = [self.columns, self.langs]
            data = sources.fingerprint(
                self.source, columns, self.dataset_config, self.dataset_splits, PAIR_FORMATS
            )
            data = [data, self.val_fraction, self.test_fraction]
        ident = {
            "version": CACHE_VERSION,
            "data": data,
            "src_tokenizer": self.src_config.identity(),
            "tgt_tokenizer": None if self.joint else self.tgt_config.identity(),
            "max_length": self.max_length,
        }
        return key_of(ident)

    def read_pairs(self) -> dict[str, list[Pair]]:
        """The ``(source, target)`` text pairs of each split, checked (no tokenization)."""
        if self.embedded:
            return embedded_tasks.number_pairs(
                **{f"{s}_size": n for s, n in self.sizes.items()},
                seed=self.seed,
                reverse=self.direction == "digits_to_words",
            )
        records, _ = sources.read_task_records(
            self.source, self.dataset_config, self.dataset_splits, PAIR_FORMATS
        )
        pairs = {split: [self._pair(where, row) for where, row in rows] for split, rows in records.items()}
        return sources.carve_records(pairs, self.val_fraction, self.test_fraction)

    def _pair(self, where: str, row: object) -> Pair:
        """One ``(source, target)`` pair from a TSV row (fields) or a JSON/dataset row (dict)."""
        if isinstance(row, list):
            if len(row) != 2:
                raise InputError(
                    f"data.source: {where}: expected 2 tab-separated fields (source<TAB>target), found "
                    f"{len(row)}. Fix: give every line one source and one target, without tabs inside them."
                )
            pair = (row[0], row[1])
        else:
            pair = self._pair_of_dict(where, row)
        for side, text in zip(("source", "target"), pair, strict=True):
            if not isinstance(text, str):
                raise InputError(
                    f"data.source: {where}: the {side} is {type(text).__name__}, not text. "
                    "Fix: correct the row."
                )
            if not text.strip():
                raise InputError(
                    f"data.source: {where}: empty {side} in a pair. "
                    f"Fix: remove the line, or fill in the {side}."
                )
        return pair

    def _pair_of_dict(self, where: str, row: dict) -> tuple[object, object]:
        column = self.columns["translation"]
        if self.langs is not None:
            inner = row.get(column)
            if not isinstance(inner, dict):
                raise InputError(
                    f"data.translation_column: {where} has no '{column}' object (its keys are "
                    f"{', '.join(map(str, row))}). Fix: set data.translation_column, or leave out "
                    "data.src_lang/tgt_lang and use data.src_column/tgt_column."
                )
            missing = [lang for lang in self.langs if lang not in inner]
            if missing:
                raise InputError(
                    f"data.src_lang / data.tgt_lang: {where}: '{column}' has no language "
                    f"{', '.join(missing)} (it has {', '.join(map(str, inner))}). Fix: choose among those."
                )
            return inner[self.langs[0]], inner[self.langs[1]]
        missing = [self.columns[s] for s in ("src", "tgt") if self.columns[s] not in row]
        if missing:
            hint = (
                f"; it holds '{column}' {{language: text}} objects: set data.src_lang and data.tgt_lang"
                if isinstance(row.get(column), dict)
                else ""
            )
            raise InputError(
                f"data.src_column / data.tgt_column: {where} has no column {', '.join(map(repr, missing))} "
                f"(its columns are {', '.join(map(str, row))}){hint}. Fix: set data.src_column and "
                "data.tgt_column to its columns."
            )
        return row[self.columns["src"]], row[self.columns["tgt"]]

    def _write_cache(self, out: Path) -> None:
        pairs = self.read_pairs()
        train_src, train_tgt = [p[0] for p in pairs["train"]], [p[1] for p in pairs["train"]]
        src_tok = build_tokenizer(self.src_config, train_src + train_tgt if self.joint else train_src)
        tgt_tok = src_tok if self.joint else build_tokenizer(self.tgt_config, train_tgt)
        ids = special_ids(tgt_tok)
        if special_ids(src_tok)["pad"] != ids["pad"]:
            raise InputError(
                "data.tokenizer / data.tgt_tokenizer: the source and target tokenizers have different "
                f"padding ids ({special_ids(src_tok)['pad']} and {ids['pad']}). Fix: use tokenizers whose "
                "<|pad|> token has the same id (trained ones always do)."
            )
        save_tokenizer(src_tok, out / "src_tokenizer.json")
        save_tokenizer(tgt_tok, out / "tgt_tokenizer.json")
        meta = {
            "source": self.source or embedded_tasks.NUMBERS_SOURCE,
            "src_tokenizer": asdict(self.src_config),
            "tgt_tokenizer": None if self.joint else asdict(self.tgt_config),
            "src_vocab_size": src_tok.get_vocab_size(),
            "tgt_vocab_size": tgt_tok.get_vocab_size(),
            "special_ids": ids,
            "num_pairs": {},
            "dropped": {},
            "examples": [src for src, _ in pairs["test"][:4]],
        }
        for split, split_pairs in pairs.items():
            src_ids = encode_texts(src_tok, [p[0] for p in split_pairs])
            tgt_ids = [
                [ids["bos"], *t, ids["eos"]] for t in encode_texts(tgt_tok, [p[1] for p in split_pairs])
            ]
            keep = [
                i
                for i, (s, t) in enumerate(zip(src_ids, tgt_ids, strict=True))
                if max(len(s), len(t)) <= self.max_length
            ]
            if not keep:
                raise InputError(
                    f"data.max_length: all {len(split_pairs)} pairs of the {split} split are longer than "
                    f"max_length = {self.max_length} tokens. Fix: raise data.max_length."
                )
            write_ragged(out, f"{split}.src", [src_ids[i] for i in keep], id_dtype(meta["src_vocab_size"]))
            write_ragged(out, f"{split}.tgt", [tgt_ids[i] for i in keep], id_dtype(meta["tgt_vocab_size"]))
            meta["num_pairs"][split] = len(keep)
            meta["dropped"][split] = len(split_pairs) - len(keep)
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def dataset(self, split: str) -> PairDataset:
        """The cached pairs of a split."""
        if self.meta["dropped"][split]:
            warnings.warn(
                f"data.max_length: {self.meta['dropped'][split]} pairs of the {split} split are longer than "
                f"{self.max_length} tokens and left out.",
                stacklevel=2,
            )
        return PairDataset(Ragged(self.cache_path, f"{split}.src"), Ragged(self.cache_path, f"{split}.tgt"))

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        world = rank_and_world(self.trainer)[1]
        if stage == "fit" and self.meta["num_pairs"]["train"] < self.batch_size * world:
            raise InputError(
                f"data.batch_size: the train split has {self.meta['num_pairs']['train']} pairs, fewer than "
                f"one batch of {self.batch_size} x {world} devices. Fix: lower data.batch_size or add pairs."
            )
        self.copy_to_run(
            stage, {"tgt_tokenizer.json": "tokenizer.json", "src_tokenizer.json": "src_tokenizer.json"}
        )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return batched_loader(self, self.dataset(split), shuffle, partial(collate_pairs, pad_id=self.pad_id))

    def predict_inputs(self) -> list[str]:
        """The sentences ``lightning predict`` translates: ``inputs``, or a few examples."""
        if self.inputs is not None:
            return list(self.inputs)
        if self.embedded:
            texts = [(embedded_tasks.number_words(n), str(n)) for n in NUMBER_EXAMPLES]
            return [pair[self.direction != "words_to_digits"] for pair in texts]
        return list(self.meta["examples"])

    def predict_dataloader(self) -> DataLoader:
        """Batches ``{"src": (B, S), "text": [source sentences]}``, all inputs in one batch."""
        texts = self.predict_inputs()
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise InputError("data.inputs: expected a list of non-empty source sentences to translate.")
        src = [ids[: self.max_length] for ids in encode_texts(self.src_tokenizer, texts)]
        batch = {"src": pad(src, self.pad_id), "text": texts}
        return DataLoader([batch], batch_size=None)

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {
            "cache_key": self.cache_key,
            "src_vocab_size": self.src_vocab_size,
            "tgt_vocab_size": self.tgt_vocab_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for side in ("src", "tgt"):
            key = f"{side}_vocab_size"
            if state.get(key) not in (None, getattr(self, key)):
                raise InputError(
                    f"data.tokenizer: the checkpoint was trained with a {side} vocabulary of {state[key]} "
                    f"tokens, but this data gives {getattr(self, key)}. Fix: use the same data.source, "
                    "data.tokenizer and data.tgt_tokenizer settings as the run that wrote the checkpoint."
                )


def _check_sizes(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise InputError(f"data.{name}: expected a positive integer, got {value}.")


def _check_fractions(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 < value < 0.5:
            raise InputError(f"data.{name}: expected a fraction in (0, 0.5), got {value}.")

"""LabelledTextDataModule: labelled texts -> cached token ids -> classification or tagging batches.

Two tasks:

* ``classify``: one label per text. Batches ``{"tokens": (B, T), "labels": (B,)}``.
* ``tag``: one label per word of a pre-split text. Batches ``{"tokens": (B, T), "labels": (B, T)}``:
  each word is encoded with ``tokenizer.encode(words, is_pretokenized=True)``; its first sub-token
  carries the word's label, the other sub-tokens and the padding carry -100 (ignored by the loss).

``tokens`` is right-padded with ``pad_id`` (the key padding mask is ``tokens != pad_id``) and holds
no special tokens. Labels are ids into :attr:`classes`, the label names in id order: ``classes``
when given, else the names a Hugging Face ``ClassLabel`` column declares, else the sorted labels of
the train split (numbers in numeric order).

Sources:

* none: the embedded data with known right answers (see :mod:`.embedded_tasks`): for ``classify``
  lines of Python standard-library code vs prose lines of Python's documentation (``code`` /
  ``prose``, balanced); for ``tag`` logical lines of standard-library code split by Python's
  ``tokenize``, tagged ``COMMENT``, ``KEYWORD``, ``NAME``, ``NUMBER``, ``OP``, ``STRING``;
* local ``.csv`` (with a header), ``.jsonl``/``.json``, ``.parquet`` (read with ``datasets``, which
  keeps ``ClassLabel`` names) and ``.tsv`` (``text<TAB>label``, or ``tokens<TAB>tags`` space-separated,
  no header) files, named by split as for :mod:`.sources`.
  For ``tag``, the tokens and tags columns hold lists, or strings of space-separated items;
* a Hugging Face dataset name (``imdb``; ``conll2003`` with ``tags_column: ner_tags``).

Tokenization happens once: the tokenizer, the token ids and the labels of each split are written to
``cache_dir/labelled/<key>/`` and memory-mapped by later runs.
"""

import json
import re
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
    TokenizerConfig,
    build_tokenizer,
    encode_texts,
    save_tokenizer,
    special_ids,
)
from lightning_seq.errors import InputError
from lightning_seq.utils import plain_hparams

CACHE_VERSION = 1
IGNORE = -100  # the label of padding and of continuation sub-tokens (cross-entropy's ignore_index)
EMBEDDED = {"classify": embedded_tasks.CODE_PROSE_SOURCE, "tag": embedded_tasks.TOKENS_SOURCE}
COLUMN_ARGUMENTS = {
    "classify": "data.text_column / data.label_column",
    "tag": "data.tokens_column / data.tags_column",
}
EXAMPLES = {
    "classify": [
        "for key, value in sorted(mapping.items()):",
        "The value returned is the number of bytes written to the file.",
        'raise ValueError("the list is empty")',
        "This is the default behaviour of the interpreter.",
    ],
    "tag": [
        ["for", "key", ",", "value", "in", "sorted", "(", "mapping", ".", "items", "(", ")", ")", ":"],
        ["x", "=", "3.5", "+", "len", "(", "'abc'", ")", "# three"],
        ["if", "not", "done", "and", "count", ">", "10", ":"],
    ],
}

Example = tuple[str, object, object]  # (where, text or words, label or tags)


class LabelledDataset(Dataset):
    """Item ``i``: the token ids of example ``i`` and its label (classify) or sub-token labels (tag)."""

    def __init__(self, tokens: Ragged, labels: Ragged | np.ndarray):
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | int]:
        return self.tokens[i], self.labels[i]


def collate_labelled(items: list, pad_id: int) -> dict[str, torch.Tensor]:
    """``[(ids, label), ...]`` -> ``{"tokens": (B, T), "labels": (B,) or (B, T)}`` (-100-padded)."""
    tokens = pad([ids for ids, _ in items], pad_id)
    labels = [label for _, label in items]
    if isinstance(labels[0], np.ndarray):
        return {"tokens": tokens, "labels": pad(labels, IGNORE)}
    return {"tokens": tokens, "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64))}


class LabelledTextDataModule(CachedDataModule):
    """Text classification and tagging data from embedded data, local files or a Hugging Face dataset.

    Args:
        task: ``classify`` (a label per text) or ``tag`` (a label per word).
        source: None for the embedded data of the task; a ``.csv``/``.jsonl``/``.json``/``.parquet``/``.tsv``
            file, folder or glob; or a Hugging Face dataset name.
        text_column: the column of the text (classify).
        label_column: the column of the label (classify).
        tokens_column: the column of the words (tag).
        tags_column: the column of the words' labels (tag).
        dataset_config: the Hugging Face dataset configuration.
        dataset_splits: which Hugging Face splits to use, e.g. ``{train: "train[:90%]", val: "train[90%:]"}``;
            by default the dataset's own train/validation/test splits.
        classes: the label names in id order; by default those the data declares or the sorted train
            labels. A label outside them in any split is an error.
        tokenizer: which tokenizer to train on the train split, or a ``tokenizer.json`` or a
            language model's ``.ckpt`` to take it from (to fine-tune that model).
        max_length: the longest ``tokens`` row; longer texts are truncated (their tail is left out).
        train_size: examples in the embedded train split.
        val_size: examples in the embedded validation split.
        test_size: examples in the embedded test split.
        batch_size: examples per batch on each device.
        val_fraction: share of train carved off (at random, fixed seed) when the source has no val split.
        test_fraction: likewise for test.
        num_workers: DataLoader worker processes.
        seed: seed of the embedded data and of the training order (a new permutation each epoch).
        cache_dir: where tokenized data is cached; default ``$LIGHTNING_SEQ_CACHE`` or
            ``~/.cache/lightning_seq``.
        inputs: texts to label in ``lightning predict`` (for ``tag``: strings split on whitespace, or
            lists of words); default a few examples.
    """

    CACHE_KIND = "labelled"

    def __init__(
        self,
        task: Literal["classify", "tag"] = "classify",
        source: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        tokens_column: str = "tokens",
        tags_column: str = "tags",
        dataset_config: str | None = None,
        dataset_splits: dict[str, str] | None = None,
        classes: list[str] | None = None,
        tokenizer: TokenizerConfig | None = None,
        max_length: int = 256,
        train_size: int = 4000,
        val_size: int = 500,
        test_size: int = 500,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = None,
        inputs: list[str | list[str]] | None = None,
    ):
        super().__init__()
        if isinstance(tokenizer, dict):  # from a checkpoint's hyperparameters
            tokenizer = TokenizerConfig(**tokenizer)
        # the label names go in checkpoints through state_dict(); the model has them as hyperparameters
        self.save_hyperparameters(ignore=["classes"])
        plain_hparams(self)
        if task not in ("classify", "tag"):
            raise InputError(f"data.task: unknown task '{task}'; expected 'classify' or 'tag'.")
        for name, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value < 1:
                raise InputError(f"data.{name}: expected a positive integer, got {value}.")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 0.5:
                raise InputError(f"data.{name}: expected a fraction in (0, 0.5), got {value}.")
        if classes is not None and len(set(map(str, classes))) != len(classes):
            raise InputError(f"data.classes: the names must be distinct, got {classes}.")
        self.task, self.source = task, source
        self.columns = (
            {"text": text_column, "label": label_column}
            if task == "classify"
            else {"text": tokens_column, "label": tags_column}
        )
        self.dataset_config, self.dataset_splits = dataset_config, dataset_splits
        self.given_classes = [str(c) for c in classes] if classes is not None else None
        self.tokenizer_config = tokenizer or TokenizerConfig()
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.max_length, self.batch_size = max_length, batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_workers, self.seed = num_workers, seed
        self.cache_root = default_cache_dir(cache_dir)
        self.inputs = inputs
        self._meta: dict | None = None
        self._tokenizer: Tokenizer | None = None
        self.cache_hit: bool | None = None  # after preparation: whether the cache already existed

    @property
    def embedded(self) -> bool:
        return self.source is None or self.source == EMBEDDED[self.task]

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def pad_id(self) -> int:
        return self.meta["special_ids"]["pad"]

    @property
    def classes(self) -> list[str]:
        """The label names in id order."""
        return list(self.meta["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = Tokenizer.from_file(str(self.cache_path / "tokenizer.json"))
        return self._tokenizer

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def cache_key(self) -> str:
        if self.embedded:
            source = EMBEDDED[self.task]
            data: object = [source, embedded_tasks.embedded_fingerprint(source), self.sizes, self.seed]
        else:
            data = sources.fingerprint(
                self.source, self.columns, self.dataset_config, self.dataset_splits, sources.RECORD_FORMATS
            )
            data = [data, self.val_fraction, self.test_fraction]
        ident = {
            "version": CACHE_VERSION,
            "task": self.task,
            "data": data,
            "classes": self.given_classes,
            "tokenizer": self.tokenizer_config.identity(),
            "max_length": self.max_length,
        }
        return key_of(ident)

    def read_examples(self) -> tuple[dict[str, list[Example]], list[str] | None]:
        """The checked ``(where, text or words, label or tags)`` examples of each split (labels as
        names), and the label names the source declares (None when it declares none)."""
        if self.embedded:
            generate = (
                embedded_tasks.code_vs_prose if self.task == "classify" else embedded_tasks.python_token_tags
            )
            splits = generate(**{f"{s}_size": n for s, n in self.sizes.items()}, seed=self.seed)
            source = EMBEDDED[self.task]
            examples = {
                split: [(f"{source}[{split}] {i}", x, y) for i, (x, y) in enumerate(rows)]
                for split, rows in splits.items()
            }
            return examples, list(embedded_tasks.TOKEN_TAGS) if self.task == "tag" else None
        records, label_names = sources.read_task_records(
            self.source, self.dataset_config, self.dataset_splits
        )
        parse = self._classify_example if self.task == "classify" else self._tag_example
        examples = {split: [parse(where, row) for where, row in rows] for split, rows in records.items()}
        examples = sources.carve_records(examples, self.val_fraction, self.test_fraction)
        return examples, label_names.get(self.columns["label"])

    def _fields(self, where: str, row: object) -> tuple[object, object]:
        """The text and label fields of a row: the two fields of a TSV line, or two columns."""
        if isinstance(row, list):
            if len(row) != 2:
                what = "text<TAB>label" if self.task == "classify" else "tokens<TAB>tags"
                raise InputError(
                    f"data.source: {where}: expected 2 tab-separated fields ({what}), found {len(row)}. "
                    "Fix: correct the line (no tabs inside the fields)."
                )
            return row[0], row[1]
        missing = [c for c in self.columns.values() if c not in row]
        if missing:
            names = COLUMN_ARGUMENTS[self.task]
            raise InputError(
                f"{names}: {where} has no column {', '.join(map(repr, missing))} (its columns are "
                f"{', '.join(map(str, row))}). Fix: set {names} to its columns."
            )
        return row[self.columns["text"]], row[self.columns["label"]]

    def _classify_example(self, where: str, row: object) -> Example:
        text, label = self._fields(where, row)
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"data.text_column: {where}: the text is {_describe(text)}. Fix: give a non-empty text."
            )
        if isinstance(label, (list, dict)) or label is None or str(label).strip() == "":
            raise InputError(
                f"data.label_column: {where}: the label is {_describe(label)}. Fix: give one label."
            )
        return where, text, str(label).strip()

    def _tag_example(self, where: str, row: object) -> Example:
        words, tags = (_items(x) for x in self._fields(where, row))
        if words is None or not words or not all(isinstance(w, str) and w for w in words):
            raise InputError(
                f"data.tokens_column: {where}: expected a non-empty list of words (or a string of "
                "space-separated words). Fix: correct the row."
            )
        if tags is None or len(tags) != len(words):
            count = "no list" if tags is None else f"{len(tags)} tags"
            raise InputError(
                f"data.tags_column: {where}: {len(words)} words but {count}. Fix: give one tag per word."
            )
        return where, words, [str(t) for t in tags]

    def _classes(self, examples: dict[str, list[Example]], declared: list[str] | None) -> list[str]:
        """The label names in id order, and every label checked against them."""
        labels = (lambda y: [y]) if self.task == "classify" else (lambda y: y)
        classes = self.given_classes or declared
        if classes is None:
            classes = sorted({name for _, _, y in examples["train"] for name in labels(y)}, key=_label_order)
        known = set(classes)
        for split, rows in examples.items():
            for where, _, y in rows:
                bad = next((name for name in labels(y) if name not in known), None)
                if bad is not None:
                    raise InputError(self._unknown_label(where, split, bad, classes))
        if len(classes) < 2:
            raise InputError(
                f"data.classes: the data has {len(classes)} label ({', '.join(classes)}); a classifier needs "
                "at least 2. Fix: check data.label_column / data.tags_column."
            )
        return list(classes)

    def _unknown_label(self, where: str, split: str, label: str, classes: list[str]) -> str:
        shown = ", ".join(classes[:50]) + (f", ... ({len(classes)} in all)" if len(classes) > 50 else "")
        if self.given_classes is not None:
            origin, fix = "data.classes", "add it to data.classes, or correct the label"
        elif split != "train" and not self.embedded:
            origin, fix = "the labels of the train split", "add examples of it to train, or correct the label"
        else:
            origin, fix = "the labels the dataset declares", "correct the label"
        return f"data.classes: {where}: label '{label}' is not one of {origin}: {shown}. Fix: {fix}."

    def _write_cache(self, out: Path) -> None:
        examples, declared = self.read_examples()
        classes = self._classes(examples, declared)
        if self.task == "classify":
            train_texts = [x for _, x, _ in examples["train"]]
        else:
            train_texts = [word for _, words, _ in examples["train"] for word in words]
        tokenizer = build_tokenizer(self.tokenizer_config, train_texts)
        save_tokenizer(tokenizer, out / "tokenizer.json")
        vocab_size = tokenizer.get_vocab_size()
        meta = {
            "task": self.task,
            "source": self.source or EMBEDDED[self.task],
            "tokenizer": asdict(self.tokenizer_config),
            "vocab_size": vocab_size,
            "special_ids": special_ids(tokenizer),
            "classes": classes,
            "num_examples": {},
            "truncated": {},
            "examples": [x for _, x, _ in examples["test"][:4]],
        }
        index = {name: i for i, name in enumerate(classes)}
        for split, rows in examples.items():
            if self.task == "classify":
                ids = encode_texts(tokenizer, [x for _, x, _ in rows])
                labels = np.asarray([index[y] for _, _, y in rows], dtype=np.int64)
                np.save(out / f"{split}.labels.npy", labels)
            else:
                ids, labels = encode_words(tokenizer, [(x, [index[t] for t in y]) for _, x, y in rows])
                write_ragged(
                    out, f"{split}.labels", [t[: self.max_length] for t in labels], np.dtype(np.int32)
                )
            meta["truncated"][split] = sum(len(x) > self.max_length for x in ids)
            write_ragged(out, f"{split}.tokens", [x[: self.max_length] for x in ids], id_dtype(vocab_size))
            meta["num_examples"][split] = len(rows)
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def dataset(self, split: str) -> LabelledDataset:
        """The cached examples of a split."""
        if split not in self.meta["num_examples"]:  # (builds the cache if needed)
            raise ValueError(f"unknown split '{split}'")
        tokens = Ragged(self.cache_path, f"{split}.tokens")
        if self.task == "classify":
            return LabelledDataset(tokens, np.load(self.cache_path / f"{split}.labels.npy"))
        return LabelledDataset(tokens, Ragged(self.cache_path, f"{split}.labels"))

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        world = rank_and_world(self.trainer)[1]
        if stage == "fit" and self.meta["num_examples"]["train"] < self.batch_size * world:
            raise InputError(
                f"data.batch_size: the train split has {self.meta['num_examples']['train']} examples, fewer "
                f"than one batch of {self.batch_size} x {world} devices. "
                "Fix: lower data.batch_size or add data."
            )
        self.copy_to_run(stage, {"tokenizer.json": "tokenizer.json"})

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        collate = partial(collate_labelled, pad_id=self.pad_id)
        return batched_loader(self, self.dataset(split), shuffle, collate)

    def predict_inputs(self) -> list:
        """What ``lightning predict`` labels: ``inputs``, or a few examples."""
        if self.inputs is not None:
            return list(self.inputs)
        return list(EXAMPLES[self.task] if self.embedded else self.meta["examples"])

    def predict_dataloader(self) -> DataLoader:
        """One batch of all inputs: ``{"tokens": (B, T), "text": [str]}``; for ``tag`` also ``"words"``
        (the lists of words) and ``"word_mask"`` ``(B, T)``, True at each word's first sub-token, so
        ``logits[word_mask]`` are the words' predictions in order."""
        items = self.predict_inputs()
        if not items or not all(_items(x) for x in items):
            raise InputError("data.inputs: expected a list of non-empty texts to label.")
        if self.task == "classify":
            texts = [x if isinstance(x, str) else " ".join(x) for x in items]
            ids = [x[: self.max_length] for x in encode_texts(self.tokenizer, texts)]
            return DataLoader([{"tokens": pad(ids, self.pad_id), "text": texts}], batch_size=None)
        words = [_items(x) for x in items]
        ids, labels = encode_words(self.tokenizer, [(w, [1] * len(w)) for w in words])
        batch = {
            "tokens": pad([x[: self.max_length] for x in ids], self.pad_id),
            "word_mask": pad([y[: self.max_length] for y in labels], IGNORE) == 1,  # (B, T)
            "text": [" ".join(w) for w in words],
            "words": words,
        }
        return DataLoader([batch], batch_size=None)

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"cache_key": self.cache_key, "vocab_size": self.vocab_size, "classes": self.classes}

    def load_state_dict(self, state: dict) -> None:
        if state.get("vocab_size") not in (None, self.vocab_size):
            raise InputError(
                f"data.tokenizer: the checkpoint was trained with a vocabulary of {state['vocab_size']} "
                f"tokens, but this data gives {self.vocab_size}. Fix: use the same data.source and "
                "data.tokenizer settings as the run that wrote the checkpoint."
            )
        if state.get("classes") not in (None, self.classes):
            raise InputError(
                f"data.classes: the checkpoint was trained with classes {state['classes']}, but this data "
                f"gives {self.classes}. Fix: use the same data (or set data.classes to the checkpoint's)."
            )


def encode_words(
    tokenizer: Tokenizer, examples: list[tuple[list[str], list[int]]], chunk: int = 4096
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of pre-split words, and per sub-token labels: a word's label on its first sub-token,
    -100 on the others. A word that gives no sub-token loses its label."""
    ids, labels = [], []
    for start in range(0, len(examples), chunk):
        part = examples[start : start + chunk]
        encodings = tokenizer.encode_batch(
            [w for w, _ in part], is_pretokenized=True, add_special_tokens=False
        )
        for enc, (_, word_labels) in zip(encodings, part, strict=True):
            previous, row = None, []
            for word in enc.word_ids:
                row.append(word_labels[word] if word is not None and word != previous else IGNORE)
                previous = word
            ids.append(enc.ids)
            labels.append(row)
    return ids, labels


def _items(value: object) -> list | None:
    """A list as it is, a string split on whitespace, anything else None."""
    if isinstance(value, str):
        return value.split()
    return list(value) if isinstance(value, (list, tuple)) else None


def _label_order(name: str) -> tuple:
    """Sort key: integer labels in numeric order (``2 < 10``), before other names in text order."""
    return (0, int(name), "") if re.fullmatch(r"-?\d+", name) else (1, 0, name)


def _describe(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty" if not value.strip() else repr(value)
    return f"a {type(value).__name__}, not text"

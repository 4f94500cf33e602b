"""Reading text corpora into train/val/test lists of documents.

A source is one of:

* ``None`` (or ``"embedded:pydoc"``): the embedded corpus, see :mod:`lightning_seq.data.embedded`;
* a local file, folder (searched recursively) or glob of ``.txt`` (or WikiText's ``.tokens``),
  ``.jsonl``/``.json``, ``.csv`` or ``.parquet`` files. A ``.txt``/``.tokens`` file is one
  document; the other formats hold one document per row in ``text_column`` and are read with
  Hugging Face ``datasets``, the same code path as hub datasets. A file whose name contains
  ``train``, ``validation``/``valid``/``val``/``dev`` or ``test`` (as a separate word) belongs to
  that split; other files belong to ``train``;
* a Hugging Face ``datasets`` name (``"wikitext"`` with ``dataset_config="wikitext-2-raw-v1"``),
  used when the network allows.

Splits the source does not provide are carved deterministically from the end of ``train``.
"""

import glob
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info

from lightning_seq.data.embedded import PYDOC_SOURCE, pydoc_fingerprint, pydoc_topics
from lightning_seq.errors import InputError

#: The split names used across data/ (files, caches, loaders): always ``val``, never ``validation``.
SPLITS = ("train", "val", "test")
#: The names other people's folders, files and hub datasets give the splits, read as ours.
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
FORMATS = {
    ".txt": "text",
    ".tokens": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}

Corpus = dict[str, list[str]]
# control characters other than tab, newline, carriage return (C0, DEL, C1)
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MOST_CONTROL = 0.1  # text has almost none; binary content, and UTF-16 read as UTF-8 (50% NUL), far more


def is_embedded(source: str | None) -> bool:
    return source is None or source == PYDOC_SOURCE


def resolve_files(source: str, formats: dict[str, str] = FORMATS) -> list[Path] | None:
    """The local files a source names, or None when it does not look like a local path.

    Args:
        source: a file, folder or glob.
        formats: the extensions a folder is searched for (all files of a glob are taken).

    Raises:
        InputError: the source looks like a path but names nothing readable.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in formats)
        if not files:
            raise InputError(
                f"data.source: folder '{source}' holds no {', '.join(formats)} files. "
                "Fix: point data.source at a folder or file of text."
            )
        return files
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
        files = [p for p in files if p.is_file()]
        if not files:
            raise InputError(f"data.source: the pattern '{source}' matches no file. Fix: check the pattern.")
        return files
    if source.startswith((".", "/", "~")) or path.suffix.lower() in {*FORMATS, *formats}:
        raise InputError(f"data.source: '{source}' does not exist. Fix: check the path.")
    return None  # a Hugging Face dataset name


def fingerprint(
    source: str | None,
    text_column: str,
    dataset_config: str | None,
    splits: dict[str, str] | None = None,
    formats: dict[str, str] = FORMATS,
) -> str:
    """A cheap identity of a source for cache keys: file names, sizes and modification times.

    The contents of local files are not read, so a cached corpus is found without touching them.
    ``text_column`` may be any JSON-able description of the columns read.
    """
    if is_embedded(source):
        ident: object = [PYDOC_SOURCE, pydoc_fingerprint()]
    else:
        files = resolve_files(source, formats)
        if files is None:
            ident = ["hub", source, dataset_config, splits]
        else:
            ident = [[str(p.resolve()), st.st_size, st.st_mtime_ns] for p in files for st in [p.stat()]]
    blob = json.dumps([ident, text_column], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def read_corpus(
    source: str | None,
    text_column: str = "text",
    dataset_config: str | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.05,
    dataset_splits: dict[str, str] | None = None,
) -> Corpus:
    """Read a source into ``{"train": [...], "val": [...], "test": [...]}`` lists of documents."""
    if is_embedded(source):
        corpus: Corpus = {"train": pydoc_topics()}
    else:
        files = resolve_files(source)
        if files is None:
            corpus = read_hub_dataset(source, dataset_config, text_column, dataset_splits)
        else:
            root = Path(source).expanduser()
            corpus = read_local_files(files, text_column, root if root.is_dir() else None)
    if "train" not in corpus:
        raise InputError(
            f"data.source: '{source}' has {' and '.join(corpus)} files but no train files. "
            "Fix: add files whose names do not say val/valid/validation/dev/test (or say train)."
        )
    corpus = carve_splits(corpus, val_fraction, test_fraction)
    for split in SPLITS:
        if split == "test" and test_fraction == 0 and not corpus["test"]:
            continue  # no test split asked for
        if not any(doc.strip() for doc in corpus[split]):
            where = "the source" if split == "train" else f"the '{split}' split"
            raise InputError(
                f"data.source: {where} of '{source or PYDOC_SOURCE}' holds no text (empty corpus). "
                "Fix: give a source with text, or raise data.val_fraction/test_fraction for a tiny corpus."
            )
    return corpus


def split_of(name: str) -> str:
    """A file's split by its name below the source: ``wiki.valid.txt`` -> ``val``; else ``train``."""
    words = set(re.split(r"[^a-z]+", name.lower()))
    for split in ("test", "val", "train"):
        if words & set(SPLIT_ALIASES[split]):
            return split
    return "train"


def read_local_files(files: Sequence[Path], text_column: str, root: Path | None = None) -> Corpus:
    """Documents from local files, grouped into splits by their names below ``root`` (or file names)."""
    corpus: Corpus = {}
    by_format: dict[tuple[str, str], list[Path]] = {}
    for path in files:
        name = str(path.relative_to(root)) if root is not None else path.name
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(
                f"data.source: '{path}' has an unsupported extension; expected one of {', '.join(FORMATS)}."
            )
        by_format.setdefault((fmt, split_of(name)), []).append(path)
    for (fmt, split), paths in sorted(by_format.items()):
        docs = [read_utf8(p) for p in paths] if fmt == "text" else _read_tabular(fmt, paths, text_column)
        corpus.setdefault(split, []).extend(docs)
    return corpus


def read_utf8(path: Path) -> str:
    """A whole text file, decoded strictly as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        InputError: it is not UTF-8, or it is mostly control characters (see :func:`check_text`).
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"data.source: '{path}' is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}). "
            f"Fix: convert it, e.g. iconv -f latin1 -t utf-8 '{path}' > fixed.txt"
        ) from None
    check_text(text, f"'{path}'")
    return text


def check_text(
    text: str, where: str, fix: str = "leave it out of data.source, or convert it to text"
) -> None:
    """Refuse text that is mostly control characters: binary content (NUL bytes, UTF-16 without a
    byte-order mark) that happens to be valid UTF-8. ``where`` names it in the message, ``fix`` says
    what to do (unless it looks like UTF-16).

    Real text has almost no control characters besides tab and newline; more than ``MOST_CONTROL`` of
    them in a sample from the start, middle and end (at most 256K characters) is refused.
    """
    sample = _sample(text)
    if not sample:
        return
    share = (len(sample) - len(CONTROL.sub("", sample))) / len(sample)
    if share <= MOST_CONTROL:
        return
    nul = sample.count("\x00") / len(sample)
    if 0.4 <= nul <= 0.5:
        fix = f"it looks like UTF-16 text: convert it, e.g. iconv -f utf-16le -t utf-8 {where} > fixed.txt"
    raise InputError(
        f"data.source: {where} is not text: {share:.0%} of its characters are control characters "
        f"({nul:.0%} NUL). Fix: {fix}."
    )


def _sample(text: str, size: int = 1 << 16, pieces: int = 4) -> str:
    """``text`` when short, else ``pieces`` slices of ``size`` characters spread from start to end."""
    if len(text) <= size * pieces:
        return text
    step = (len(text) - size) // (pieces - 1)
    return "".join(text[i * step : i * step + size] for i in range(pieces))


def _read_tabular(fmt: str, paths: Sequence[Path], text_column: str) -> list[str]:
    import datasets

    names = ", ".join(str(p) for p in paths)
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(fmt, data_files=[str(p) for p in paths], split="train")
    except Exception as err:
        if fmt in ("json", "csv"):
            for path in paths:  # our reader names the line of a malformed row and the parser's reason
                read_records(path)
        raise InputError(
            f"data.source: could not read {names} as {fmt}: {_first_line(_root_cause(err))}. "
            "Fix: check the file format."
        ) from None
    return _column(ds, text_column, names)


@contextmanager
def _quiet_datasets():
    """No log lines or progress bars from ``datasets`` while it reads local files (a failure is one
    error, raised here)."""
    import datasets

    logger = logging.getLogger("datasets")
    level, bars = logger.level, datasets.is_progress_bar_enabled()
    logger.setLevel(logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception behind ``err`` (``datasets`` wraps the parser's error in its own)."""
    seen = {id(err)}
    while (inner := err.__cause__ or err.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        err = inner
    return err


def _column(ds, text_column: str, where: str) -> list[str]:
    if text_column not in ds.column_names:
        raise InputError(
            f"data.text_column: '{where}' has no column '{text_column}'; its columns are "
            f"{', '.join(ds.column_names)}. Fix: set data.text_column to one of them."
        )
    docs = ds[text_column]
    bad = next((d for d in docs if d is not None and not isinstance(d, str)), None)
    if bad is not None:
        raise InputError(
            f"data.text_column: column '{text_column}' of '{where}' holds {type(bad).__name__} values, "
            "not text. Fix: choose a column of strings."
        )
    kept = [d for d in docs if d]
    step = max(1, len(kept) // 1000)
    check_text(
        "\n".join(kept[::step]),
        f"column '{text_column}' of '{where}'",
        "set data.text_column to a column of text",
    )
    if len(kept) < len(docs):
        rank_zero_info(
            f"data.text_column: left out {len(docs) - len(kept)} of the {len(docs)} rows of '{where}' "
            f"whose '{text_column}' cell is empty."
        )
    return kept


def read_hub_dataset(
    name: str, config: str | None, text_column: str, splits: dict[str, str] | None = None
) -> Corpus:
    """Documents from a Hugging Face dataset (a hub name, or a local folder laid out like a hub repo).

    Args:
        name: the dataset's name or folder.
        config: its configuration, if it has several.
        text_column: the column holding the text.
        splits: our split (``train``/``val``/``test``) -> the dataset's split expression
            (``"validation"``, ``"train[:90%]"``); by default the dataset's own splits by name.
    """
    loaded = load_hub_splits(name, config, splits)
    return {ours: _column(ds, text_column, where) for ours, (where, ds) in loaded.items()}


def load_hub_splits(name: str, config: str | None, splits: dict[str, str] | None = None) -> dict:
    """A Hugging Face dataset's splits as ``{ours: (where, datasets.Dataset)}``, ``where`` like
    ``wmt14[validation]`` (for messages). Arguments as for :func:`read_hub_dataset`."""
    import datasets

    unknown = sorted(set(splits or {}) - set(SPLITS))
    if unknown:
        raise InputError(
            f"data.dataset_splits: unknown split {', '.join(unknown)}; expected train, val, test."
        )
    try:
        if splits:
            return {
                ours: (f"{name}[{theirs}]", datasets.load_dataset(name, config, split=theirs))
                for ours, theirs in splits.items()
            }
        dsd = datasets.load_dataset(name, config)
    except Exception as err:
        raise InputError(
            f"data.source: '{name}' is not a local file or folder, and loading it as a Hugging Face dataset "
            f"failed: {_first_line(err)}. Fix: check the path, or the dataset name, data.dataset_config, "
            "data.dataset_splits and the network."
        ) from None
    loaded = {}
    for ours, aliases in SPLIT_ALIASES.items():
        theirs = next((s for s in aliases if s in dsd), None)
        if theirs is not None:
            loaded[ours] = (f"{name}[{theirs}]", dsd[theirs])
    if "train" not in loaded:
        raise InputError(
            f"data.source: dataset '{name}' has no train split (it has {', '.join(dsd)}). "
            "Fix: choose a dataset or config with a train split."
        )
    return loaded


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def carve_splits(corpus: Corpus, val_fraction: float, test_fraction: float) -> Corpus:
    """Fill missing val/test splits from the tail of train: ``[train | val | test]`` by characters.

    Cuts fall on the first newline after the exact fraction (when one is near), so the carve is
    deterministic and rarely splits a line.
    """
    missing = [s for s in ("val", "test") if s not in corpus]
    fractions = {
        "val": val_fraction if "val" in missing else 0.0,
        "test": test_fraction if "test" in missing else 0.0,
    }
    train = corpus["train"]
    total = _length(train)
    test_start = total - round(total * fractions["test"])
    val_start = test_start - round(total * fractions["val"])
    train, rest = _cut(train, val_start)
    val, test = _cut(rest, test_start - _length(train))
    return {"train": train, "val": corpus.get("val", val), "test": corpus.get("test", test)}


def _length(docs: Sequence[str]) -> int:
    return sum(len(d) for d in docs)


def _cut(docs: Sequence[str], at: int) -> tuple[list[str], list[str]]:
    """Split a list of documents at character offset ``at`` (moved to a nearby newline)."""
    head: list[str] = []
    for i, doc in enumerate(docs):
        if at <= 0:
            return head, list(docs[i:])
        if at < len(doc):
            newline = doc.find("\n", at, at + 1000)
            cut = newline + 1 if newline >= 0 else at
            head.append(doc[:cut])
            return head, [doc[cut:], *docs[i + 1 :]]
        head.append(doc)
        at -= len(doc)
    return head, []


# ------------------------------------------------------------------ records: one example per row
# Task data (translation pairs, labelled texts) is read row by row, each row with its location
# ("file:line", "name[split] row i"), so an error can name the line a user has to fix.

RECORD_FORMATS = {".tsv": "tsv", ".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

Record = tuple[str, object]  # (where, row): a list of fields (.tsv) or a dict (.csv, .jsonl, datasets)
Records = dict[str, list[Record]]


def read_records(path: Path) -> list[Record]:
    """The rows of a ``.tsv`` (fields, no header), ``.csv`` (header row), ``.jsonl``/``.json`` or
    ``.parquet`` file.

    A ``.json`` file may also hold one JSON array of objects. Blank lines are skipped.

    Raises:
        InputError: naming the file and line of a malformed row, or an empty file.
    """
    fmt = RECORD_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"data.source: '{path}' has an unsupported extension; "
            f"expected one of {', '.join(RECORD_FORMATS)}."
        )
    if fmt == "parquet":
        return read_parquet_records(path)[0]
    text = read_utf8(path)
    records = {"tsv": _tsv_records, "csv": _csv_records, "json": _json_records}[fmt](path, text)
    if not records:
        raise InputError(f"data.source: '{path}' is empty (no rows). Fix: fill it, or remove it.")
    return records


def _tsv_records(path: Path, text: str) -> list[Record]:
    return [
        (f"{path}:{number}", line.split("\t"))
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]


def _csv_records(path: Path, text: str) -> list[Record]:
    import csv
    import io

    reader = csv.reader(io.StringIO(text), strict=True)
    rows = iter(lambda: _csv_row(reader, path), None)
    header = next(rows, None)
    records: list[Record] = []
    for fields in rows:
        if not any(f.strip() for f in fields):
            continue
        where = f"{path}:{reader.line_num}"
        if len(fields) != len(header):
            raise InputError(
                f"data.source: {where}: the row has {len(fields)} fields but the header has {len(header)} "
                f"({', '.join(header)}). Fix: quote fields that hold commas, or correct the row."
            )
        records.append((where, dict(zip(header, fields, strict=True))))
    return records


def _csv_row(reader, path: Path) -> list[str] | None:
    """The next row of a strict ``csv.reader`` (None at the end), or an error naming the line."""
    import csv

    try:
        return next(reader, None)
    except csv.Error as err:
        raise InputError(
            f"data.source: {path}:{reader.line_num}: malformed CSV ({err}). "
            "Fix: close the quotes, and quote fields that hold quotes or commas."
        ) from None


def _json_records(path: Path, text: str) -> list[Record]:
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(
                f"data.source: {path}:{err.lineno}: not valid JSON ({err.msg}, column {err.colno}). "
                "Fix: correct the file."
            ) from None
        records = [(f"{path} item {i}", row) for i, row in enumerate(rows)]
    else:
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InputError(
                    f"data.source: {path}:{number}: not valid JSON ({err.msg}, column {err.colno}). "
                    "Fix: write one JSON object per line."
                ) from None
    for where, row in records:
        if not isinstance(row, dict):
            raise InputError(
                f"data.source: {where}: expected a JSON object, found {type(row).__name__}. "
                'Fix: write one object per line, e.g. {"src": "...", "tgt": "..."}.'
            )
    return records


def read_local_records(
    files: Sequence[Path], root: Path | None = None
) -> tuple[Records, dict[str, list[str]]]:
    """The rows of local files, grouped into splits by their names below ``root`` (or file names), and
    the label names that ``.parquet`` files declare (see :func:`read_hub_records`)."""
    records: Records = {}
    label_names: dict[str, list[str]] = {}
    for path in files:
        name = str(path.relative_to(root)) if root is not None else path.name
        if path.suffix.lower() == ".parquet":
            rows, names = read_parquet_records(path)
            label_names = {**names, **label_names}
        else:
            rows = read_records(path)
        records.setdefault(split_of(name), []).extend(rows)
    return records, label_names


def read_parquet_records(path: Path) -> tuple[list[Record], dict[str, list[str]]]:
    """The rows of a ``.parquet`` file, read with ``datasets`` (which keeps declared ``ClassLabel`` names)."""
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=[str(path)], split="train")
    except Exception as err:
        raise InputError(
            f"data.source: could not read {path} as parquet: {_first_line(err)}. Fix: check the file format."
        ) from None
    rows, names = _dataset_records(ds, str(path))
    if not rows:
        raise InputError(f"data.source: '{path}' is empty (no rows). Fix: fill it, or remove it.")
    return rows, names


def read_hub_records(
    name: str, config: str | None, splits: dict[str, str] | None = None
) -> tuple[Records, dict[str, list[str]]]:
    """The rows of a Hugging Face dataset's splits (see :func:`load_hub_splits`), as dicts.

    ``ClassLabel`` columns hold label names instead of ids (lists of names for sequences of them).

    Returns:
        The rows by split, and the label names of each ``ClassLabel`` column in id order.
    """
    records: Records = {}
    label_names: dict[str, list[str]] = {}
    for ours, (where, ds) in load_hub_splits(name, config, splits).items():
        records[ours], names = _dataset_records(ds, where)
        label_names = {**names, **label_names}
    return records, label_names


def _dataset_records(ds, where: str) -> tuple[list[Record], dict[str, list[str]]]:
    """A ``datasets.Dataset``'s rows as dicts, ``ClassLabel`` ids turned into names, and those names."""
    rows = ds.to_list()
    label_names = {}
    for column, feature in ds.features.items():
        to_name, names = _label_names(feature)
        if to_name is not None:
            label_names[column] = names
            for row in rows:
                row[column] = to_name(row[column])
    return [(f"{where} row {i}", row) for i, row in enumerate(rows)], label_names


def _label_names(feature) -> tuple:
    """For a ``ClassLabel`` feature (or a sequence of them): a function turning ids into names, and the
    names in id order; ``(None, None)`` for other features."""
    import datasets

    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and len(feature) == 1:
        inner = feature[0]
    if isinstance(feature, datasets.ClassLabel):
        return (lambda v: feature.int2str(v) if isinstance(v, int) and v >= 0 else v), list(feature.names)
    if isinstance(inner, datasets.ClassLabel):
        to_name = lambda vs: [inner.int2str(v) if isinstance(v, int) and v >= 0 else v for v in vs]  # noqa: E731
        return to_name, list(inner.names)
    return None, None


def carve_records(splits: dict[str, list], val_fraction: float, test_fraction: float, seed: int = 0) -> dict:
    """Fill missing val/test splits with items drawn at random (fixed ``seed``) from train.

    Unlike :func:`carve_splits`, items are drawn from everywhere in train, so a file sorted by label
    or length still gives representative val and test splits. Items keep their order.
    """
    import random

    missing = [s for s in ("val", "test") if s not in splits]
    if not missing:
        return {split: splits[split] for split in SPLITS}
    train = list(splits["train"])
    counts = {s: max(1, round(len(train) * {"val": val_fraction, "test": test_fraction}[s])) for s in missing}
    if len(train) <= sum(counts.values()):
        raise InputError(
            f"data.source: the train split has only {len(train)} rows, too few to carve "
            f"{' and '.join(missing)} splits from. Fix: add rows, or give val/test files."
        )
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    out, start = dict(splits), 0
    for split in missing:
        out[split] = [train[i] for i in sorted(order[start : start + counts[split]])]
        start += counts[split]
    out["train"] = [train[i] for i in sorted(order[start:])]
    return {split: out[split] for split in SPLITS}


def read_task_records(
    source: str,
    dataset_config: str | None,
    dataset_splits: dict[str, str] | None,
    formats: dict[str, str] = RECORD_FORMATS,
) -> tuple[Records, dict[str, list[str]]]:
    """Rows of local files (split by file names) or of a Hugging Face dataset; val/test may be missing
    (see :func:`carve_records`).

    Returns:
        The rows by split, and the label names the data declares per column (``ClassLabel``s).
    """
    files = resolve_files(source, formats)
    if files is None:
        records, label_names = read_hub_records(source, dataset_config, dataset_splits)
    else:
        root = Path(source).expanduser()
        records, label_names = read_local_records(files, root if root.is_dir() else None)
    if "train" not in records:
        raise InputError(
            f"data.source: '{source}' has {' and '.join(records)} files but no train files. "
            "Fix: add files whose names do not say val/valid/validation/dev/test (or say train)."
        )
    return records, label_names

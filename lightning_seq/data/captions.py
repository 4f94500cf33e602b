"""CaptionDataModule: images with reference captions -> verified, tokenized cache -> caption batches.

Sources (``source``):

* none: the embedded scenes of 2-3 coloured shapes (:mod:`.scenes`), each with five reference
  captions (:func:`.scenes.caption_variants`), written once into the cache in the real COCO captions
  layout and read back by the COCO reader below; their ``images[]`` entries also carry ``objects``
  (shape, colour and pixel box of every shape), which val/test batches pass on for grounding.
* a COCO folder: ``annotations/captions_<name>.json`` (``images[]``: ``id``, ``file_name``;
  ``annotations[]``: ``image_id``, ``caption``) beside one image folder ``<name>/`` per file. The file
  whose ``<name>`` starts with ``train`` is the train split, ``val`` the val split, ``test`` the test
  split; without a test file, test is the val split (COCO publishes no test captions).
* a Karpathy split file (``dataset_coco.json``, ``dataset_flickr8k.json``, ``dataset_flickr30k.json``):
  ``images[]`` with ``split`` (train, restval, val, test; restval joins train), ``filename``, an
  optional ``filepath`` sub-folder and ``sentences[].raw``; images below ``image_root`` (default: the
  file's folder).
* a Flickr8k folder: ``Flickr8k.token.txt`` (``<image>#<n><TAB><caption>`` per line) and the lists
  ``Flickr_8k.trainImages.txt``, ``Flickr_8k.devImages.txt``, ``Flickr_8k.testImages.txt`` (in the
  folder or its ``Flickr8k_text/``), images in ``Flicker8k_Dataset/`` or ``Images/``.
* a Hugging Face dataset (a hub name, a hub-layout folder or a ``save_to_disk`` folder): one row per
  image with a list of captions, or one row per caption (rows with the same image are grouped).

A source without a val split gets one carved from train (``val_fraction``, seeded); one without a
test split uses val. ``prepare_data`` checks every entry (each problem is one :class:`InputError`
naming the file and entry), decodes every image once (unreadable ones are errors; the train split's
mean and std are measured), trains a word tokenizer on the train captions and writes the token ids to
``cache_dir/captions/<key>/``.

Batches:

* train: ``{"images": (B, C, H, W), "captions": long (B, T)}``, each caption row
  ``[<|bos|>, w_1, ..., w_n, <|eos|>, <|pad|>...]``, rows sorted longest first. An epoch sees each
  image once with one of its captions, drawn from ``(seed, epoch, image)`` (``pairs: one``, the
  same under DDP and after a resume), or every (image, caption) pair once (``pairs: all``).
* val/test: every image once (no padding with repeats under DDP), in order: ``"images"``,
  ``"captions"`` (its first reference, for the loss), ``"references"`` (all its captions as written),
  ``"index"`` (its row in the split) and ``"objects"`` (the embedded scenes' objects with ``bbox``
  ``[left, top, right, bottom]`` as fractions of the image side; None for data without boxes).
* predict: ``{"images": (B, C, H, W), "files": [str]}`` for ``predict_images`` or the test split.

Images leave the DataLoader as uint8 and are normalised with the mean and std on the device
(:meth:`CaptionDataModule.on_after_batch_transfer`); there is no augmentation (a flip would make
"left" wrong).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, normalizers
from torch.utils.data import DataLoader, Dataset

from lightning_seq.data import pixels as px
from lightning_seq.data import scenes
from lightning_seq.data.cache import MANIFEST, CachedDataModule, build_once, default_cache_dir, key_of
from lightning_seq.data.decode import decode_image
from lightning_seq.data.image_sources import (
    HubRows,
    find_columns,
    folder_fingerprint,
    image_files,
    our_splits,
    read_hub,
)
from lightning_seq.data.images import MeanStd
from lightning_seq.data.ragged import Ragged, id_dtype, pad, write_ragged
from lightning_seq.data.resumable import ResumableSampler, ShardSampler, batched_loader, rank_and_world
from lightning_seq.data.scan import scan_images
from lightning_seq.data.sources import SPLITS
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
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
FLICKR_TOKENS = "Flickr8k.token.txt"
FLICKR_LISTS = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
FLICKR_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
CAPTION_COLUMNS = ("captions", "caption", "sentences", "sentences_raw", "text", "raw")
CHOICE_STREAM = 1  # the per-epoch caption draws, apart from the shuffle's stream


@dataclass
class CaptionSplit:
    """One split as read from a source, before tokenization.

    Args:
        images: file paths, or row numbers of a Hugging Face split (``table``).
        captions: the reference captions of each image, as written.
        names: how messages name each image (and predictions, for Hugging Face rows).
        objects: per image, its objects with ``bbox`` as fractions of the image side, or None (no boxes).
        table: for Hugging Face data, the source split the rows belong to.
    """

    images: list
    captions: list[list[str]]
    names: list[str]
    objects: list | None = None
    table: str | None = None
    extra: dict = field(default_factory=dict)

    def subset(self, keep: Sequence[int]) -> "CaptionSplit":
        pick = [int(i) for i in keep]
        return CaptionSplit(
            [self.images[i] for i in pick],
            [self.captions[i] for i in pick],
            [self.names[i] for i in pick],
            None if self.objects is None else [self.objects[i] for i in pick],
            self.table,
        )


# ---------------------------------------------------------------------------------------- sources
def source_kind(source: str | None) -> str:
    """What ``source`` names: ``embedded``, ``coco``, ``karpathy``, ``flickr8k``, ``disk`` or ``hub``.

    Raises:
        InputError: it looks like a local path but is missing, or a folder of none of these layouts.
    """
    if source is None:
        return "embedded"
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise InputError(
                f"data.source: '{source}' is a file but not a Karpathy split JSON (dataset_coco.json...). "
                "Fix: give a Karpathy .json file, or a COCO, Flickr8k or dataset folder."
            )
        return "karpathy"
    if path.is_dir():
        if sorted((path / "annotations").glob("captions_*.json")):
            return "coco"
        if _find_flickr_tokens(path) is not None:
            return "flickr8k"
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "disk"
        if any(p.suffix.lower() in (".parquet", ".arrow", ".jsonl", ".csv") for p in path.rglob("*")):
            return "hub"
        raise InputError(
            f"data.source: folder '{source}' is none of the caption layouts read here: COCO "
            f"(annotations/captions_<split>.json), Flickr8k ({FLICKR_TOKENS}) or a Hugging Face dataset. "
            "Fix: point data.source at such a folder, or at a Karpathy dataset_*.json file."
        )
    if source.startswith((".", "/", "~")) or path.suffix:
        raise InputError(f"data.source: '{source}' does not exist. Fix: check the path.")
    return "hub"


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"data.source: the file '{path}' does not exist. Fix: check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(
            f"data.source: '{path}' is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
            "Fix: correct the file, or download it again."
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"data.source: '{path}' is not UTF-8 text. Fix: give the JSON file.") from None


def _entries(data: object, key: str, path: Path) -> list:
    """``data[key]``, a list of JSON objects."""
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise InputError(
            f"data.source: '{path}' has no '{key}' list at the top (a JSON object with '{key}': [...] is "
            "expected). Fix: give the captions file itself."
        )
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(f"data.source: '{path}' {key}[{k}] is not a JSON object. Fix: correct it.")
    return items


def _field(entry: dict, key: str, where: str):
    if key not in entry:
        raise InputError(f"data.source: {where} has no '{key}'. Fix: add it, or remove the entry.")
    return entry[key]


def _check_caption(text: object, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InputError(
            f"data.source: {where} has an empty caption ({text!r}). Fix: write the caption, or remove it."
        )
    return text


def _check_image(path: Path, where: str, fix: str) -> str:
    if not path.is_file():
        raise InputError(f"data.source: {where}: the image '{path}' does not exist. Fix: {fix}.")
    return str(path)


def _no_caption(where: str, fix: str) -> InputError:
    return InputError(f"data.source: {where} has no caption. Fix: {fix}.")


def read_coco(root: Path) -> dict[str, CaptionSplit]:
    """A COCO folder's splits: ``annotations/captions_<name>.json`` with its images in ``<name>/``."""
    found: dict[str, Path] = {}
    for path in sorted((root / "annotations").glob("captions_*.json")):
        name = path.stem[len("captions_") :]
        split = next((s for s in SPLITS if name.lower().startswith(s)), None)
        if split is None:
            continue
        if split in found:
            raise InputError(
                f"data.source: '{root}/annotations' has two {split} caption files, '{found[split].name}' and "
                f"'{path.name}'. Fix: keep one of them there."
            )
        found[split] = path
    if "train" not in found:
        raise InputError(
            f"data.source: '{root}/annotations' has no captions_train*.json file (found "
            f"{', '.join(p.name for p in found.values()) or 'none'}). Fix: add the train captions file."
        )
    return {
        split: read_coco_file(path, root / path.stem[len("captions_") :]) for split, path in found.items()
    }


def read_coco_file(path: Path, image_dir: Path) -> CaptionSplit:
    """One COCO captions file; an image entry's ``objects`` (boxes in pixels) are kept, boxes as fractions."""
    data = _read_json(path)
    images, annotations = _entries(data, "images", path), _entries(data, "annotations", path)
    row_of: dict = {}
    for k, entry in enumerate(images):
        where = f"'{path}' images[{k}]"
        row_of[_field(entry, "id", where)] = k
        _field(entry, "file_name", where)
    captions: list[list[str]] = [[] for _ in images]
    for k, ann in enumerate(annotations):
        where = f"'{path}' annotations[{k}] (id {ann.get('id')})"
        image_id = _field(ann, "image_id", where)
        if image_id not in row_of:
            raise InputError(
                f"data.source: {where} has image_id {image_id!r}, which no entry of images[] has. "
                "Fix: add that image to images[], or remove the annotation."
            )
        captions[row_of[image_id]].append(_check_caption(_field(ann, "caption", where), where))
    paths, names, objects = [], [], []
    for k, entry in enumerate(images):
        where = f"'{path}' images[{k}] (id {entry['id']}, '{entry['file_name']}')"
        if not captions[k]:
            raise _no_caption(where, "add an annotation for it, or remove it from images[]")
        fix = f"put the image into '{image_dir}', or remove the entry and its annotations"
        paths.append(_check_image(image_dir / entry["file_name"], where, fix))
        names.append(f"'{paths[-1]}' ({where})")
        objects.append(_fractions(entry, where))
    return CaptionSplit(paths, captions, names, objects if any(o is not None for o in objects) else None)


def _fractions(entry: dict, where: str) -> list | None:
    """An image entry's ``objects`` with their pixel boxes as fractions of its width and height."""
    objects = entry.get("objects")
    if objects is None:
        return None
    try:
        width, height = float(entry["width"]), float(entry["height"])
        return [
            {**o, "bbox": [v / side for v, side in zip(o["bbox"], (width, height) * 2, strict=True)]}
            for o in objects
        ]
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise InputError(
            f"data.source: {where}: its 'objects' need a 'bbox' [left, top, right, bottom] each, and the "
            "image a 'width' and 'height'. Fix: correct the entry, or remove its 'objects'."
        ) from None


def read_karpathy(path: Path, image_root: Path | None) -> dict[str, CaptionSplit]:
    """A Karpathy split file; restval joins train."""
    root = image_root or path.parent
    entries = _entries(_read_json(path), "images", path)
    out: dict[str, CaptionSplit] = {}
    for k, entry in enumerate(entries):
        where = f"'{path}' images[{k}]"
        filename = _field(entry, "filename", where)
        where = f"'{path}' images[{k}] ('{filename}')"
        split = KARPATHY_SPLITS.get(_field(entry, "split", where))
        if split is None:
            raise InputError(
                f"data.source: {where} has the split {entry['split']!r}; expected train, restval, val or "
                "test. Fix: correct its split."
            )
        texts = []
        for j, sentence in enumerate(entry.get("sentences") or []):
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and isinstance(sentence.get("tokens"), list):
                raw = " ".join(map(str, sentence["tokens"]))
            texts.append(_check_caption(raw, f"{where} sentences[{j}]"))
        if not texts:
            raise _no_caption(where, "add its sentences, or remove the entry")
        image = root / entry.get("filepath", "") / filename
        fix = "set data.image_root to the folder that holds the images (and their filepath folders)"
        split_data = out.setdefault(split, CaptionSplit([], [], []))
        split_data.images.append(_check_image(image, where, fix))
        split_data.captions.append(texts)
        split_data.names.append(f"'{image}' ({where})")
    return out


def _find_flickr_tokens(root: Path) -> Path | None:
    for candidate in (root / FLICKR_TOKENS, root / "Flickr8k_text" / FLICKR_TOKENS):
        if candidate.is_file():
            return candidate
    return None


def read_flickr8k(root: Path) -> dict[str, CaptionSplit]:
    """A Flickr8k folder: the token file, the split lists beside it, the images folder."""
    tokens = _find_flickr_tokens(root)
    image_dir = next((root / d for d in FLICKR_IMAGE_DIRS if (root / d).is_dir()), None)
    if image_dir is None:
        raise InputError(
            f"data.source: the Flickr8k folder '{root}' has no images folder "
            f"({' or '.join(FLICKR_IMAGE_DIRS)}). Fix: unpack Flickr8k_Dataset.zip into it."
        )
    captions: dict[str, list[str]] = {}
    for number, line in enumerate(tokens.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, tab, text = line.partition("\t")
        where = f"'{tokens}' line {number}"
        if not tab or "#" not in key:
            raise InputError(
                f"data.source: {where} is not '<image>#<n><TAB><caption>'. Fix: correct the line."
            )
        captions.setdefault(key.rsplit("#", 1)[0].strip(), []).append(_check_caption(text, where))
    out = {}
    for split, list_name in FLICKR_LISTS.items():
        listing = tokens.parent / list_name
        if not listing.is_file():
            if split == "train":
                raise InputError(
                    f"data.source: the Flickr8k folder '{root}' has no {list_name} beside {FLICKR_TOKENS}. "
                    "Fix: unpack Flickr8k_text.zip there."
                )
            continue
        data = CaptionSplit([], [], [])
        for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
            name = line.strip()
            if not name:
                continue
            where = f"'{listing}' line {number} ('{name}')"
            if name not in captions:
                raise _no_caption(where, f"add its captions to {FLICKR_TOKENS}, or remove it from the list")
            fix = f"put the image into '{image_dir}', or remove it from the list"
            data.images.append(_check_image(image_dir / name, where, fix))
            data.captions.append(captions[name])
            data.names.append(f"'{data.images[-1]}' ({where})")
        out[split] = data
    return out


def read_hub_captions(
    source: str, config: str | None, kind: str, image_column: str | None, caption_column: str | None
) -> tuple[dict[str, CaptionSplit], dict, str]:
    """A Hugging Face dataset's splits (rows grouped by image), its tables and its image column."""
    tables = our_splits(read_hub(source, config, kind), source)
    image_column, _ = find_columns(tables["train"].features, image_column, None, source, labelled=False)
    caption_column = caption_column or _caption_column(tables["train"], source, image_column)
    out = {}
    for split, table in tables.items():
        if caption_column not in table.column_names:
            raise InputError(
                f"data.caption_column: the {split} split of '{source}' has no column '{caption_column}' "
                f"(its columns are {', '.join(table.column_names)}). Fix: set data.caption_column."
            )
        out[split] = _hub_split(table, split, source, image_column, caption_column)
    return out, tables, image_column


def _caption_column(table, source: str, image_column: str) -> str:
    import datasets

    names = [c for c in CAPTION_COLUMNS if c in table.column_names]
    for column, feature in table.features.items():
        texts = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        lists = isinstance(feature, (datasets.Sequence, list)) or type(feature).__name__ == "List"
        if column != image_column and (texts or lists):
            names.append(column)
    if not names:
        raise InputError(
            f"data.caption_column: '{source}' has no caption column (columns: "
            f"{', '.join(table.column_names)}). Fix: set data.caption_column to the column of the captions."
        )
    return names[0]


def _hub_split(table, split: str, source: str, image_column: str, caption_column: str) -> CaptionSplit:
    """Rows with a list of captions each, or one caption per row grouped by image (path, else bytes)."""
    import hashlib

    import datasets

    cells = table.select_columns([image_column, caption_column]).cast_column(
        image_column, datasets.Image(decode=False)
    )
    groups: dict = {}
    data = CaptionSplit([], [], [], table=split)
    for start in range(0, len(cells), 1000):
        chunk = cells[start : start + 1000]
        for offset, (image, texts) in enumerate(zip(chunk[image_column], chunk[caption_column], strict=True)):
            row = start + offset
            where = f"row {row} of the {split} split of '{source}'"
            if isinstance(texts, list):
                texts = [t.get("raw") if isinstance(t, dict) else t for t in texts]
                if not texts:
                    raise _no_caption(where, "give it captions, or remove the row")
                for j, text in enumerate(texts):
                    _check_caption(text, f"{where} ({caption_column}[{j}])")
                data.images.append(row)
                data.captions.append(list(texts))
                data.names.append(where)
                continue
            _check_caption(texts, where)
            if image is None:
                raise InputError(f"data.source: {where} has no image. Fix: add it, or remove the row.")
            key = image.get("path") or hashlib.sha1(image.get("bytes") or b"").hexdigest()
            if key not in groups:
                groups[key] = len(data.images)
                data.images.append(row)
                data.captions.append([])
                data.names.append(image.get("path") or where)
            data.captions[groups[key]].append(texts)
    return data


def complete_splits(splits: dict[str, CaptionSplit], val_fraction: float, seed: int, where: str) -> dict:
    """Train, val and test: val carved from train (seeded) when missing, test = val when missing."""
    if "train" not in splits or not splits["train"].images:
        raise InputError(f"data.source: '{where}' has no train images. Fix: add a train split.")
    if "val" not in splits:
        train = splits["train"]
        order = np.random.default_rng(seed).permutation(len(train.images))
        n_val = max(1, round(len(order) * val_fraction))
        splits["val"], splits["train"] = (
            train.subset(np.sort(order[:n_val])),
            train.subset(np.sort(order[n_val:])),
        )
    if "test" not in splits:
        splits["test"] = splits["val"]
    return splits


# --------------------------------------------------------------------------------------- datasets
def _decode(images: Sequence, i: int, image_size: int, channels: int) -> torch.Tensor:
    """Image ``i`` as uint8 ``(C, S, S)``."""
    return torch.from_numpy(decode_image(images[i], image_size, channels)).permute(2, 0, 1)


class TrainCaptions(Dataset):
    """Training items keyed ``(image, caption)``; ``pairs`` decides what one index of an epoch is.

    ``one``: index ``i`` is image ``i`` with a caption drawn from ``(seed, epoch, i)``; ``all``: index
    ``j`` is the ``j``-th (image, caption) pair. :meth:`keys` maps an epoch's indices to keys.
    """

    def __init__(
        self, images: Sequence, captions: Ragged, groups: np.ndarray, image_size: int, channels: int,
        pairs: str, seed: int,
    ):  # fmt: skip
        self.images, self.captions, self.groups = images, captions, groups
        self.image_size, self.channels, self.pairs, self.seed = image_size, channels, pairs, seed
        self.counts = np.diff(groups)  # captions per image, (N,)

    def __len__(self) -> int:
        return len(self.images) if self.pairs == "one" else int(self.groups[-1])

    def keys(self, epoch: int) -> np.ndarray:
        """``(len, 2)``: the ``(image, caption number)`` of every index in this epoch."""
        if self.pairs == "one":
            rng = np.random.default_rng([self.seed, epoch, CHOICE_STREAM])
            draws = rng.random(len(self.counts))  # one per image, independent of batches and processes
            picks = np.minimum((draws * self.counts).astype(np.int64), self.counts - 1)
            return np.stack([np.arange(len(self.counts)), picks], 1)
        image = np.repeat(np.arange(len(self.counts)), self.counts)
        return np.stack([image, np.arange(len(image)) - self.groups[image]], 1)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        i, k = key
        return {
            "image": _decode(self.images, i, self.image_size, self.channels),
            "caption": self.captions[int(self.groups[i]) + k],
        }


class CaptionSampler(ResumableSampler):
    """:class:`ResumableSampler` over a :class:`TrainCaptions`, yielding its ``(image, caption)`` keys."""

    def __iter__(self):
        keys = self.dataset.keys(self.epoch)
        return (tuple(int(v) for v in keys[i]) for i in super().__iter__())


class EvalCaptions(Dataset):
    """Item ``i``: image ``i``, its first caption's ids, all its references as written, its objects."""

    def __init__(
        self, images: Sequence, captions: Ragged, groups: np.ndarray, image_size: int, channels: int,
        references: list[list[str]], objects: list | None,
    ):  # fmt: skip
        self.images, self.captions, self.groups = images, captions, groups
        self.image_size, self.channels = image_size, channels
        self.references, self.objects = references, objects

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": _decode(self.images, i, self.image_size, self.channels),
            "caption": self.captions[int(self.groups[i])],
            "references": self.references[i],
            "index": i,
            "objects": None if self.objects is None else self.objects[i],
        }


class PredictImages(Dataset):
    """Item ``i``: image ``i`` and its name."""

    def __init__(self, images: Sequence, files: list[str], image_size: int, channels: int):
        self.images, self.files, self.image_size, self.channels = images, files, image_size, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": _decode(self.images, i, self.image_size, self.channels), "file": self.files[i]}


def collate_train(items: list[dict], pad_id: int) -> dict:
    """``{"images": uint8 (B, C, H, W), "captions": (B, T)}``, rows longest first."""
    items = sorted(items, key=lambda item: -len(item["caption"]))
    return {
        "images": torch.stack([item["image"] for item in items]),  # (B, C, H, W)
        "captions": pad([item["caption"] for item in items], pad_id),  # (B, T)
    }


def collate_eval(items: list[dict], pad_id: int) -> dict:
    """:func:`collate_train` in the items' order, plus ``references``, ``index`` and ``objects``."""
    return {
        "images": torch.stack([item["image"] for item in items]),  # (B, C, H, W)
        "captions": pad([item["caption"] for item in items], pad_id),  # (B, T)
        "references": [item["references"] for item in items],
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),  # (B,)
        "objects": [item["objects"] for item in items],
    }


def collate_predict(items: list[dict]) -> dict:
    return {
        "images": torch.stack([item["image"] for item in items]),
        "files": [item["file"] for item in items],
    }


# ------------------------------------------------------------------------------------- DataModule
class CaptionDataModule(MeanStd, SpecialTokenIds, CachedDataModule):
    """Images with reference captions: the embedded scenes, COCO, Karpathy splits, Flickr8k or a hub dataset.

    Args:
        source: None for the embedded scenes; a COCO or Flickr8k folder, a Karpathy ``dataset_*.json``,
            a ``save_to_disk`` or hub-layout folder, or a Hugging Face dataset name.
        image_root: for a Karpathy file: the folder its ``filepath``/``filename`` are relative to
            (default: the file's folder).
        image_column: Hugging Face data: the image column (default: the first ``Image`` column).
        caption_column: Hugging Face data: the captions column, a list of texts per row or one text per
            row (default: ``captions``, ``caption``, ``sentences``... or the first text column).
        dataset_config: the Hugging Face dataset configuration.
        train_size: embedded train images.
        val_size: embedded val images.
        test_size: embedded test images.
        image_size: side of the square images the model sees (shorter side resized, centre-cropped);
            the embedded scenes are drawn at this size (at least 16).
        channels: 3 (RGB) or 1 (grey).
        tokenizer: the tokenizer trained on the train captions; default words (``word``) seen at least
            5 times, at most 10000 tokens, the special tokens included.
        lowercase: lower-case captions for the tokenizer (references stay as written).
        max_length: most tokens of a caption, ``<|eos|>`` included (``<|bos|>`` not); longer captions are
            cut, keeping ``<|eos|>``.
        pairs: what a training epoch is: ``one`` caption per image (drawn per epoch) or ``all`` pairs.
        batch_size: training images per batch on each device.
        eval_batch_size: val/test/predict images per batch (default: ``batch_size``).
        num_workers: DataLoader worker processes decoding images.
        mean: per-channel normalisation mean on a 0-1 scale; None: measured on the train split.
        std: per-channel normalisation std; None: measured on the train split.
        val_fraction: share of train images carved off for val when the source has no val split.
        predict_images: a folder or list of image files to caption in ``predict``; default the test split.
        seed: the embedded scenes, the val carve, the training order and the caption draws.
        cache_dir: where the verified, tokenized data is cached; default ``$LIGHTNING_SEQ_CACHE`` or
            ``~/.cache/lightning_seq``.

    Attributes for the model (linked by the CLI): ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``,
    ``image_size``, ``in_channels``, ``pixels`` (always ``normalized``); also ``tokenizer``,
    ``max_target_length``, ``mean``, ``std``, :meth:`normalize` and :meth:`denormalize`.
    """

    CACHE_KIND = "captions"
    pixels = "normalized"

    def __init__(
        self,
        source: str | None = None,
        image_root: str | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
        dataset_config: str | None = None,
        train_size: int = 10_000,
        val_size: int = 500,
        test_size: int = 500,
        image_size: int = 32,
        channels: Literal[1, 3] = 3,
        tokenizer: TokenizerConfig | None = None,
        lowercase: bool = True,
        max_length: int = 32,
        pairs: Literal["one", "all"] = "one",
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        val_fraction: float = 0.05,
        predict_images: str | list[str] | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if isinstance(tokenizer, dict):  # from a checkpoint's hyperparameters
            tokenizer = TokenizerConfig(**tokenizer)
        self.save_hyperparameters()
        plain_hparams(self)
        _check_settings(locals())
        self.source, self.kind = source, source_kind(source)
        if self.kind == "embedded" and image_size < 16:
            raise InputError(
                f"data.image_size: the embedded scenes are at least 16 pixels wide, got {image_size}."
            )
        self.image_root = None if image_root is None else Path(image_root).expanduser()
        self.image_column, self.caption_column, self.dataset_config = (
            image_column,
            caption_column,
            dataset_config,
        )
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.image_size, self.channels = image_size, channels
        self.tokenizer_config = tokenizer or TokenizerConfig(kind="word", vocab_size=10_000, min_frequency=5)
        self.lowercase, self.max_length, self.pairs = lowercase, max_length, pairs
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self._mean, self._std = num_workers, mean, std
        self.val_fraction, self.predict_images, self.seed = val_fraction, predict_images, seed
        self.cache_root = default_cache_dir(cache_dir)
        self._meta: dict | None = None
        self._tokenizer: Tokenizer | None = None
        self._hub: dict | None = None  # Hugging Face data: its tables by split, and their image column
        self._hub_image_column: str | None = None
        self._datasets: dict[str, Dataset] = {}
        self._norm: dict = {}
        self.cache_hit: bool | None = None

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def max_target_length(self) -> int:
        """The longest train caption in tokens, ``<|eos|>`` included (after the ``max_length`` cut)."""
        return self.meta["max_target_length"]

    @property
    def tokenizer(self) -> Tokenizer:
        """The word tokenizer trained on the train captions (the module saves it in checkpoints)."""
        if self._tokenizer is None:
            self.prepare_data()
            self._tokenizer = Tokenizer.from_file(str(self.cache_path / "tokenizer.json"))
        return self._tokenizer

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images ``(..., C, H, W)`` back in ``[0, 1]``."""
        return px.to_unit(images, "normalized", *self._device_stats(images.device))

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def scenes_path(self) -> Path:
        """Where the embedded scenes are written as a COCO captions folder."""
        ident = {
            "version": scenes.GENERATOR_VERSION,
            "image_size": self.image_size,
            "seed": self.seed,
            "sizes": self.sizes,
            "objects": list(scenes.CAPTION_OBJECTS),
            "object_size": list(scenes.CAPTION_OBJECT_SIZE),
            "variants": scenes.NUM_VARIANTS,
        }
        return self.cache_root / "caption_scenes" / key_of(ident)

    @cached_property
    def cache_key(self) -> str:
        if self.kind == "embedded":
            source: object = ["embedded", str(self.scenes_path)]
        elif self.kind == "hub" and not Path(self.source).expanduser().exists():
            source = ["hub", self.source, self.dataset_config]
        else:
            path = Path(self.source).expanduser().resolve()
            files = folder_fingerprint(path) if path.is_dir() else [[path.name, *_stat(path)]]
            root = self.image_root.resolve() if self.image_root is not None else None
            source = [self.kind, str(path), files, str(root), folder_fingerprint(root) if root else None]
        ident = {
            "version": CACHE_VERSION,
            "source": source,
            "columns": [self.image_column, self.caption_column, self.dataset_config],
            "carve": [self.val_fraction, self.seed],
            "image_size": self.image_size,
            "channels": self.channels,
            "tokenizer": self.tokenizer_config.identity(),
            "lowercase": self.lowercase,
            "max_length": self.max_length,
        }
        return key_of(ident)

    def prepare_data(self) -> None:
        if self.kind == "embedded":
            write = lambda out: scenes.fill_coco_captions(out, self.image_size, self.sizes, self.seed)  # noqa: E731
            build_once(self.scenes_path, write, done=MANIFEST)
        super().prepare_data()

    def read_source(self) -> dict[str, CaptionSplit]:
        """The checked train/val/test splits of the source (for hub data, also keeps its tables)."""
        where = self.source or "embedded scenes"
        if self.kind in ("embedded", "coco"):
            splits = read_coco(
                self.scenes_path if self.kind == "embedded" else Path(self.source).expanduser()
            )
        elif self.kind == "karpathy":
            splits = read_karpathy(Path(self.source).expanduser(), self.image_root)
        elif self.kind == "flickr8k":
            splits = read_flickr8k(Path(self.source).expanduser())
        else:
            splits, self._hub, self._hub_image_column = read_hub_captions(
                self.source, self.dataset_config, self.kind, self.image_column, self.caption_column
            )
        return complete_splits(splits, self.val_fraction, self.seed, where)

    def _image_refs(self, data: CaptionSplit) -> Sequence:
        if data.table is None:
            return data.images
        return HubRows(self._hub[data.table], self._hub_image_column, np.asarray(data.images, np.int64))

    def _write_cache(self, out: Path) -> None:
        splits = self.read_source()
        distinct = {s: d for s, d in splits.items() if s != "test" or d is not splits["val"]}
        scan = scan_images(
            {s: self._image_refs(d) for s, d in distinct.items()}, self.image_size, channels=self.channels
        )
        for split, bad in scan["bad"].items():
            if bad:
                i, error = bad[0]
                raise InputError(
                    f"data.source: cannot read the {split} image {splits[split].names[i]}: {error}; "
                    f"{sum(len(b) for b in scan['bad'].values())} of the images are unreadable. "
                    "Fix: replace them, or remove their entries."
                )
        tokenizer = self._train_tokenizer([t for texts in splits["train"].captions for t in texts])
        save_tokenizer(tokenizer, out / "tokenizer.json")
        ids = special_ids(tokenizer)
        meta = {
            "version": CACHE_VERSION,
            "source": self.source,
            "kind": self.kind,
            "vocab_size": tokenizer.get_vocab_size(),
            "special_ids": ids,
            "mean": scan["mean"],
            "std": scan["std"],
            "splits": {},
        }
        for split, data in splits.items():
            lengths = self._write_split(out, split, data, tokenizer, ids)
            meta["splits"][split] = {
                "images": len(data.images),
                "captions": len(lengths),
                "table": data.table,
            }
            if split == "train":
                meta["max_target_length"] = int(lengths.max()) - 1  # without <|bos|>
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def _train_tokenizer(self, texts: list[str]) -> Tokenizer:
        if self.tokenizer_config.is_file or not self.lowercase:
            return build_tokenizer(self.tokenizer_config, texts)
        tokenizer = build_tokenizer(self.tokenizer_config, [t.lower() for t in texts])
        tokenizer.normalizer = normalizers.Lowercase()  # encoding lower-cases too
        return tokenizer

    def _write_split(
        self, out: Path, split: str, data: CaptionSplit, tokenizer: Tokenizer, ids: dict
    ) -> np.ndarray:
        """Write the token rows ``[bos, ..., eos]`` of every caption, the images and references; returns
        the rows' lengths."""
        texts = [t for captions in data.captions for t in captions]
        rows = [
            [ids["bos"], *words[: self.max_length - 1], ids["eos"]]
            for words in encode_texts(tokenizer, texts)
        ]
        write_ragged(out, f"{split}.captions", rows, id_dtype(tokenizer.get_vocab_size()))
        groups = np.zeros(len(data.captions) + 1, np.int64)
        np.cumsum([len(c) for c in data.captions], out=groups[1:])
        np.save(out / f"{split}.groups.npy", groups)
        index = {
            "images": data.images,
            "files": data.images if data.table is None else data.names,
            "references": data.captions,
            "objects": data.objects,
        }
        (out / f"{split}.json").write_text(json.dumps(index), encoding="utf-8")
        return np.fromiter((len(r) for r in rows), np.int64, len(rows))

    # ------------------------------------------------------------------------------ the datasets
    def _split_files(self, split: str) -> tuple[Sequence, Ragged, np.ndarray, dict]:
        table = self.meta["splits"][split]["table"]  # (prepares the cache if need be)
        index = json.loads((self.cache_path / f"{split}.json").read_text(encoding="utf-8"))
        images = index["images"]
        if table is not None:
            if self._hub is None:
                self._hub = our_splits(read_hub(self.source, self.dataset_config, self.kind), self.source)
                self._hub_image_column = find_columns(
                    self._hub["train"].features, self.image_column, None, self.source, labelled=False
                )[0]
            images = HubRows(self._hub[table], self._hub_image_column, np.asarray(images, np.int64))
        groups = np.load(self.cache_path / f"{split}.groups.npy")
        return images, Ragged(self.cache_path, f"{split}.captions"), groups, index

    def split_dataset(self, split: str, train: bool = False) -> Dataset:
        """The items of a split: training items (:class:`TrainCaptions`) or evaluation items."""
        images, captions, groups, index = self._split_files(split)
        if train:
            return TrainCaptions(
                images, captions, groups, self.image_size, self.channels, self.pairs, self.seed
            )
        return EvalCaptions(
            images, captions, groups, self.image_size, self.channels, index["references"], index["objects"]
        )

    def predict_dataset(self) -> PredictImages:
        """``predict_images`` (a folder, searched recursively, or a list of files), or the test split."""
        if self.predict_images is None:
            images, _, _, index = self._split_files("test")
            return PredictImages(images, index["files"], self.image_size, self.channels)
        given = [self.predict_images] if isinstance(self.predict_images, str) else list(self.predict_images)
        files: list[str] = []
        for name in given:
            path = Path(name).expanduser()
            if path.is_dir():
                files.extend(str(p) for p in image_files(path))
            elif path.is_file():
                files.append(str(path))
            else:
                raise InputError(f"data.predict_images: '{name}' does not exist. Fix: check the path.")
        if not files:
            raise InputError(f"data.predict_images: no image files in {given}. Fix: point it at images.")
        return PredictImages(files, files, self.image_size, self.channels)

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        for split in splits:
            if split not in self._datasets:
                self._datasets[split] = self.split_dataset(split, train=split == "train")
        if stage == "fit":
            world = rank_and_world(self.trainer)[1]
            size = len(self._datasets["train"])
            if size < self.batch_size * world:
                raise InputError(
                    f"data.batch_size: the train split has {size} examples, fewer than one batch of "
                    f"{self.batch_size} x {world} devices. Fix: lower data.batch_size or add images."
                )
            self._device_stats(torch.device("cpu"))  # checks data.mean and data.std before training
        self.copy_to_run(stage, {"tokenizer.json": "tokenizer.json"})

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._datasets:
            self._datasets[split] = self.split_dataset(split, train=shuffle)
        dataset = self._datasets[split]
        if shuffle:
            collate = _Collate(collate_train, self.pad_id)
            return batched_loader(self, dataset, True, collate, sampler_class=CaptionSampler)
        collate = _Collate(collate_eval, self.pad_id)
        return batched_loader(self, dataset, False, collate, self.eval_batch_size, sampler_class=ShardSampler)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.predict_dataset()
        return batched_loader(
            self, dataset, False, collate_predict, self.eval_batch_size, sampler_class=ShardSampler
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: uint8 images -> floats normalised with the mean and std."""
        if isinstance(batch, dict) and "images" in batch:
            batch["images"] = self.normalize(batch["images"])
        return batch

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {
            "cache_key": self.cache_key,
            "vocab_size": self.vocab_size,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        checks = (
            ("vocab_size", "data.tokenizer", "the same data.source and data.tokenizer settings"),
            ("image_size", "data.image_size", "the same data.image_size"),
            ("in_channels", "data.channels", "the same data.channels"),
        )
        for key, setting, fix in checks:
            now = getattr(self, key)
            if state.get(key) not in (None, now):
                raise InputError(
                    f"{setting}: the checkpoint was trained with {key} {state[key]}, but this data has "
                    f"{now}. Fix: use {fix} as the run that wrote the checkpoint."
                )


class _Collate:
    """A picklable ``collate(items, pad_id)`` for worker processes."""

    def __init__(self, fn, pad_id: int):
        self.fn, self.pad_id = fn, pad_id

    def __call__(self, items: list[dict]) -> dict:
        return self.fn(items, self.pad_id)


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _check_settings(args: dict) -> None:
    """The constructor's settings (``args``: its ``locals()``); errors name the field."""
    for name in ("train_size", "val_size", "test_size", "batch_size", "eval_batch_size", "max_length"):
        value = args[name]
        if value is not None and value < 1:
            raise InputError(f"data.{name}: expected a positive integer, got {value}.")
    if args["max_length"] < 2:
        raise InputError(
            f"data.max_length: expected at least 2 (a word and <|eos|>), got {args['max_length']}."
        )
    for name, allowed in (("pairs", ("one", "all")), ("channels", (1, 3))):
        if args[name] not in allowed:
            raise InputError(f"data.{name}: expected {' or '.join(map(repr, allowed))}, got {args[name]!r}.")
    if args["image_size"] < 8:
        raise InputError(f"data.image_size: expected at least 8 pixels, got {args['image_size']}.")
    if not 0.0 < args["val_fraction"] < 0.5:
        raise InputError(f"data.val_fraction: expected a fraction in (0, 0.5), got {args['val_fraction']}.")
    if args["num_workers"] < 0:
        raise InputError(f"data.num_workers: expected 0 or more, got {args['num_workers']}.")

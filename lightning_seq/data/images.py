"""ImageDataModule: labelled images -> verified, cached index -> uint8 batches -> augmented on device.

A ``dataset`` is one of:

* ``"shapes"`` (the default): procedural scenes of coloured shapes (:mod:`.scenes`), written once
  into the cache as a Hugging Face ``imagefolder`` with ``metadata.jsonl`` files and then read like
  any such folder; labelled by the main object's ``shape`` or ``color`` (``label_by``).
* a local folder. Either one sub-folder per class (``cat/1.png``, ``dog/2.jpg``), or an
  ``imagefolder`` whose ``metadata.jsonl``/``.csv``/``.parquet`` has a ``file_name`` column and a
  label column. Both may sit under split folders ``train/``, ``val/``/``valid/``/``validation/``/``dev/``
  and ``test/`` (only the first folder level names splits; file names never do).
* a Hugging Face dataset name (``cifar10``, ``mnist``, ``fashion_mnist``...) or a local folder laid out
  like a hub repository (``data/train-00000-of-00001.parquet``...) or written by ``save_to_disk``.

Splits: the source's train / validation / test; a missing validation split is carved from train
(``val_fraction``, seeded), a missing test split reuses validation.

``prepare_data`` opens every image once (in parallel) to find unreadable files, to tell whether all
images are grey (``in_channels`` 1) and to measure the per-channel mean and std of the train split
at ``image_size``. It writes what it found under ``cache_dir/images/<key>/``: ``meta.json``, and per
split the kept rows and labels (``<split>.npz``) and, for local files, their paths. ``setup`` reads
only those files (and, for hub datasets, the dataset's own memory-mapped cache).

Batches are ``{"image": uint8 (B, C, H, W), "label": int64 (B,)}`` out of the DataLoader;
:meth:`ImageDataModule.on_after_batch_transfer` turns the images into normalised floats on the
device, augments training batches and adds ``"target"`` soft targets ``(B, num_classes)`` when
MixUp or CutMix is on.
"""

import io
import json
import os
from collections.abc import Sequence
from functools import cached_property
from multiprocessing import get_context
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from lightning_seq.data import scenes
from lightning_seq.data.augment import BatchAugment, ImageAugment
from lightning_seq.data.cache import build_once, default_cache_dir, key_of
from lightning_seq.data.resumable import ResumableLoader, ResumableSampler, rank_and_world, trainer_epoch
from lightning_seq.data.sources import SPLIT_ALIASES, SPLITS, _first_line
from lightning_seq.errors import InputError
from lightning_seq.utils import plain_hparams

CACHE_VERSION = 1
EMBEDDED = "shapes"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
LABEL_NAMES = ("label", "labels")
HUB_FORMATS = {".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tar", ".zip"}  # a hub-style folder's files
GREY_BANDS = {"1", "L", "I", "F"}
SCAN_CHUNK = 256  # images per verification task


def image_extensions() -> set[str]:
    """The file extensions Hugging Face's ``imagefolder`` reads (``.png``, ``.jpg``, ``.webp``...)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {ext.lower() for ext in ImageFolder.EXTENSIONS}


# ------------------------------------------------------------------------------------------ decoding
ImageRef = str | dict  # a file path, or a Hugging Face image cell {"bytes": ..., "path": ...}


def open_image(ref: ImageRef, draft: tuple[str, int] | None = None) -> Image.Image:
    """Open and fully decode an image (truncated or corrupt files raise here), upright per its EXIF.

    Args:
        ref: a path, or ``{"bytes", "path"}`` as stored by ``datasets.Image(decode=False)``.
        draft: ``(mode, size)``: let JPEG decode straight at a reduced scale no smaller than ``size``.
    """
    if isinstance(ref, dict):
        data = ref.get("bytes")
        source = io.BytesIO(data) if data is not None else ref.get("path")
    else:
        source = ref
    image = Image.open(source)
    try:
        if draft is not None and image.format == "JPEG":
            image.draft(draft[0], (draft[1], draft[1]))
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except BaseException:
        image.close()
        raise
    return image


def is_grey(image: Image.Image) -> bool:
    """Whether an image has one intensity band (``L``, ``LA``, ``I;16``, ``1``...): no palette, no colour."""
    return set(image.getbands()) - {"A"} <= GREY_BANDS


def to_array(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """``(S, S, C)`` uint8: converted to RGB or L, its central square resized to ``S`` x ``S`` if need be."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I"):  # 16/32-bit intensities: 16-bit range down to 8 bits
        image = Image.fromarray((np.asarray(image, np.float32) / 257).clip(0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != mode:
        image = image.convert(mode)
    width, height = image.size
    if (width, height) != (image_size, image_size):
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    array = np.array(image, dtype=np.uint8)  # (S, S) or (S, S, 3), writable
    return array[:, :, None] if array.ndim == 2 else array


def decode_image(ref: ImageRef, image_size: int, channels: int) -> np.ndarray:
    """A stored image as ``(S, S, C)`` uint8, exactly as training reads it."""
    mode = "L" if channels == 1 else "RGB"
    with open_image(ref, draft=(mode, image_size)) as image:
        return to_array(image, image_size, channels)


class HubRows:
    """The image cells of some rows of a Hugging Face dataset, as a sequence; pickles cheaply (memory map)."""

    def __init__(self, table, column: str, rows: np.ndarray):
        import datasets

        self.table = table.select_columns([column]).cast_column(column, datasets.Image(decode=False))
        self.column, self.rows = column, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.table[int(self.rows[i])][self.column]

    def many(self, indices: Sequence[int]) -> list[dict]:
        """Several cells in one read."""
        return self.table[[int(self.rows[i]) for i in indices]][self.column]


class ImageItems(Dataset):
    """Item ``i``: ``{"image": uint8 (C, S, S), "label": int}``, decoded with PIL in the worker that asks.

    Args:
        images: paths or image cells (:class:`HubRows`), one per item.
        labels: class ids, ``(N,)``.
        image_size: side ``S`` of the square images.
        channels: 1 (grey) or 3 (RGB).
    """

    def __init__(self, images: Sequence, labels: np.ndarray, image_size: int, channels: int):
        self.images, self.labels = images, labels
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return self._item(self.images[i], i)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        """A batch at once: hub rows are read from Arrow in one call."""
        refs = (
            self.images.many(indices)
            if isinstance(self.images, HubRows)
            else [self.images[i] for i in indices]
        )
        return [self._item(ref, i) for ref, i in zip(refs, indices, strict=True)]

    def _item(self, ref: ImageRef, i: int) -> dict:
        array = decode_image(ref, self.image_size, self.channels)  # (S, S, C)
        return {"image": torch.from_numpy(array).permute(2, 0, 1), "label": int(self.labels[i])}  # (C, S, S)


# ------------------------------------------------------------------------------------------ sources
def source_kind(dataset: str) -> str:
    """What a dataset names: ``embedded``, ``folder`` (of images), ``disk`` (``save_to_disk``) or ``hub``.

    Raises:
        InputError: the dataset looks like a local path but is not a folder.
    """
    if dataset == EMBEDDED:
        return "embedded"
    path = Path(dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "disk"
        if any(_image_files(path)):
            return "folder"
        if not any(p.suffix.lower() in HUB_FORMATS for p in _walk(path)):
            raise InputError(
                f"data.dataset: folder '{dataset}' holds no images (.png, .jpg, ...) and no dataset files "
                f"({', '.join(sorted(HUB_FORMATS))}). Fix: point data.dataset at the folder with the images."
            )
        return "hub"
    if path.exists():
        raise InputError(
            f"data.dataset: '{dataset}' is a file; expected a folder of images, a Hugging Face dataset name "
            f"or '{EMBEDDED}'. Fix: point data.dataset at the folder that holds the images."
        )
    if dataset.startswith((".", "/", "~")) or (os.sep in dataset.rstrip(os.sep) and path.parent.is_dir()):
        raise InputError(f"data.dataset: folder '{dataset}' does not exist. Fix: check the path.")
    return "hub"


def _walk(root: Path):
    """Every file below ``root``, skipping hidden files and folders (``.git``, ``__MACOSX``...)."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
        for name in sorted(files):
            if not name.startswith((".", "__")):
                yield Path(folder) / name


def _image_files(root: Path):
    extensions = image_extensions()
    return (p for p in _walk(root) if p.suffix.lower() in extensions)


def _split_of(relative: Path) -> tuple[str, tuple[str, ...]]:
    """A file's split (its first folder when that is a split name, else train) and its path below it."""
    if len(relative.parts) > 1:
        first = relative.parts[0].lower()
        for split, aliases in SPLIT_ALIASES.items():
            if first in aliases:
                return split, relative.parts[1:]
    return "train", relative.parts


def folder_fingerprint(root: Path) -> list:
    """Names, sizes and modification times of every file below a folder (contents are not read)."""
    return [[str(p.relative_to(root)), st.st_size, st.st_mtime_ns] for p in _walk(root) for st in [p.stat()]]


def read_folder(root: Path, label_column: str | None) -> tuple[dict, str | None]:
    """A local folder's splits as Hugging Face datasets, and the label column to use.

    With metadata files: ``datasets.load_dataset("imagefolder")`` on explicit per-split file lists
    (so that split folders, not keywords in file names, decide the split). Without: class
    sub-folders, checked here, since ``imagefolder`` silently drops labels when there is one class
    or images sit at several depths.
    """
    import datasets

    extensions = image_extensions()
    files: dict[str, list[str]] = {}
    metadata: dict[str, list[str]] = {}
    for path in _walk(root):
        split, _ = _split_of(path.relative_to(root))
        if path.suffix.lower() in extensions:
            files.setdefault(split, []).append(str(path))
        elif path.name in METADATA_FILES:
            metadata.setdefault(split, []).append(str(path))
    if not files:
        raise InputError(
            f"data.dataset: folder '{root}' holds no images ({', '.join(sorted(extensions)[:8])}, ...). "
            "Fix: point data.dataset at a folder with one sub-folder of images per class."
        )
    if metadata:
        quiet = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # "downloading" local files: noise
        try:
            dsd = datasets.load_dataset(
                "imagefolder", data_files={s: files.get(s, []) + metadata[s] for s in metadata}
            )
        except Exception as err:
            raise InputError(
                f"data.dataset: could not read the image folder '{root}' with its metadata files "
                f"({', '.join(sorted({Path(m).name for ms in metadata.values() for m in ms}))}): "
                f"{_first_line(err)}. Fix: give every metadata file a file_name column with paths relative "
                "to it, and the same columns in every split."
            ) from None
        finally:
            if quiet:
                datasets.enable_progress_bars()
        return dict(dsd), label_column
    return _class_folders(root, files), "label"


def _class_folders(root: Path, files: dict[str, list[str]]) -> dict:
    import datasets

    labels: dict[str, list[str]] = {}
    for split, paths in files.items():
        for path in paths:
            _, below = _split_of(Path(path).relative_to(root))
            if len(below) != 2:
                raise InputError(
                    f"data.dataset: '{path}' is not in a class folder: expected one sub-folder per class, "
                    f"'{root}/<class>/<image>' (optionally under train/, val/ and test/), or a "
                    "metadata.jsonl with a file_name and a label column. Fix: move the image into its "
                    "class's folder."
                )
            labels.setdefault(split, []).append(below[0])
    classes = sorted({c for names in labels.values() for c in names})
    if len(classes) < 2:
        raise InputError(
            f"data.dataset: folder '{root}' has a single class folder '{classes[0]}'; a classifier needs at "
            "least two. Fix: add a sub-folder of images for each other class."
        )
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=classes)}
    )
    return {
        split: datasets.Dataset.from_dict({"image": paths, "label": labels[split]}, features=features)
        for split, paths in files.items()
    }


def read_hub(name: str, config: str | None, kind: str = "hub") -> dict:
    """A Hugging Face dataset's splits (a hub name, a hub-layout folder or a ``save_to_disk`` folder)."""
    import datasets

    try:
        dsd = datasets.load_from_disk(name) if kind == "disk" else datasets.load_dataset(name, config)
    except Exception as err:
        raise InputError(
            f"data.dataset: '{name}' is not a local folder of images, and loading it as a Hugging Face "
            f"dataset failed: {_first_line(err)}. Fix: check the path, or the dataset name, "
            "data.dataset_config and the network."
        ) from None
    if isinstance(dsd, datasets.Dataset):
        return {"train": dsd}
    return dict(dsd)


def our_splits(dsd: dict, where: str) -> dict:
    """Map the source's split names to train / val / test."""
    found = {}
    for ours, aliases in SPLIT_ALIASES.items():
        theirs = next((s for s in dsd if s.lower() in aliases), None)
        if theirs is not None:
            found[ours] = dsd[theirs]
    if "train" not in found:
        raise InputError(
            f"data.dataset: '{where}' has no train split (it has {', '.join(dsd) or 'none'}). "
            "Fix: choose a dataset or config with a train split, or put the images in a train/ folder."
        )
    return found


def find_columns(features, image_column: str | None, label_column: str | None, where: str) -> tuple[str, str]:
    """The image column (the first ``datasets.Image``) and label column (the first ``ClassLabel``, or
    one named label/labels), unless given."""
    import datasets

    columns = ", ".join(features)
    if image_column is None:
        image_column = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise InputError(
                f"data.image_column: '{where}' has no image column (columns: {columns}). "
                "Fix: set data.image_column to the column that holds the images."
            )
    elif image_column not in features or not isinstance(features[image_column], datasets.Image):
        raise InputError(
            f"data.image_column: '{where}' has no image column '{image_column}' (columns: {columns}). "
            "Fix: set data.image_column to one of them."
        )
    if label_column is None:
        label_column = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_column = label_column or next((c for c in LABEL_NAMES if c in features), None)
        if label_column is None:
            raise InputError(
                f"data.label_column: '{where}' has no label column (columns: {columns}). "
                "Fix: set data.label_column to the column that holds the class."
            )
    elif label_column not in features:
        raise InputError(
            f"data.label_column: '{where}' has no column '{label_column}'; its columns are {columns}. "
            "Fix: set data.label_column to one of them."
        )
    return image_column, label_column


def class_ids(splits: dict, column: str, where: str, fixed: Sequence[str] | None = None):
    """Class names and each split's labels as ids ``(N,)``; an unlabelled split (all -1) is dropped."""
    import datasets

    feature = splits["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        labels = {s: np.asarray(list(ds[column]), dtype=np.int64) for s, ds in splits.items()}
        for split in [s for s, y in labels.items() if len(y) and (y < 0).all() and s != "train"]:
            del labels[split]  # e.g. a hub test split without labels: validation stands in
        for split, y in labels.items():
            if len(y) and (y.min() < 0 or y.max() >= len(classes)):
                raise InputError(
                    f"data.label_column: the {split} split of '{where}' has labels outside "
                    f"0..{len(classes) - 1} in column '{column}'. Fix: remove the unlabelled rows, or choose "
                    "another label column."
                )
        return classes, labels
    if not isinstance(feature, datasets.Value) or not (
        feature.dtype in ("string", "large_string", "bool") or "int" in feature.dtype
    ):
        raise InputError(
            f"data.label_column: column '{column}' of '{where}' holds {feature}, not class names or ids. "
            "Fix: choose a column of strings or integers."
        )
    values = {s: list(ds[column]) for s, ds in splits.items()}
    if any(v is None for vs in values.values() for v in vs):
        raise InputError(
            f"data.label_column: column '{column}' of '{where}' has empty cells. Fix: fill them in."
        )
    if fixed is None:
        distinct = sorted({v for vs in values.values() for v in vs})
        classes = [str(v) for v in distinct]
        index = {v: i for i, v in enumerate(distinct)}
    else:
        classes = list(fixed)
        index = {v: i for i, v in enumerate(classes)}
        unknown = sorted({v for vs in values.values() for v in vs} - set(index))
        if unknown:
            raise InputError(f"data.label_column: unexpected classes {unknown} in '{where}'.")
    return classes, {s: np.asarray([index[v] for v in vs], dtype=np.int64) for s, vs in values.items()}


# ------------------------------------------------------------------------------------- verification
_SCAN_IMAGES: dict = {}  # split -> sequence of image refs, for the verification workers


def _init_scan(images: dict) -> None:
    global _SCAN_IMAGES
    _SCAN_IMAGES = images


def _scan_chunk(task: tuple[str, int, int, int, bool]) -> dict:
    """Decode images ``[start, stop)`` of a split: unreadable ones, greyness and pixel sums (RGB, 0-255)."""
    split, start, stop, image_size, stats = task
    images = _SCAN_IMAGES[split]
    total, total_sq, pixels = np.zeros(3, np.int64), np.zeros(3, np.int64), 0
    bad, grey = [], True
    refs = images.many(range(start, stop)) if isinstance(images, HubRows) else images[start:stop]
    for i, ref in zip(range(start, stop), refs, strict=True):
        try:
            with open_image(ref, draft=("RGB", image_size)) as image:
                grey = grey and is_grey(image)
                array = to_array(image, image_size, 3) if stats else None
        except Exception as err:
            bad.append((i, _first_line(err)))
            continue
        if array is not None:
            flat = array.reshape(-1, 3).astype(np.int64)  # (S * S, 3)
            total += flat.sum(0)
            total_sq += (flat * flat).sum(0)
            pixels += flat.shape[0]
    return {"split": split, "bad": bad, "grey": grey, "sum": total, "sum_sq": total_sq, "pixels": pixels}


def scan_images(
    images: dict, image_size: int, stats_split: str = "train", processes: int | None = None
) -> dict:
    """Open every image once (in parallel for many): unreadable ones per split, greyness, train mean/std.

    Returns:
        ``{"bad": {split: [(index, error)]}, "grey": bool, "mean": [3], "std": [3]}``, on a 0-1 scale.
    """
    tasks = [
        (split, start, min(start + SCAN_CHUNK, len(refs)), image_size, split == stats_split)
        for split, refs in images.items()
        for start in range(0, len(refs), SCAN_CHUNK)
    ]
    processes = processes or scenes.cpu_count()
    if processes > 1 and len(tasks) > 4:
        context = get_context(scenes.start_method())
        with context.Pool(min(processes, len(tasks)), _init_scan, (images,)) as pool:
            results = list(pool.imap(_scan_chunk, tasks))
    else:
        _init_scan(images)
        results = [_scan_chunk(t) for t in tasks]
        _init_scan({})
    total = sum(r["sum"] for r in results) / 255.0
    total_sq = sum(r["sum_sq"] for r in results) / 255.0**2
    pixels = max(1, sum(r["pixels"] for r in results))
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    bad: dict[str, list] = {split: [] for split in images}
    for r in results:
        bad[r["split"]].extend(r["bad"])
    return {"bad": bad, "grey": all(r["grey"] for r in results), "mean": mean.tolist(), "std": std.tolist()}


# --------------------------------------------------------------------------------------- DataModule
class ImageDataModule(L.LightningDataModule):
    """Image classification data: the embedded shapes, a local folder, or a Hugging Face dataset.

    Args:
        dataset: ``"shapes"`` (embedded), a local folder, or a Hugging Face dataset name.
        image_size: side of the square images the model sees; others are resized (shorter side) and
            centre-cropped.
        label_by: what the embedded shapes are labelled by: ``shape`` or ``color``.
        label_column: the label column; by default the first ``ClassLabel`` column, or one named
            label/labels (class sub-folders give ``label``).
        image_column: the image column; by default the first ``datasets.Image`` column.
        dataset_config: the Hugging Face dataset configuration, if it has several.
        num_train: embedded training images.
        num_val: embedded validation images.
        num_test: embedded test images.
        seed: the embedded scenes, and the carving of validation from train.
        val_fraction: share of train carved off for validation when the source has no validation split.
        batch_size: training images per batch on each device.
        eval_batch_size: validation/test/predict images per batch (default: ``batch_size``).
        num_workers: DataLoader worker processes decoding images.
        mean: per-channel normalisation mean on a 0-1 scale; None: measured on the train split.
        std: per-channel normalisation std; None: measured on the train split.
        augment: training augmentation (random resized crop and flip by default); see :class:`ImageAugment`.
        skip_bad_images: drop unreadable images with a warning instead of stopping with an error.
        cache_dir: where the verified index and statistics are cached; default ``$LIGHTNING_SEQ_CACHE``
            or ``~/.cache/lightning_seq``.
        classes: the class names a model was trained with; when given, the data must have the same
            classes (in the same order).
    """

    def __init__(
        self,
        dataset: str = EMBEDDED,
        image_size: int = 32,
        label_by: str = "shape",
        label_column: str | None = None,
        image_column: str | None = None,
        dataset_config: str | None = None,
        num_train: int = 12000,
        num_val: int = 2000,
        num_test: int = 2000,
        seed: int = 0,
        val_fraction: float = 0.1,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: ImageAugment | None = None,
        skip_bad_images: bool = False,
        cache_dir: str | None = None,
        classes: list[str] | None = None,
    ):
        super().__init__()
        if isinstance(augment, dict):  # from a checkpoint's hyperparameters
            augment = ImageAugment(**augment)
        # the class names go in checkpoints through state_dict(); the model has them as hyperparameters
        self.save_hyperparameters(ignore=["classes"])
        plain_hparams(self)
        if image_size < 8:
            raise InputError(f"data.image_size: expected at least 8 pixels, got {image_size}.")
        if label_by not in ("shape", "color"):
            raise InputError(f"data.label_by: expected 'shape' or 'color', got '{label_by}'.")
        for name, value in dict(
            num_train=num_train, num_val=num_val, num_test=num_test, batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,
        ).items():  # fmt: skip
            if value < 1:
                raise InputError(f"data.{name}: expected a positive integer, got {value}.")
        if not 0.0 < val_fraction < 0.5:
            raise InputError(f"data.val_fraction: expected a fraction in (0, 0.5), got {val_fraction}.")
        if num_workers < 0:
            raise InputError(f"data.num_workers: expected 0 or more, got {num_workers}.")
        self.dataset, self.dataset_config = dataset, dataset_config
        self.kind = source_kind(dataset)
        self.image_size, self.label_by = image_size, label_by
        self.label_column, self.image_column = label_column, image_column
        self.sizes = {"train": num_train, "validation": num_val, "test": num_test}
        self.seed, self.val_fraction = seed, val_fraction
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self._mean, self._std = mean, std
        self.augment = augment or ImageAugment()
        self.skip_bad_images = skip_bad_images
        self.cache_root = default_cache_dir(cache_dir)
        self.expected_classes = classes
        self._meta: dict | None = None
        self._datasets: dict[str, ImageItems] = {}
        self._hub: dict | None = None
        self._batch_augment: BatchAugment | None = None
        self._norm: dict = {}
        self.cache_hit: bool | None = None  # after preparation: whether the cache already existed

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def num_classes(self) -> int:
        return len(self.meta["classes"])

    @property
    def classes(self) -> list[str]:
        """Class names; class ``i`` is ``classes[i]``."""
        return list(self.meta["classes"])

    @property
    def in_channels(self) -> int:
        """1 when every image of the source is grey, else 3."""
        return self.meta["in_channels"]

    @property
    def mean(self) -> torch.Tensor:
        """Per-channel mean ``(C,)`` on a 0-1 scale: ``data.mean``, or measured on the train split."""
        return self._stat("mean", self._mean)

    @property
    def std(self) -> torch.Tensor:
        """Per-channel standard deviation ``(C,)``: ``data.std``, or measured on the train split."""
        return self._stat("std", self._std)

    def _stat(self, name: str, given: list[float] | None) -> torch.Tensor:
        channels = self.in_channels
        values = list(given) if given is not None else self.meta[name][:channels]
        if len(values) == 1:
            values = values * channels
        if len(values) != channels:
            raise InputError(
                f"data.{name}: expected {channels} values (one per channel) or one, got {len(values)}."
            )
        if name == "std" and min(values) <= 0:
            raise InputError(f"data.std: expected positive values, got {values}.")
        return torch.tensor(values, dtype=torch.float32)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``(..., C, H, W)`` model inputs back to images in ``[0, 1]``."""
        mean, std = (t.to(images.dtype).view(-1, 1, 1) for t in self._device_stats(images.device))
        return (images * std + mean).clamp(0.0, 1.0)

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def scenes_path(self) -> Path:
        """Where the embedded scenes are written (keyed by everything that shapes them)."""
        ident = [scenes.GENERATOR_VERSION, self.image_size, self.seed, self.sizes]
        return self.cache_root / "scenes" / key_of(ident)

    @cached_property
    def cache_key(self) -> str:
        if self.kind == "embedded":
            source: object = ["embedded", str(self.scenes_path), self.label_by]
        elif self.kind == "hub":
            path = Path(self.dataset).expanduser()
            local = folder_fingerprint(path) if path.is_dir() else None
            source = ["hub", str(path.resolve()) if local else self.dataset, self.dataset_config, local]
        else:
            path = Path(self.dataset).expanduser().resolve()
            source = [self.kind, str(path), folder_fingerprint(path)]
        ident = {
            "version": CACHE_VERSION,
            "source": source,
            "columns": [self.image_column, self.label_column],
            "image_size": self.image_size,
            "carve": [self.val_fraction, self.seed],
        }
        return key_of(ident)

    @property
    def cache_path(self) -> Path:
        return self.cache_root / "images" / self.cache_key

    @property
    def meta(self) -> dict:
        """The verified index's description; builds the cache on first use (safe across processes)."""
        if self._meta is None:
            self._build_cache()
            meta = json.loads((self.cache_path / "meta.json").read_text())
            self._check_bad(meta)
            self._check_classes(meta["classes"])
            self._meta = meta
        return self._meta

    def prepare_data(self) -> None:
        """Verify the source and write its index and statistics to the cache, unless there already.

        Raises:
            InputError: some images are unreadable and ``skip_bad_images`` is off.
        """
        self.meta  # noqa: B018 - builds the cache, checks the unreadable images and the classes

    def _build_cache(self) -> None:
        hit = build_once(self.cache_path, self._write_cache)
        self.cache_hit = hit if self.cache_hit is None else self.cache_hit and hit

    def _write_embedded(self) -> None:
        """Write the embedded scenes once (another process may be doing it: the lock waits for it)."""
        build_once(
            self.scenes_path,
            lambda out: scenes.fill_scene_folder(out, self.image_size, self.sizes, self.seed),
            done="train/metadata.jsonl",
        )

    def _read_source(self) -> tuple[dict, str, str, list[str] | None]:
        """The source's train/val/test splits, its image and label columns, and fixed class names."""
        label_column, fixed = self.label_column, None
        if self.kind == "embedded":
            self._write_embedded()
            label_column = label_column or self.label_by
            fixed = list(scenes.SHAPES) if label_column == "shape" else None
            fixed = list(scenes.COLORS) if label_column == "color" else fixed
            dsd, label_column = read_folder(self.scenes_path, label_column)
        elif self.kind == "folder":
            dsd, found = read_folder(Path(self.dataset).expanduser(), label_column)
            label_column = label_column or found
        else:
            dsd = read_hub(self.dataset, self.dataset_config, self.kind)
        splits = our_splits(dsd, self.dataset)
        if self.kind in ("hub", "disk"):
            self._hub = splits  # split_dataset reads the same splits: no second load
        image_column, label_column = find_columns(
            splits["train"].features, self.image_column, label_column, self.dataset
        )
        return splits, image_column, label_column, fixed

    def _write_cache(self, out: Path) -> None:
        splits, image_column, label_column, fixed = self._read_source()
        classes, labels = class_ids(splits, label_column, self.dataset, fixed)
        if len(classes) < 2:
            raise InputError(
                f"data.label_column: '{self.dataset}' has a single class ({classes}) in column "
                f"'{label_column}'; a classifier needs at least two. Fix: choose another label column."
            )
        rows = {s: np.arange(len(splits[s])) for s in labels}
        source_split = {s: s for s in labels}
        if "val" not in rows:  # carve validation from train, the same way every time
            order = np.random.default_rng(self.seed).permutation(rows["train"])
            n_val = max(1, round(len(order) * self.val_fraction))
            rows["val"], rows["train"] = np.sort(order[:n_val]), np.sort(order[n_val:])
            labels["val"], source_split["val"] = labels["train"], "train"
        local = self.kind in ("embedded", "folder")
        images = {}
        for split in ("train", "val", "test"):
            if split in rows:
                cells = HubRows(splits[source_split[split]], image_column, rows[split])
                images[split] = [c["path"] for c in cells.many(range(len(cells)))] if local else cells
        scan = scan_images(images, self.image_size)
        bad = [
            {"split": split, "row": int(rows[split][i]), "error": err,
             "name": _name(images[split][i], self.dataset, split, rows[split][i])}
            for split, items in scan["bad"].items()
            for i, err in items
        ]  # fmt: skip
        meta = {
            "version": CACHE_VERSION,
            "dataset": self.dataset,
            "kind": self.kind,
            "image_column": image_column,
            "label_column": label_column,
            "classes": classes,
            "in_channels": 1 if scan["grey"] else 3,
            "image_size": self.image_size,
            "mean": scan["mean"],
            "std": scan["std"],
            "splits": {},
            "bad": bad,
        }
        for split in SPLITS:
            src = split if split in images else "val"  # no test split: validation stands in
            keep = np.ones(len(images[src]), dtype=bool)
            keep[[i for i, _ in scan["bad"][src]]] = False
            kept_rows = rows[src][keep]
            np.savez(out / f"{split}.npz", rows=kept_rows, labels=labels[src][kept_rows])
            if local:
                paths = [p for p, k in zip(images[src], keep, strict=True) if k]
                (out / f"{split}.paths").write_text("".join(p + "\n" for p in paths), encoding="utf-8")
            meta["splits"][split] = {"source_split": source_split[src], "size": int(keep.sum())}
        (out / "meta.json").write_text(json.dumps(meta, indent=2))

    def _check_bad(self, meta: dict) -> None:
        bad = meta["bad"]
        if not bad:
            return
        first = bad[0]
        if not self.skip_bad_images:
            raise InputError(
                f"data.dataset: cannot read image {first['name']} ({first['error']}); {len(bad)} of the "
                "images are unreadable. Fix: remove or replace them, or set data.skip_bad_images: true "
                "to leave them out."
            )
        rank_zero_warn(f"data.skip_bad_images: left out {len(bad)} unreadable images, e.g. {first['name']}.")

    def _check_classes(self, classes: list[str]) -> None:
        if self.expected_classes is not None and list(self.expected_classes) != list(classes):
            raise InputError(
                f"data.classes: expected the classes {list(self.expected_classes)} (from the checkpoint), "
                f"but the data has {list(classes)}. Fix: use the same data as the run that wrote the "
                "checkpoint."
            )

    # ------------------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[
            stage
        ]
        for split in splits:
            if split not in self._datasets:
                self._datasets[split] = self.split_dataset(split)
        if stage == "fit":
            world = rank_and_world(self.trainer)[1]
            size = len(self._datasets["train"])
            if size < self.batch_size * world:
                raise InputError(
                    f"data.batch_size: the train split has {size} images, fewer than one batch of "
                    f"{self.batch_size} x {world} devices. Fix: lower data.batch_size or add images."
                )

    def split_dataset(self, split: str) -> ImageItems:
        """The items of a split (``train``, ``val`` or ``test``), read from the cache."""
        meta = self.meta
        with np.load(self.cache_path / f"{split}.npz") as arrays:
            rows, labels = arrays["rows"], arrays["labels"]
        if self.kind in ("embedded", "folder"):
            images: Sequence = (self.cache_path / f"{split}.paths").read_text(encoding="utf-8").splitlines()
        else:
            if self._hub is None:  # the dataset's own memory-mapped cache
                self._hub = our_splits(read_hub(self.dataset, self.dataset_config, self.kind), self.dataset)
            images = HubRows(self._hub[meta["splits"][split]["source_split"]], meta["image_column"], rows)
        return ImageItems(images, labels, self.image_size, meta["in_channels"])

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self._datasets[split]
        rank, world = rank_and_world(self.trainer)
        sampler = ResumableSampler(dataset, True, self.seed, rank, world, drop_last=True) if train else None
        return ResumableLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=train,
            seed=self.seed,
            epoch=trainer_epoch(self),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    @property
    def batch_augment(self) -> BatchAugment:
        if self._batch_augment is None:
            self._batch_augment = BatchAugment(self.augment, self.image_size)
        return self._batch_augment

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: uint8 -> [0, 1] floats, training augmentation, normalisation, MixUp/CutMix."""
        if not isinstance(batch, dict) or "image" not in batch:
            return batch
        return self.transform(batch, train=self.trainer is not None and self.trainer.training)

    def transform(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        """A loaded batch as the model sees it (what ``on_after_batch_transfer`` does, for own loops).

        uint8 images become floats in [0, 1]; for training they are augmented; all are normalised;
        with MixUp/CutMix on, training batches get soft ``target`` rows ``(B, num_classes)``.
        """
        images = batch["image"]
        if not images.is_floating_point():
            images = images.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if train:
            images = self.batch_augment(images)
        images = self.normalize(images)
        if train and self.augment.mixing:
            images, batch["target"] = self.batch_augment.mix(images, batch["label"], self.num_classes)
        batch["image"] = images
        return batch

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images ``(B, C, H, W)`` as the model sees them (no augmentation)."""
        if not images.is_floating_point():
            images = images.float() / 255.0
        mean, std = self._device_stats(images.device)
        return (images - mean) / std

    def _device_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._norm:
            self._norm[device] = (
                self.mean.to(device).view(1, -1, 1, 1),
                self.std.to(device).view(1, -1, 1, 1),
            )
        return self._norm[device]

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        return {"cache_key": self.cache_key, "classes": self.classes}

    def load_state_dict(self, state: dict) -> None:
        if state.get("classes") not in (None, self.classes):
            raise InputError(
                f"data.dataset: the checkpoint was trained on the classes {state['classes']}, but this data "
                f"has {self.classes}. Fix: use the same data.dataset and label settings as the run that "
                "wrote the checkpoint."
            )


def _name(ref: ImageRef, dataset: str, split: str, row: int) -> str:
    """How to name an image in a message: its file, or its dataset row."""
    if isinstance(ref, str):
        return f"'{ref}'"
    path = ref.get("path") if isinstance(ref, dict) else None
    return f"row {int(row)} of the {split} split of '{dataset}'" + (f" ('{path}')" if path else "")

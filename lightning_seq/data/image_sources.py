"""Reading an image source into train / val / test Hugging Face datasets, with its image and label columns.

A ``dataset`` is one of (see :func:`source_kind`):

* ``"shapes"``: the embedded scenes, read from the ``imagefolder`` they are written to;
* a local folder: one sub-folder per class (``cat/1.png``), an ``imagefolder`` whose
  ``metadata.jsonl``/``.csv``/``.parquet`` has a ``file_name`` column, or (unlabelled) images at
  any depth. Any of them may sit under split folders ``train/``, ``val/``/``valid/``/``validation/``/
  ``dev/`` and ``test/``; only the first folder level names splits, file names never do;
* a Hugging Face dataset name, a folder laid out like a hub repository, or a ``save_to_disk`` folder.

The splits are read lazily (paths or memory-mapped Arrow tables, never decoded images).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightning_seq.data.decode import image_extensions
from lightning_seq.data.sources import SPLIT_ALIASES, _first_line
from lightning_seq.errors import InputError

EMBEDDED = "shapes"
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
LABEL_NAMES = ("label", "labels")
HUB_FORMATS = {".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tar", ".zip"}  # a hub-style folder's files
NO_LABELS_FIX = "or set data.labels: none to read the images without labels"


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
        if any(image_files(path)):
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


def image_files(root: Path):
    """Every image file below ``root`` (the extensions ``imagefolder`` reads), in sorted order."""
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


def read_folder(root: Path, label_column: str | None, labelled: bool = True) -> tuple[dict, str | None]:
    """A local folder's splits as Hugging Face datasets, and the label column to use.

    With metadata files: ``datasets.load_dataset("imagefolder")`` on explicit per-split file lists
    (so that split folders, not keywords in file names, decide the split). Without: class
    sub-folders, checked here, since ``imagefolder`` silently drops labels when there is one class
    or images sit at several depths; or, with ``labelled`` off, every image, wherever it sits.
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
        layout = "one sub-folder of images per class" if labelled else "images"
        raise InputError(
            f"data.dataset: folder '{root}' holds no images ({', '.join(sorted(extensions)[:8])}, ...). "
            f"Fix: point data.dataset at a folder with {layout}."
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
    if not labelled:
        return _loose_images(files), None
    return _class_folders(root, files), "label"


def _loose_images(files: dict[str, list[str]]) -> dict:
    """Unlabelled splits: an ``image`` column of paths."""
    import datasets

    features = datasets.Features({"image": datasets.Image(decode=False)})
    return {
        split: datasets.Dataset.from_dict({"image": paths}, features=features)
        for split, paths in files.items()
    }


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
                    f"class's folder, {NO_LABELS_FIX}."
                )
            labels.setdefault(split, []).append(below[0])
    _check_class_folders(root, {split: set(names) for split, names in labels.items()})
    classes = sorted({c for names in labels.values() for c in names})
    if len(classes) < 2:
        raise InputError(
            f"data.dataset: folder '{root}' has a single class folder '{classes[0]}'; a classifier needs at "
            f"least two. Fix: add a sub-folder of images for each other class, {NO_LABELS_FIX}."
        )
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=classes)}
    )
    return {
        split: datasets.Dataset.from_dict({"image": paths, "label": labels[split]}, features=features)
        for split, paths in files.items()
    }


def _check_class_folders(root: Path, found: dict[str, set[str]]) -> None:
    """Refuse a class folder without images, and a class of val/ or test/ that train lacks (a model
    cannot learn it); ``found``: the classes each split has images of."""
    folders = list(_class_dirs(root))
    for split, folder in folders:
        if folder.name not in found.get(split, ()):
            raise InputError(
                f"data.dataset: class folder '{folder}' holds no images, so its class would silently be "
                "left out. Fix: add its images, or remove the folder."
            )
    train = found.get("train", set())
    for split, folder in folders:
        if split != "train" and folder.name not in train:
            shown = ", ".join(sorted(train)[:20]) + (", ..." if len(train) > 20 else "")
            raise InputError(
                f"data.dataset: class folder '{folder}' has no counterpart in the train split: class "
                f"'{folder.name}' is not one of the train classes ({shown}), so no model can learn it. "
                f"Fix: add a train folder of its images, or remove '{folder}'."
            )


def _class_dirs(root: Path):
    """``(split, folder)`` for every visible class folder: below ``root``, or below its split folders."""

    def visible_dirs(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))

    for child in visible_dirs(root):
        split = next((s for s, aliases in SPLIT_ALIASES.items() if child.name.lower() in aliases), None)
        if split is None:
            yield "train", child
        else:
            yield from ((split, folder) for folder in visible_dirs(child))


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
    """Map the source's split names (``validation``, ``valid``, ``dev``...) to train / val / test."""
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


def find_columns(
    features, image_column: str | None, label_column: str | None, where: str, labelled: bool = True
) -> tuple[str, str | None]:
    """The image column (the first ``datasets.Image``) and label column (the first ``ClassLabel``, or
    one named label/labels), unless given; no label column when not ``labelled``."""
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
    if not labelled:
        return image_column, None
    if label_column is None:
        label_column = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_column = label_column or next((c for c in LABEL_NAMES if c in features), None)
        if label_column is None:
            raise InputError(
                f"data.label_column: '{where}' has no label column (columns: {columns}). "
                f"Fix: set data.label_column to the column that holds the class, {NO_LABELS_FIX}."
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
        train = set(values["train"])
        for split, vs in values.items():
            extra = sorted(set(vs) - train, key=str)
            if extra:
                raise InputError(
                    f"data.label_column: the {split} split of '{where}' has the class {extra[0]!r} (column "
                    f"'{column}'), which the train split lacks, so no model can learn it. Fix: add train "
                    f"images of it, or remove it from the {split} split."
                )
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

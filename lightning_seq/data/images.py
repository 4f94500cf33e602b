"""ImageDataModule: images, labelled or not -> verified, cached index -> uint8 batches -> pixels on device.

The source (the embedded scenes, a local folder, a Hugging Face dataset) is read by
:mod:`.image_sources`; images are decoded by :mod:`.decode`; ``prepare_data`` checks them all once
with the parallel scan of :mod:`.scan` (unreadable files; whether all are grey; the per-channel mean
and std of the train split at ``image_size``) and writes what it found under
``cache_dir/images/<key>/``: ``meta.json`` and, per split, the kept rows and labels
(``<split>.npz``) and, for local files, their paths. ``setup`` reads only those files (and, for hub
datasets, the dataset's own memory-mapped cache).

* ``"shapes"`` (the default): procedural scenes of coloured shapes (:mod:`.scenes`), written once
  into the cache as a Hugging Face ``imagefolder`` and then read like any such folder; labelled by
  the main object's ``shape`` or ``color`` (``label_by``). Object count and size range and the image
  size are settings; each variant is written once and cached.
* a local folder: class sub-folders, an ``imagefolder`` with metadata files, or (``labels: none``)
  images anywhere below it; optionally under split folders ``train/``, ``val/``... .
* a Hugging Face dataset name (``cifar10``, ``mnist``...) or a hub-layout / ``save_to_disk`` folder.

Splits: the source's train / val / test; a missing val split is carved from train
(``val_fraction``, seeded), a missing test split reuses val.

Batches are ``{"image": uint8 (B, C, H, W), "label": int64 (B,), "index": int64 (B,)}`` out of the
DataLoader (no ``"label"`` with ``labels: none``; ``"index"`` is each item's position in its split, for
per-item random draws that do not depend on batches or processes: dynamic binarisation, a VAE's noise);
:meth:`ImageDataModule.on_after_batch_transfer` turns the images into the ``pixels`` convention
(:mod:`.pixels`) on the device, augments training batches in ``[0, 1]`` first, and adds ``"target"``
soft targets ``(B, num_classes)`` when MixUp or CutMix is on.
"""

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lightning_seq.data import pixels as px
from lightning_seq.data import scenes
from lightning_seq.data.augment import BatchAugment, ImageAugment
from lightning_seq.data.cache import MANIFEST, CachedDataModule, build_once, default_cache_dir, key_of
from lightning_seq.data.decode import ImageRef, decode_image
from lightning_seq.data.image_sources import (
    EMBEDDED,
    HubRows,
    class_ids,
    find_columns,
    folder_fingerprint,
    our_splits,
    read_folder,
    read_hub,
    source_kind,
)
from lightning_seq.data.pixels import PIXELS, Pixels
from lightning_seq.data.resumable import ResumableLoader, ResumableSampler, rank_and_world, trainer_epoch
from lightning_seq.data.scan import scan_images
from lightning_seq.data.sources import SPLITS
from lightning_seq.errors import InputError
from lightning_seq.utils import plain_hparams

CACHE_VERSION = 1
SCENE_SIZES = (16, 28, 32, 64)  # the embedded scenes' sizes that recipes use; any side >= 16 works
EVAL_STREAM = 1  # dynamic binarisation: evaluation draws, fixed across epochs, apart from training's


class ImageItems(Dataset):
    """Item ``i``: ``{"image": uint8 (C, S, S), "label": int, "index": i}``, decoded with PIL in the worker
    that asks (``"index"`` for per-item random draws on the device).

    Args:
        images: paths or image cells (:class:`HubRows`), one per item.
        labels: class ids ``(N,)``; None: unlabelled items (no ``"label"``).
        image_size: side ``S`` of the square images.
        channels: 1 (grey) or 3 (RGB).
    """

    def __init__(
        self,
        images: Sequence,
        labels: np.ndarray | None,
        image_size: int,
        channels: int,
    ):
        self.images, self.labels = images, labels
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.images)

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
        item = {"image": torch.from_numpy(array).permute(2, 0, 1), "index": i}  # image (C, S, S)
        if self.labels is not None:
            item["label"] = int(self.labels[i])
        return item


class MeanStd:
    """Per-channel normalisation with the mean and std of the train split, for image DataModules.

    The DataModule has ``in_channels``, ``meta["mean"]`` and ``meta["std"]`` (measured by the scan),
    ``_mean`` and ``_std`` (the user's values or None) and ``_norm = {}`` (the statistics per device).
    """

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

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] images ``(B, C, H, W)`` normalised with the mean and std (no augmentation)."""
        if not images.is_floating_point():
            images = images.float() / 255.0
        return px.from_unit(images, "normalized", *self._device_stats(images.device))

    def _device_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._norm:
            self._norm[device] = (
                self.mean.to(device).view(1, -1, 1, 1),
                self.std.to(device).view(1, -1, 1, 1),
            )
        return self._norm[device]


class ImageDataModule(MeanStd, CachedDataModule):
    """Images for classifiers and generative models: the embedded shapes, a local folder, or a hub dataset.

    Args:
        dataset: ``"shapes"`` (embedded), a local folder, or a Hugging Face dataset name.
        image_size: side of the square images the model sees; others are resized (shorter side) and
            centre-cropped. The embedded scenes are drawn at this size (16, 28, 32, 64...; at least 16).
        channels: 1 (grey) or 3 (RGB) to convert every image; None: 1 when every image is grey, else 3.
        pixels: what batches hold: ``normalized`` (mean/std, for classifiers), ``unit`` ([0, 1]),
            ``symmetric`` ([-1, 1]), ``uint8`` (int64 0..255) or ``binary`` (0/1); see :mod:`.pixels`.
        binarize: for ``pixels: binary``: ``static`` (intensity >= 0.5) or ``dynamic`` (Bernoulli of the
            intensity, new draws every epoch from ``(seed, epoch, item)``: a resumed run sees the same).
        labels: ``class`` (batches hold ``"label"``), or ``none``: unlabelled images (a folder with no
            class folders, a dataset with no label column, or a labelled source used unlabelled).
        label_by: what the embedded shapes are labelled by: ``shape`` or ``color``.
        label_column: the label column; by default the first ``ClassLabel`` column, or one named
            label/labels (class sub-folders give ``label``).
        image_column: the image column; by default the first ``datasets.Image`` column.
        dataset_config: the Hugging Face dataset configuration, if it has several.
        num_train: embedded training images.
        num_val: embedded validation images.
        num_test: embedded test images.
        min_objects: fewest shapes in an embedded scene (the first one is the labelled one).
        max_objects: most shapes in an embedded scene.
        object_size: an embedded shape's side as fractions ``[low, high]`` of the image side when it is
            alone (``1 / sqrt(n)`` of that among ``n``); None: ``[0.3, 0.75]``.
        scene_style: how the embedded scenes are drawn: ``color`` (coloured shapes on textured dark
            backgrounds) or ``mono`` (white shapes on black, for binarised pixels, like MNIST's strokes).
        seed: the embedded scenes, the carving of validation from train, dynamic binarisation.
        val_fraction: share of train carved off for validation when the source has no validation split.
        batch_size: training images per batch on each device.
        eval_batch_size: validation/test/predict images per batch (default: ``batch_size``).
        num_workers: DataLoader worker processes decoding images.
        mean: per-channel normalisation mean on a 0-1 scale; None: measured on the train split.
        std: per-channel normalisation std; None: measured on the train split.
        augment: training augmentation (random resized crop and flip by default); see :class:`ImageAugment`.
            It works on images in [0, 1], before their conversion to ``pixels``.
        skip_bad_images: drop unreadable images with a warning instead of stopping with an error.
        cache_dir: where the verified index and statistics are cached; default ``$LIGHTNING_SEQ_CACHE``
            or ``~/.cache/lightning_seq``.
        classes: the class names a model was trained with; when given, the data must have the same
            classes (in the same order).

    Attributes for the model (linked by the CLI): ``image_size``, ``in_channels``, ``pixels``, ``mean``,
    ``std``, and only for labelled data ``num_classes`` and ``classes``.
    """

    CACHE_KIND = "images"

    def __init__(
        self,
        dataset: str = EMBEDDED,
        image_size: int = 32,
        channels: int | None = None,
        pixels: Pixels = "normalized",
        binarize: Literal["static", "dynamic"] = "static",
        labels: Literal["class", "none"] = "class",
        label_by: str = "shape",
        label_column: str | None = None,
        image_column: str | None = None,
        dataset_config: str | None = None,
        num_train: int = 12000,
        num_val: int = 2000,
        num_test: int = 2000,
        min_objects: int = 1,
        max_objects: int = 1,
        object_size: tuple[float, float] | None = None,
        scene_style: Literal["color", "mono"] = "color",
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
        self.augment = augment or ImageAugment()
        self._check_args(locals())
        self.dataset, self.dataset_config = dataset, dataset_config
        self.kind = source_kind(dataset)
        if self.kind == "embedded" and image_size < 16:
            raise InputError(
                f"data.image_size: the embedded scenes are at least 16 pixels wide, got {image_size}. "
                f"Fix: e.g. one of {', '.join(map(str, SCENE_SIZES))}."
            )
        self.image_size, self.channels, self.pixels, self.binarize = image_size, channels, pixels, binarize
        self.labels, self.label_by = labels, label_by
        self.label_column, self.image_column = label_column, image_column
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.min_objects, self.max_objects = min_objects, max_objects
        self.object_size = None if object_size is None else scenes.check_object_size(object_size)
        self.scene_style = scene_style
        self.seed, self.val_fraction = seed, val_fraction
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers = num_workers
        self._mean, self._std = mean, std
        self.skip_bad_images = skip_bad_images
        self.cache_root = default_cache_dir(cache_dir)
        self.expected_classes = classes
        self._meta: dict | None = None
        self._datasets: dict[str, ImageItems] = {}
        self._hub: dict | None = None
        self._batch_augment: BatchAugment | None = None
        self._norm: dict = {}
        self._scenes_checked = False
        self.cache_hit: bool | None = None  # after preparation: whether the cache already existed

    def _check_args(self, args: dict) -> None:
        """Check the constructor's arguments (``args``: its ``locals()``); errors name the field."""
        if args["image_size"] < 8:
            raise InputError(f"data.image_size: expected at least 8 pixels, got {args['image_size']}.")
        for name, allowed in (
            ("pixels", PIXELS), ("binarize", ("static", "dynamic")), ("labels", ("class", "none")),
            ("label_by", ("shape", "color")), ("channels", (None, 1, 3)), ("scene_style", scenes.STYLES),
        ):  # fmt: skip
            if args[name] not in allowed:
                shown = " or ".join(repr(a) if isinstance(a, str) else str(a) for a in allowed)
                raise InputError(f"data.{name}: expected {shown}, got {args[name]!r}.")
        counts = ("num_train", "num_val", "num_test", "batch_size", "eval_batch_size", "min_objects")
        for name in counts:
            value = args[name]
            if value is not None and value < 1:  # eval_batch_size None: batch_size
                raise InputError(f"data.{name}: expected a positive integer, got {value}.")
        if args["max_objects"] < args["min_objects"]:
            raise InputError(
                f"data.max_objects: expected at least min_objects ({args['min_objects']}), "
                f"got {args['max_objects']}."
            )
        try:
            scenes.check_object_size(args["object_size"])
        except ValueError as err:
            raise InputError(f"data.object_size: {err}. Fix: e.g. [0.3, 0.75].") from None
        if not 0.0 < args["val_fraction"] < 0.5:
            raise InputError(
                f"data.val_fraction: expected a fraction in (0, 0.5), got {args['val_fraction']}."
            )
        if args["num_workers"] < 0:
            raise InputError(f"data.num_workers: expected 0 or more, got {args['num_workers']}.")
        if args["labels"] == "none":
            if self.augment.mixing:
                raise InputError(
                    "data.augment: MixUp and CutMix mix the labels of two images, and with data.labels: none "
                    "there are none. Fix: set data.augment.mixup_alpha and cutmix_alpha to 0, or use "
                    "data.labels: class."
                )
            if args["classes"] is not None:
                raise InputError(
                    "data.classes: class names were given, but data.labels is none (no classes). "
                    "Fix: leave data.classes out, or use data.labels: class."
                )

    # ----------------------------------------------------------------- sizes for the model (CLI links)
    @property
    def labelled(self) -> bool:
        """Whether batches hold ``"label"`` (``labels: class``)."""
        return self.labels == "class"

    @property
    def num_classes(self) -> int:
        """The number of classes (labelled data only: absent, ``hasattr`` false, with ``labels: none``)."""
        self._need_labels("num_classes")
        return len(self.meta["classes"])

    @property
    def classes(self) -> list[str]:
        """Class names; class ``i`` is ``classes[i]`` (labelled data only)."""
        self._need_labels("classes")
        return list(self.meta["classes"])

    def _need_labels(self, name: str) -> None:
        if not self.labelled:
            raise AttributeError(f"ImageDataModule with labels='none' has no {name}")

    @property
    def in_channels(self) -> int:
        """The channels of the batches: ``channels`` when given, else 1 when every image is grey, else 3."""
        return self.meta["in_channels"]

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(..., C, H, W)`` in this data's ``pixels`` convention (batches, samples) in [0, 1]."""
        if self.pixels != "normalized":
            return px.to_unit(images, self.pixels)
        return px.to_unit(images, "normalized", *self._device_stats(images.device))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Model inputs back to images in ``[0, 1]``: :meth:`to_unit`, by the name ImagePredictions uses."""
        return self.to_unit(images)

    # ----------------------------------------------------------------------------------- the cache
    @cached_property
    def scenes_path(self) -> Path:
        """Where the embedded scenes are written (keyed by everything that shapes them)."""
        ident = {
            "version": scenes.GENERATOR_VERSION,
            "image_size": self.image_size,
            "seed": self.seed,
            "sizes": self.sizes,
            "objects": [self.min_objects, self.max_objects],
            "object_size": list(self.object_size or scenes.OBJECT_SIZE),
        }
        if self.scene_style != "color":  # only non-default settings: default keys stay as they were
            ident["style"] = self.scene_style
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
        if self.channels is not None:  # only non-default settings: default keys stay as they were
            ident["channels"] = self.channels
        if not self.labelled:
            ident["labels"] = self.labels
        return key_of(ident)

    def prepare_data(self) -> None:
        """Verify the source and write its index and statistics to the cache, unless there already.

        Raises:
            InputError: some images are unreadable and ``skip_bad_images`` is off, or the classes are not
                the expected ones.
        """
        if self.kind == "embedded":
            self._write_embedded()  # the index points into the scenes: they are checked at every start too
        super().prepare_data()
        if self._meta is None:
            meta = json.loads((self.cache_path / "meta.json").read_text())
            self._check_bad(meta)
            if self.labelled:
                self._check_classes(meta["classes"])
            self._meta = meta

    def _write_embedded(self) -> None:
        """Write the embedded scenes once (another process may be doing it: the lock waits for it), or
        again when they no longer match their manifest; checked once per DataModule."""
        if self._scenes_checked:
            return
        settings = (self.min_objects, self.max_objects, None, self.object_size, self.scene_style)
        build_once(
            self.scenes_path,
            lambda out: scenes.fill_scene_folder(out, self.image_size, self.sizes, self.seed, *settings),
            done=MANIFEST,
        )
        self._scenes_checked = True

    def _read_source(self) -> tuple[dict, str, str | None, list[str] | None]:
        """The source's train/val/test splits, its image and label columns, and fixed class names."""
        label_column, fixed = self.label_column, None
        if self.kind == "embedded":
            self._write_embedded()
            if self.labelled:
                label_column = label_column or self.label_by
                fixed = list(scenes.SHAPES) if label_column == "shape" else None
                fixed = list(scenes.COLORS) if label_column == "color" else fixed
            dsd, label_column = read_folder(self.scenes_path, label_column, self.labelled)
        elif self.kind == "folder":
            dsd, found = read_folder(Path(self.dataset).expanduser(), label_column, self.labelled)
            label_column = label_column or found
        else:
            dsd = read_hub(self.dataset, self.dataset_config, self.kind)
        splits = our_splits(dsd, self.dataset)
        if self.kind in ("hub", "disk"):
            self._hub = splits  # split_dataset reads the same splits: no second load
        image_column, label_column = find_columns(
            splits["train"].features, self.image_column, label_column, self.dataset, self.labelled
        )
        return splits, image_column, label_column, fixed

    def _read_labels(self, splits: dict, label_column: str | None, fixed) -> tuple[list | None, dict]:
        """Class names and per-split label ids (None and ``{split: None}`` when unlabelled)."""
        if not self.labelled:
            return None, {s: None for s in splits}
        classes, labels = class_ids(splits, label_column, self.dataset, fixed)
        if len(classes) < 2:
            raise InputError(
                f"data.label_column: '{self.dataset}' has a single class ({classes}) in column "
                f"'{label_column}'; a classifier needs at least two. Fix: choose another label column, "
                "or set data.labels: none."
            )
        return classes, labels

    def _write_cache(self, out: Path) -> None:
        splits, image_column, label_column, fixed = self._read_source()
        classes, labels = self._read_labels(splits, label_column, fixed)
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
        scan = scan_images(images, self.image_size, channels=self.channels or 3)
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
            "in_channels": self.channels or (1 if scan["grey"] else 3),
            "image_size": self.image_size,
            "mean": scan["mean"],
            "std": scan["std"],
            "splits": {},
            "bad": bad,
        }
        if not self.labelled:
            meta["labels"] = self.labels
        for split in SPLITS:
            src = split if split in images else "val"  # no test split: validation stands in
            keep = np.ones(len(images[src]), dtype=bool)
            keep[[i for i, _ in scan["bad"][src]]] = False
            kept_rows = rows[src][keep]
            arrays = {"rows": kept_rows}
            if labels[src] is not None:
                arrays["labels"] = labels[src][kept_rows]
            np.savez(out / f"{split}.npz", **arrays)
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
            if self.pixels == "normalized":
                self._device_stats(torch.device("cpu"))  # checks data.mean and data.std before training

    @property
    def _dynamic(self) -> bool:
        return self.pixels == "binary" and self.binarize == "dynamic"

    def split_dataset(self, split: str) -> ImageItems:
        """The items of a split (``train``, ``val`` or ``test``), read from the cache."""
        meta = self.meta
        with np.load(self.cache_path / f"{split}.npz") as arrays:
            rows = arrays["rows"]
            labels = arrays["labels"] if self.labelled else None
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

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    @property
    def batch_augment(self) -> BatchAugment:
        if self._batch_augment is None:
            self._batch_augment = BatchAugment(self.augment, self.image_size)
        return self._batch_augment

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the device: uint8 -> [0, 1] floats, training augmentation, conversion, MixUp/CutMix."""
        if not isinstance(batch, dict) or "image" not in batch:
            return batch
        return self.transform(batch, train=self.trainer is not None and self.trainer.training)

    def transform(
        self, batch: dict[str, torch.Tensor], train: bool, epoch: int | None = None
    ) -> dict[str, torch.Tensor]:
        """A loaded batch as the model sees it (what ``on_after_batch_transfer`` does, for own loops).

        uint8 images become floats in [0, 1]; for training they are augmented; then they are converted
        to the ``pixels`` convention. With MixUp/CutMix on, training batches get soft ``target`` rows
        ``(B, num_classes)`` (mixed after normalisation for ``normalized``, else in [0, 1] before the
        conversion). Dynamic binarisation uses the batch's ``"index"`` and ``epoch``
        (default: the Trainer's); evaluation batches get the same draws every epoch.
        """
        images = batch["image"]
        if not images.is_floating_point():
            images = images.float().div_(255.0)  # (B, C, H, W) in [0, 1]
        if train:
            images = self.batch_augment(images)
        mixing = train and self.augment.mixing
        if self.pixels == "normalized":
            images = self.normalize(images)
            if mixing:
                images, batch["target"] = self.batch_augment.mix(images, batch["label"], self.num_classes)
        else:
            if mixing:
                images, batch["target"] = self.batch_augment.mix(images, batch["label"], self.num_classes)
            images = self._convert(images, batch, train, epoch)
        batch["image"] = images
        return batch

    def _convert(self, unit: torch.Tensor, batch: dict, train: bool, epoch: int | None) -> torch.Tensor:
        """``[0, 1]`` images to a convention other than ``normalized``."""
        if not self._dynamic:
            return px.from_unit(unit, self.pixels)
        index = batch.get("index")
        if index is None:
            raise ValueError(
                "dynamic binarisation draws per item: the batch needs the items' 'index' "
                "(ImageDataModule's own loaders give it)"
            )
        if not train:
            return px.binarize(unit, index, self.seed, epoch=0, stream=EVAL_STREAM)
        if epoch is None:
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return px.binarize(unit, index, self.seed, epoch=epoch)

    # ------------------------------------------------------------------------ checkpointed state
    def state_dict(self) -> dict:
        """For checkpoints: the cache entry, the classes, and how the model is fed (for feature nets)."""
        return {
            "cache_key": self.cache_key,
            "classes": self.classes if self.labelled else None,
            "labels": self.labels,
            "pixels": self.pixels,
            "image_size": self.image_size,
            "in_channels": self.in_channels,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        checks = (
            ("labels", self.labels, "data.labels"),
            ("pixels", self.pixels, "data.pixels"),
            ("image_size", self.image_size, "data.image_size"),
            ("in_channels", self.in_channels, "data.channels"),
        )
        for key, now, field in checks:
            if key in state and state[key] != now:
                raise InputError(
                    f"{field}: the checkpoint was trained with {key} {state[key]!r}, but this data has "
                    f"{now!r}. Fix: use the same data settings as the run that wrote the checkpoint."
                )
        if self.labelled and state.get("classes") not in (None, self.classes):
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

"""SampleQuality: FID, KID and class-conditional accuracy of a generative model's samples, offline.

At the end of validation runs, ``num_samples`` samples are drawn with ``pl_module.sample`` (the
generative contract: ``sample(n, *, labels=None, generator=None)`` returns images in the data's pixel
convention) and compared with the DataModule's validation images in the feature space of one of our
own classifiers, never with weights downloaded at run time:

* ``val/fid``: the Fréchet distance between Gaussians fitted to the two feature sets (torchmetrics'
  ``FrechetInceptionDistance`` with :class:`FeatureNet` as its feature extractor);
* ``val/kid``: the kernel (MMD, cubic polynomial kernel) distance, unbiased, averaged over random
  subsets (``KernelInceptionDistance``);
* ``val/cond_acc``, for class-conditional models (``num_classes`` set): the share of samples drawn for
  class ``c`` that the feature net classifies as ``c``.

The feature net is an ``ImageClassifier`` checkpoint (``feature_net``: a path or a glob), or, for the
embedded scenes, a small classifier trained once on the same scene variant and cached (see
:func:`default_feature_net`). Its features are the input of its classification head (``net.head``).
It lives on this callback: it is never part of the LightningModule, its optimizer, its EMA or its
checkpoints.

Determinism and DDP: the samples are drawn in batches of ``batch_size``, batch ``k`` with a generator
seeded from ``(seed, k)``, so the sample set does not depend on the number of processes. Under DDP every
rank draws a contiguous share of the batches and embeds a contiguous share of the validation images;
the metric states are gathered across ranks (torchmetrics' sync) when the values are computed, so every
rank logs the same value, the one a single process gets. The real images' statistics are computed once
per run and kept. KID's random subsets come from a generator seeded by ``seed``, so computing it leaves
the training's random numbers untouched.
"""

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_seq.callbacks.images import class_names, to_unit
from lightning_seq.checkpointing import load_net, newest_match, read_checkpoint
from lightning_seq.data.cache import build_once, key_of
from lightning_seq.data.images import ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.nets import ResNet
from lightning_seq.utils import evaluating

FIELD = "SampleQuality.feature_net"

#: Bumped whenever the default feature net would be trained differently for the same settings.
FEATURE_NET_VERSION = 1

#: Luma weights of ITU-R 601 (PIL's ``convert("L")``), for RGB images fed to a grey feature net.
_LUMA = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------------------------ the feature net
class FeatureNet(nn.Module):
    """A frozen classifier as a feature extractor: images in [0, 1] in, the input of its head out.

    Images ``(B, C, H, W)`` are resized (bilinear, antialiased) to the net's ``image_size``, converted
    grey <-> RGB to its ``in_channels`` (luma weights / repetition), and brought to the pixel convention
    of the data it was trained on (``normalized`` with its mean and std, ``unit`` or ``symmetric``).
    A forward pre-hook on ``net.head`` (the classification layer of :class:`~lightning_seq.nets.ResNet`,
    :class:`~lightning_seq.nets.ViT` and :class:`~lightning_seq.nets.Swin`) takes its input as the
    features. The net stays in eval mode (``train()`` keeps it there) and needs no gradients.

    Args:
        net: the classifier, ``net(images) -> logits (B, K)``, with a ``head`` submodule.
        image_size: the side of the images it was trained on.
        in_channels: their channels (1 or 3).
        pixels: their pixel convention.
        mean: per-channel mean ``(C,)`` of its data, for ``normalized``.
        std: per-channel standard deviation ``(C,)``, for ``normalized``.
        classes: its class names, in label order (for ``val/cond_acc``).
        where: how errors name the net (the setting it came from).
    """

    def __init__(
        self,
        net: nn.Module,
        image_size: int,
        in_channels: int,
        pixels: str = "normalized",
        mean: list[float] | Tensor | None = None,
        std: list[float] | Tensor | None = None,
        classes: list[str] | None = None,
        where: str = FIELD,
    ):
        super().__init__()
        head = getattr(net, "head", None)
        if not isinstance(head, nn.Module):
            raise InputError(
                f"{where}: the net {type(net).__name__} has no `head` submodule (its classification layer), "
                "whose input would be the features. Fix: use a classifier whose net is one of "
                "lightning_seq.nets (ResNet, ViT, Swin), or name your net's last layer `head`."
            )
        if in_channels not in (1, 3):
            raise InputError(f"{where}: the net takes {in_channels} channels; expected 1 (grey) or 3 (RGB).")
        if pixels not in ("normalized", "unit", "symmetric"):
            raise InputError(
                f"{where}: the net was trained on '{pixels}' pixels; a feature net takes 'normalized', "
                "'unit' or 'symmetric' images. Fix: use a classifier trained with data.pixels: normalized."
            )
        if pixels == "normalized" and (mean is None or std is None):
            raise InputError(
                f"{where}: the mean and std of the net's data are unknown. Fix: use a checkpoint written by "
                "this version of `lightning fit` (it saves them with the data's state), or pass them."
            )
        self.net = net.eval().requires_grad_(False)
        self.image_size, self.in_channels, self.pixels = int(image_size), int(in_channels), pixels
        self.classes = list(classes) if classes is not None else None
        channels = torch.zeros(in_channels)
        mean = channels if mean is None else torch.as_tensor(mean, dtype=torch.float32).expand(in_channels)
        std = channels + 1 if std is None else torch.as_tensor(std, dtype=torch.float32).expand(in_channels)
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone(), persistent=False)  # (1, C, 1, 1)
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clone(), persistent=False)
        self._grabbed: Tensor | None = None
        self._remember, self._cache = False, None
        head.register_forward_pre_hook(self._grab)
        probe = torch.zeros(1, self.in_channels, self.image_size, self.image_size)
        features, logits = self.features_and_logits(probe)
        self.num_features, self.num_classes = features.shape[1], logits.shape[-1]
        self.eval()

    def _grab(self, module: nn.Module, args: tuple) -> None:
        self._grabbed = args[0]

    def train(self, mode: bool = True) -> "FeatureNet":
        """Stays in eval mode: batch norm statistics and dropout of the trained net, always."""
        return super().train(False)

    def prepare(self, images: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` in [0, 1] as the net takes them ``(B, in_channels, S, S)``."""
        images = images.float()
        if images.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)
        channels = images.shape[1]
        if channels == 3 and self.in_channels == 1:
            luma = images.new_tensor(_LUMA).view(1, 3, 1, 1)
            images = (images * luma).sum(1, keepdim=True)  # (B, 1, S, S)
        elif channels == 1 and self.in_channels == 3:
            images = images.expand(-1, 3, -1, -1)  # (B, 3, S, S)
        elif channels != self.in_channels:
            raise ValueError(f"images with {channels} channels; expected 1 or 3")
        if self.pixels == "normalized":
            return (images - self.mean) / self.std
        return images * 2.0 - 1.0 if self.pixels == "symmetric" else images

    @torch.no_grad()
    def features_and_logits(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Features ``(B, num_features)`` (float32) and logits ``(B, K)`` of images in [0, 1].

        Inside :meth:`remembering`, the result for the last batch is kept, so FID, KID and the accuracy
        embed each batch once.
        """
        cache = self._cache
        if cache is not None and cache[0] is images:
            return cache[1], cache[2]
        self._grabbed = None
        logits = self.net(self.prepare(images))
        if self._grabbed is None:
            raise InputError(f"{FIELD}: the net's forward never calls its `head`; features cannot be taken.")
        features = self._grabbed.flatten(1).float()  # (B, F)
        self._grabbed = None
        if self._remember:
            self._cache = (images, features, logits)
        return features, logits

    def forward(self, images: Tensor) -> Tensor:
        """Features ``(B, num_features)`` of images in [0, 1] (what the torchmetrics metrics call)."""
        return self.features_and_logits(images)[0]

    @contextmanager
    def remembering(self) -> Iterator[None]:
        """Inside, the same images (the same tensor object) are embedded once: the metrics that all call
        this net share one forward pass. The images must not change in place meanwhile."""
        self._remember = True
        try:
            yield
        finally:
            self._remember, self._cache = False, None


def load_feature_net(pattern: str | Path, where: str = FIELD) -> FeatureNet:
    """The :class:`FeatureNet` of an ``ImageClassifier`` checkpoint (a path, or a glob: the newest match).

    The checkpoint's hyperparameters give the net and its classes; its ``ImageDataModule`` state gives
    the image size, channels, pixel convention, mean and std of the data it was trained on.
    """
    fix = (
        "train a classifier on the same data first (e.g. lightning fit --config recipes/resnet_se.yaml "
        "with the same data settings) and give the path or a glob of its .ckpt file"
    )
    path = newest_match(pattern, where, fix)
    checkpoint = read_checkpoint(path, need=("state_dict", "hyper_parameters"), field=where)
    hparams, data = checkpoint["hyper_parameters"], checkpoint.get("ImageDataModule") or {}
    net = load_net(path, field=where)
    image_size = data.get("image_size") or getattr(net, "image_size", None)
    in_channels = data.get("in_channels") or getattr(net, "in_channels", None)
    if image_size is None or in_channels is None:
        raise InputError(
            f"{where}: '{path}' does not say which images its net takes (no image size or channels in its "
            "data's state or its net). Fix: use an ImageClassifier checkpoint written by `lightning fit`."
        )
    classes = hparams.get("classes") or data.get("classes")
    pixels = data.get("pixels", "normalized")
    return FeatureNet(net, image_size, in_channels, pixels, data.get("mean"), data.get("std"), classes, where)


# ----------------------------------------------------------------------------- the default feature net
@dataclass
class FeatureNetTraining:
    """How the default feature net of the embedded scenes is trained (a plain torch loop).

    A ResNet of one basic block per stage (no SE), trained with AdamW and a one-cycle schedule on the
    scenes' training split, with horizontal flips (every shape is symmetric under them), then tested on
    their test split. The settings (all but ``min_accuracy``) are part of the cache key.

    Args:
        widths: channels per ResNet stage; the last one is the number of features.
        epochs: passes over the training images.
        num_train: training scenes.
        num_test: held-out scenes the accuracy is measured on.
        batch_size: images per step.
        lr: peak learning rate.
        seed: the scenes drawn (the same for every generative run, so that figures compare) and the
            initialisation.
        min_accuracy: the held-out accuracy below which the net is refused as too weak.
    """

    widths: tuple[int, ...] = (16, 32, 64)
    epochs: int = 3
    num_train: int = 12000
    num_test: int = 2000
    batch_size: int = 128
    lr: float = 3e-3
    seed: int = 0
    min_accuracy: float = 0.9


#: DataModule arguments that do not change which images (and labels) a classifier learns from.
_NOT_IN_KEY = ("num_workers", "batch_size", "eval_batch_size", "cache_dir", "skip_bad_images")


def classifier_data(datamodule, training: FeatureNetTraining):
    """The labelled, normalised :class:`~lightning_seq.data.ImageDataModule` of the same scene variant
    as ``datamodule`` (size, channels, objects, their sizes; labels by its ``label_by``), with the
    training's own seed and split sizes."""
    args = {key: value for key, value in dict(datamodule.hparams).items() if not key.startswith("_")}
    args.update(
        pixels="normalized", binarize="static", labels="class", channels=datamodule.in_channels,
        seed=training.seed, num_train=training.num_train, num_val=2000, num_test=training.num_test,
        mean=None, std=None, augment={"crop_scale": None, "hflip": False}, classes=None, num_workers=0,
        batch_size=min(training.batch_size, training.num_train), eval_batch_size=None,
    )  # fmt: skip
    return ImageDataModule(**args)


def default_feature_net(datamodule, training: FeatureNetTraining | None = None, device="cpu") -> Path:
    """The checkpoint of the default feature net for an embedded-scenes DataModule, trained if not cached.

    It is a :class:`~lightning_seq.nets.ResNet` classifier of the scenes' labels, trained once per scene
    variant and training settings under ``<cache dir>/feature_nets/<key>/feature_net.ckpt``, in the
    format ``lightning fit`` writes (``load_net``, ``load_classifier`` and
    ``ImageClassifier.load_from_checkpoint`` read it). A file lock makes concurrent processes (DDP
    ranks, parallel runs) wait for the first one instead of training it again.

    Raises:
        InputError: its held-out accuracy is below ``training.min_accuracy``.
    """
    training = training or FeatureNetTraining()
    data = classifier_data(datamodule, training)
    settings = {k: v for k, v in dict(data.hparams).items() if k not in _NOT_IN_KEY and not k.startswith("_")}
    recipe = {k: v for k, v in asdict(training).items() if k != "min_accuracy"}
    ident = {"version": FEATURE_NET_VERSION, "data": settings, "training": recipe}
    folder = data.cache_root / "feature_nets" / key_of(json_safe(ident))
    trained = not build_once(folder, lambda out: _train(out, data, training, torch.device(device)))
    meta = read_checkpoint(folder / "feature_net.ckpt", field=FIELD)["feature_net"]
    how = f"trained in {meta['seconds']:.0f} s on {meta['device']}" if trained else "cached"
    rank_zero_info(
        f"SampleQuality: default feature net ({meta['description']}) {how}: held-out accuracy "
        f"{meta['accuracy']:.2%} on {meta['num_test']} scenes; {folder / 'feature_net.ckpt'}"
    )
    if meta["accuracy"] < training.min_accuracy:
        raise InputError(
            f"{FIELD}: the default feature net reaches only {meta['accuracy']:.1%} held-out accuracy on "
            f"these scenes (below {training.min_accuracy:.0%}), too weak to judge samples by. Fix: train it "
            "longer (SampleQuality.feature_net_training.epochs, num_train) or name a better classifier "
            f"checkpoint in {FIELD}."
        )
    return folder / "feature_net.ckpt"


def json_safe(value):
    """``value`` with tuples as lists, for cache keys."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _load_split(data, split: str) -> tuple[Tensor, Tensor]:
    """A split's images ``(N, C, S, S)`` uint8 and labels ``(N,)``, in memory."""
    loader = DataLoader(data.split_dataset(split), batch_size=500, num_workers=0)
    images, labels = zip(*((b["image"], b["label"]) for b in loader), strict=True)
    return torch.cat(images), torch.cat(labels)


def _train(out: Path, data, training: FeatureNetTraining, device: torch.device) -> None:
    """Train the default feature net on ``data`` and write ``feature_net.ckpt`` into ``out``."""
    start = time.perf_counter()
    data.prepare_data()
    images, labels = _load_split(data, "train")
    test_images, test_labels = _load_split(data, "test")
    classes = data.classes
    init = {
        "image_size": data.image_size, "in_channels": data.in_channels, "num_classes": len(classes),
        "widths": list(training.widths), "depths": [1] * len(training.widths), "se": False,
    }  # fmt: skip
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's random numbers stay as they were
        torch.manual_seed(training.seed)
        net = ResNet(**init).to(device)
        steps_per_epoch = max(1, len(images) // training.batch_size)
        optimizer = torch.optim.AdamW(net.parameters(), lr=training.lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, training.lr, total_steps=training.epochs * steps_per_epoch, pct_start=0.15
        )
        generator = torch.Generator().manual_seed(training.seed)
        for _ in range(training.epochs):
            net.train()
            order = torch.randperm(len(images), generator=generator)
            for step in range(steps_per_epoch):
                batch = order[step * training.batch_size : (step + 1) * training.batch_size]
                x = data.normalize(images[batch].to(device))  # (B, C, S, S)
                flip = (torch.rand(len(batch), generator=generator) < 0.5).to(device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                loss = F.cross_entropy(net(x), labels[batch].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    net.eval()
    with torch.no_grad():
        right = sum(
            (net(data.normalize(x.to(device))).argmax(-1).cpu() == y).sum().item()
            for x, y in zip(test_images.split(500), test_labels.split(500), strict=True)
        )
    accuracy = right / len(test_labels)
    seconds = time.perf_counter() - start
    kind = "grey" if data.in_channels == 1 else "RGB"
    description = (
        f"ResNet widths {list(training.widths)}, {training.epochs} epochs on {len(images)} "
        f"{data.image_size}x{data.image_size} {kind} scenes labelled by {data.label_by}"
    )
    checkpoint = {
        "epoch": training.epochs - 1,
        "global_step": training.epochs * steps_per_epoch,
        "pytorch-lightning_version": L.__version__,
        "state_dict": {f"net.{k}": v.cpu() for k, v in net.state_dict().items()},
        "hyper_parameters": {
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
            "_class_path": "lightning_seq.modules.ImageClassifier",
            "net": {"class_path": "lightning_seq.nets.ResNet", "init_args": init},
            "classes": classes,
        },
        "ImageDataModule": data.state_dict(),
        "feature_net": {
            "accuracy": accuracy, "seconds": seconds, "device": str(device), "num_test": len(test_labels),
            "description": description,
        },
    }  # fmt: skip
    torch.save(checkpoint, out / "feature_net.ckpt")
    (out / "meta.json").write_text(f'{{"accuracy": {accuracy}, "seconds": {seconds}}}\n')


# -------------------------------------------------------------------------------------- the callback
class SampleQuality(L.Callback):
    """Logs ``val/fid``, ``val/kid`` and (class-conditional models) ``val/cond_acc`` of the samples.

    Args:
        feature_net: an ``ImageClassifier`` checkpoint (path or glob, the newest match) whose net embeds
            the images; None: for the embedded scenes, the default feature net (trained once, cached;
            see :func:`default_feature_net`); other data need one named.
        num_samples: samples drawn per measurement.
        batch_size: samples per ``sample`` call, and validation images per feature batch.
        num_real: validation images compared with (the first ones); None: all of them.
        every_n_validations: measure at the end of every this many validation runs of a fit (validation
            runs follow the Trainer's ``check_val_every_n_epoch`` / ``val_check_interval``: with one per
            epoch, this is every N epochs). ``lightning validate`` always measures.
        seed: seeds the samples (batch ``k`` draws with a generator seeded by ``(seed, k)``) and KID's
            subsets.
        kid_subsets: random subsets KID averages over.
        kid_subset_size: samples per KID subset (at most the number of samples and of real images).
        feature_net_training: how the default feature net is trained (ignored with ``feature_net``).
    """

    def __init__(
        self,
        feature_net: str | None = None,
        num_samples: int = 1000,
        batch_size: int = 250,
        num_real: int | None = None,
        every_n_validations: int = 1,
        seed: int = 0,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        feature_net_training: FeatureNetTraining | None = None,
    ):
        counts = dict(
            num_samples=num_samples, batch_size=batch_size, every_n_validations=every_n_validations,
            kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, num_real=num_real or 2,
        )  # fmt: skip
        for name, value in counts.items():
            if value < 1:
                raise InputError(f"SampleQuality.{name}: expected a positive integer, got {value}.")
        if num_samples < 2 or (num_real is not None and num_real < 2):
            raise InputError("SampleQuality.num_samples / num_real: FID needs at least 2 images of a kind.")
        if isinstance(feature_net_training, dict):
            feature_net_training = FeatureNetTraining(**feature_net_training)
        self.feature_net, self.num_samples, self.batch_size = feature_net, num_samples, batch_size
        self.num_real, self.every_n_validations, self.seed = num_real, every_n_validations, seed
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.training = feature_net_training or FeatureNetTraining()
        self.net: FeatureNet | None = None  # on the callback: never a submodule of the LightningModule
        self.fid: FrechetInceptionDistance | None = None
        self.kid: KernelInceptionDistance | None = None
        self.cond_acc: MulticlassAccuracy | None = None
        self._has_real, self._real_count = False, 0
        self._validations = 0  # validation runs of the fit so far (checkpointed)
        self.last: dict[str, float] = {}  # the values logged last

    # ---------------------------------------------------------------------------------- setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("fit", "validate"):
            return
        if not callable(getattr(pl_module, "sample", None)):  # checked on every rank, before any work
            raise InputError(
                f"SampleQuality: {type(pl_module).__name__} has no sample() method. "
                "Fix: remove the callback from the recipe, or use a generative model."
            )
        if self.net is None:
            self.net = self._load(trainer)
            self._make_metrics(pl_module)
        self._check_classes(trainer, pl_module)
        self._check_shares(trainer)

    def _load(self, trainer: L.Trainer) -> FeatureNet:
        if self.feature_net is not None:
            return load_feature_net(self.feature_net)
        datamodule = getattr(trainer, "datamodule", None)
        if getattr(datamodule, "kind", None) != "embedded" or not hasattr(datamodule, "hparams"):
            dataset = getattr(datamodule, "dataset", None) or type(datamodule).__name__
            raise InputError(
                f"{FIELD}: no feature net is named, and the data ('{dataset}') is not the embedded scenes, "
                "for which a default one is trained. Fix: train an ImageClassifier on this data (e.g. "
                "lightning fit --config recipes/resnet_se.yaml with the same data.dataset) and name its "
                f"checkpoint (a path or a glob) in {FIELD}."
            )
        return load_feature_net(default_feature_net(datamodule, self.training, trainer.strategy.root_device))

    def _make_metrics(self, pl_module: L.LightningModule) -> None:
        with warnings.catch_warnings():  # KID's note that it keeps every feature: a few thousand here
            warnings.filterwarnings("ignore", message=".*will save all extracted features")
            self.fid = FrechetInceptionDistance(feature=self.net, reset_real_features=False)
            self.kid = KernelInceptionDistance(
                feature=self.net, subsets=self.kid_subsets, subset_size=self.kid_subset_size,
                reset_real_features=False,
            )  # fmt: skip
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes:
            self.cond_acc = MulticlassAccuracy(int(num_classes), average="micro")

    def _check_classes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        num_classes = getattr(pl_module, "num_classes", None)
        if not num_classes:
            return
        names, theirs = class_names(trainer, pl_module), self.net.classes
        if (names and theirs and names != theirs) or self.net.num_classes != num_classes:
            raise InputError(
                f"{FIELD}: the model draws samples of {num_classes} classes ({names}), but the feature net "
                f"classifies {self.net.num_classes} ({theirs}), so val/cond_acc cannot be measured. Fix: use "
                "a feature net trained on the same classes (the default one is, for the embedded scenes)."
            )

    def _check_shares(self, trainer: L.Trainer) -> None:
        world = trainer.world_size
        batches = math.ceil(self.num_samples / self.batch_size)
        if batches < world:
            raise InputError(
                f"SampleQuality.batch_size: {self.num_samples} samples in batches of {self.batch_size} are "
                f"{batches} batches, fewer than the {world} processes that share them. Fix: lower "
                "SampleQuality.batch_size (or raise num_samples)."
            )

    def state_dict(self) -> dict:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict) -> None:
        self._validations = state_dict.get("validations", 0)

    # ------------------------------------------------------------------------------- measuring
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.net is None:
            return
        if trainer.state.fn == TrainerFn.FITTING:
            self._validations += 1
            if self._validations % self.every_n_validations:
                return
        values = self.measure(trainer, pl_module)
        for name, value in values.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)  # equal on every rank

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """Draw the samples and compute the metrics now (every rank must call it: the states sync)."""
        device = pl_module.device
        for metric in (self.fid, self.kid, self.cond_acc):
            if metric is not None:
                metric.to(device)
        self.net.to(device)
        rank, world = trainer.global_rank, trainer.world_size
        if not self._has_real:
            self._embed_real(trainer, pl_module, rank, world)
            self._has_real = True
        num_classes = getattr(pl_module, "num_classes", None)
        with evaluating(pl_module):
            for k, start, stop in self._my_batches(rank, world):
                generator = torch.Generator().manual_seed(batch_seed(self.seed, k))
                labels = torch.arange(start, stop, device=device) % num_classes if num_classes else None
                samples = pl_module.sample(stop - start, labels=labels, generator=generator)  # (n, C, H, W)
                images = to_unit(trainer, pl_module, samples)
                with self.net.remembering():
                    self.fid.update(images, real=False)
                    self.kid.update(images, real=False)
                    if self.cond_acc is not None:
                        self.cond_acc.update(self.net.features_and_logits(images)[1], labels)
        values = {"val/fid": self.fid.compute().float()}
        _one_tensor_per_rank(self.kid)
        with torch.random.fork_rng(devices=[]):  # KID's subsets: seeded, and not from the training's numbers
            torch.manual_seed(self.seed)
            self.kid.subset_size = min(self.kid_subset_size, self.num_samples, self._real_count)
            values["val/kid"] = self.kid.compute()[0].float()
        if self.cond_acc is not None:
            values["val/cond_acc"] = self.cond_acc.compute().float()
        for metric in (self.fid, self.kid, self.cond_acc):
            if metric is not None:
                metric.reset()  # the samples' states; the real images' stay
        self.last = {name: float(value) for name, value in values.items()}
        return values

    def _my_batches(self, rank: int, world: int) -> Iterator[tuple[int, int, int]]:
        """``(k, start, stop)`` of this rank's contiguous share of the sample batches."""
        batches = math.ceil(self.num_samples / self.batch_size)
        for k in range(rank * batches // world, (rank + 1) * batches // world):
            yield k, k * self.batch_size, min(self.num_samples, (k + 1) * self.batch_size)

    def _embed_real(self, trainer: L.Trainer, pl_module: L.LightningModule, rank: int, world: int) -> None:
        """Add this rank's contiguous share of the validation images to the real-image states."""
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not callable(getattr(datamodule, "val_dataloader", None)):
            raise InputError(
                "SampleQuality: the validation images come from the DataModule's val_dataloader(), and this "
                "run has no DataModule. Fix: train with a DataModule (ImageDataModule)."
            )
        loader = datamodule.val_dataloader()
        dataset = loader.dataset
        count = len(dataset) if self.num_real is None else min(self.num_real, len(dataset))
        if count < max(2, world):
            raise InputError(
                f"SampleQuality.num_real: {count} validation images are too few to compare with (at least 2, "
                f"and one per process). Fix: add validation images."
            )
        self._real_count = count
        share = Subset(dataset, range(rank * count // world, (rank + 1) * count // world))
        own = DataLoader(share, batch_size=self.batch_size, collate_fn=loader.collate_fn, num_workers=0)
        with torch.no_grad():
            for batch in own:
                batch = move_data_to_device(batch, pl_module.device)
                batch = datamodule.on_after_batch_transfer(batch, 0)  # the convention the model sees
                images = to_unit(trainer, pl_module, batch["image"] if isinstance(batch, dict) else batch[0])
                with self.net.remembering():
                    self.fid.update(images, real=True)
                    self.kid.update(images, real=True)


def _one_tensor_per_rank(kid: KernelInceptionDistance) -> None:
    """Concatenate KID's feature lists in place: torchmetrics gathers a list state element by element,
    which interleaves the ranks' batches; one tensor per rank keeps each rank's contiguous share
    together, so the gathered features (and KID's subsets) are in the order of one process."""
    for name in ("real_features", "fake_features"):
        features = getattr(kid, name)
        if isinstance(features, list) and len(features) > 1:
            setattr(kid, name, [torch.cat(features)])


def batch_seed(seed: int, k: int) -> int:
    """The seed of sample batch ``k``: a hash of ``(seed, k)``, far apart for neighbouring values."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0] >> 1)

"""Batched image augmentation on the device: crops, flips, RandAugment, MixUp and CutMix.

:class:`ImageAugment` is the recipe-facing settings; :class:`BatchAugment` applies them to a
whole batch of images in ``[0, 1]`` on whatever device the batch is on (kornia), after the
DataLoader has moved it there. MixUp and CutMix are written here rather than taken from kornia,
so that their soft targets come out as a plain ``(B, num_classes)`` tensor.
"""

import math
from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.augmentation.auto import RandAugment
from torch import nn

from lightning_seq.errors import InputError

#: RandAugment's candidate operations as kornia policy entries ``(name, low, high)``. kornia maps
#: the magnitude ``m`` to ``low + (high - low) * m / 30`` (a random sign for the symmetric
#: geometric ones; posterize runs backwards, keeping fewer bits as ``m`` grows). Its default policy
#: makes some operations weaker as ``m`` grows (``solarize`` inverts pixels above ``m / 30``; its
#: ``solarize_add`` also solarizes at a uniformly random threshold whatever ``m``), and makes
#: brightness, contrast, colour and sharpness the identity at ``m = 15`` and *duller* below it (a
#: factor ``0.64`` at ``m = 9``). Here every operation gets stronger with ``m``, as in the paper:
#: the enhancements go from the identity (``1.0``) up, and the two solarizes and invert (which no
#: magnitude controls, and which changes what colour an object is) are left out.
RANDAUGMENT_POLICY = [
    [("auto_contrast", 0, 1)],
    [("equalize", 0, 1)],
    [("rotate", -30.0, 30.0)],
    [("posterize", 4.0, 8.0)],
    [("color", 1.0, 1.9)],
    [("contrast", 1.0, 1.9)],
    [("brightness", 1.0, 1.9)],
    [("sharpness", 1.0, 1.9)],
    [("shear_x", -0.3, 0.3)],
    [("shear_y", -0.3, 0.3)],
    [("translate_x", -0.45, 0.45)],
    [("translate_y", -0.45, 0.45)],
]

RANDAUGMENT_GROUPS = 8


@dataclass
class ImageAugment:
    """Training-time augmentation settings (evaluation batches are never augmented).

    Args:
        crop_scale: random-resized-crop area range, as fractions of the image; None: no crop.
        crop_ratio: its aspect ratio (width / height) range.
        hflip: flip half the images left to right.
        randaugment_n: RandAugment operations per image (0: off; at most 12).
        randaugment_m: their magnitude, in (0, 30) exclusive; every operation grows with it
            (see :data:`RANDAUGMENT_POLICY`).
        mixup_alpha: MixUp's Beta(alpha, alpha) parameter; 0: no MixUp.
        cutmix_alpha: CutMix's Beta(alpha, alpha) parameter; 0: no CutMix.
        mix_prob: probability that a batch is mixed at all (when either alpha is positive).
        switch_prob: probability of CutMix rather than MixUp when both are on.
    """

    crop_scale: tuple[float, float] | None = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    randaugment_n: int = 0
    randaugment_m: int = 9
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        if self.crop_scale is not None:
            self.crop_scale = _pair("crop_scale", self.crop_scale)
            if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
                raise InputError(
                    f"data.augment.crop_scale: expected 0 < low <= high <= 1, got {list(self.crop_scale)}. "
                    "Fix: e.g. [0.35, 1.0], or null for no random crop."
                )
        self.crop_ratio = _pair("crop_ratio", self.crop_ratio)
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise InputError(
                f"data.augment.crop_ratio: expected 0 < low <= high, got {list(self.crop_ratio)}. "
                "Fix: e.g. [0.75, 1.333]."
            )
        if not 0 <= self.randaugment_n <= len(RANDAUGMENT_POLICY):
            raise InputError(
                f"data.augment.randaugment_n: expected 0 (off) to {len(RANDAUGMENT_POLICY)} operations, "
                f"got {self.randaugment_n}."
            )
        if not 0 < self.randaugment_m < 30:
            raise InputError(
                f"data.augment.randaugment_m: expected a magnitude in (0, 30) exclusive, got "
                f"{self.randaugment_m}. Fix: e.g. 9."
            )
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise InputError(
                    f"data.augment.{name}: expected >= 0 (0 turns it off), got {getattr(self, name)}."
                )
        for name in ("mix_prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(
                    f"data.augment.{name}: expected a probability in [0, 1], got {getattr(self, name)}."
                )

    @property
    def mixing(self) -> bool:
        """Whether batches get soft targets (MixUp or CutMix is on)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def _pair(name: str, value) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2:
        raise InputError(f"data.augment.{name}: expected two numbers [low, high], got {list(value)}.")
    return values  # type: ignore[return-value]


class BatchAugment(nn.Module):
    """Random resized crop, horizontal flip and RandAugment over a batch, on the batch's device.

    Crops and flips are drawn per image. kornia's RandAugment draws its operations once per call
    (magnitude signs per image), so a batch goes through it in 8 groups, each with its own operations.

    Args:
        config: the settings.
        image_size: side of the square output images.
    """

    def __init__(self, config: ImageAugment, image_size: int):
        super().__init__()
        self.config = config
        geometric = []
        if config.crop_scale is not None:
            geometric.append(
                K.RandomResizedCrop(
                    (image_size, image_size),
                    scale=config.crop_scale,
                    ratio=config.crop_ratio,
                    align_corners=False,
                )
            )
        if config.hflip:
            geometric.append(K.RandomHorizontalFlip())
        self.geometric = K.AugmentationSequential(*geometric) if geometric else None
        # RandAugment's colour operation only takes RGB: grey batches go through it as 3 equal channels.
        self.randaugment = (
            RandAugment(config.randaugment_n, config.randaugment_m, policy=RANDAUGMENT_POLICY)
            if config.randaugment_n
            else None
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment ``(B, C, H, W)`` float images in ``[0, 1]`` (C = 1 or 3); same shape, dtype and device."""
        if self.geometric is not None:
            images = self.geometric(images)
        if self.randaugment is not None:
            channels = images.shape[1]
            if channels == 1:
                images = images.expand(-1, 3, -1, -1)  # (B, 3, H, W), grey stays grey
            # kornia draws one set of operations per call: 8 groups give a batch 8 different sets.
            groups = images.split(math.ceil(images.shape[0] / RANDAUGMENT_GROUPS))
            images = torch.cat([self.randaugment(group) for group in groups])
            if channels == 1:
                images = images.mean(dim=1, keepdim=True)  # (B, 1, H, W)
        return images.clamp(0.0, 1.0)

    def mix(
        self, images: torch.Tensor, labels: torch.Tensor, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp or CutMix a batch with a permutation of itself; returns images and soft targets.

        With ``lam ~ Beta(alpha, alpha)`` and a random permutation ``p`` of the batch:

        * MixUp: ``x_i' = lam * x_i + (1 - lam) * x_p(i)``;
        * CutMix: ``x_i'`` is ``x_i`` with a box of area ``(1 - lam) H W`` pasted from ``x_p(i)``;
          the box is clipped at the borders and ``lam`` is then corrected to
          ``1 - box_area / (H W)``, the share of ``x_i`` actually kept.

        Targets are ``y_i' = lam * onehot(y_i) + (1 - lam) * onehot(y_p(i))``. One of the two is used
        per batch (CutMix with probability ``switch_prob`` when both are on), on a share
        ``mix_prob`` of batches; unmixed batches get one-hot targets.

        Args:
            images: ``(B, C, H, W)``.
            labels: ``(B,)`` class ids.
            num_classes: width of the targets.

        Returns:
            The mixed images ``(B, C, H, W)`` and targets ``(B, num_classes)`` (rows sum to 1).
        """
        cfg = self.config
        targets = F.one_hot(labels, num_classes).to(images.dtype)  # (B, K)
        if not cfg.mixing or _uniform() >= cfg.mix_prob:
            return images, targets
        cutmix = cfg.cutmix_alpha > 0 and (cfg.mixup_alpha <= 0 or _uniform() < cfg.switch_prob)
        alpha = cfg.cutmix_alpha if cutmix else cfg.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(images.shape[0]).to(images.device)
        if cutmix:
            images, lam = cutmix_images(images, perm, lam)
        else:
            images = lam * images + (1.0 - lam) * images[perm]
        return images, lam * targets + (1.0 - lam) * targets[perm]


def cutmix_images(images: torch.Tensor, perm: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a random box of about ``(1 - lam)`` of the area from ``images[perm]``; returns the true ``lam``.

    The box has the image's aspect ratio and sides ``sqrt(1 - lam)`` times the image's, its centre
    uniform over the image; the part outside the image is cut off.
    """
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = round(height * cut), round(width * cut)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h - cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w - cut_w // 2, width)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm, :, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def _uniform() -> float:
    """A draw in [0, 1) from torch's CPU generator (seeded by ``seed_everything``; no device sync)."""
    return float(torch.rand(()))

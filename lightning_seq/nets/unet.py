"""The U-Net of DDPM (Ho et al., 2020): the noise ``eps`` in ``x_t``, from ``x_t``, ``t`` (and a class).

Layout, as in the paper's code (``diffusion_tf/models/unet.py``), for ``L`` levels at sides
``S, S/2, ..., S/2**(L-1)`` with ``c_i = base_channels * channel_mults[i]`` channels::

    e     = TimeEmbedding(t) [+ ClassEmbedding(y)]                           (B, 4 * base)
    h     = Conv3x3(x)                                                       (B, base, S, S)
    down: level i: num_res_blocks x [ResBlock -> c_i (+ attention)], then Downsample (not after the last)
          every output is kept as a skip connection (with conv_in's: 1 + L * n + L - 1 of them)
    mid:  ResBlock, SpatialSelfAttention, ResBlock                            at the lowest side
    up:   level i from L-1 to 0: (num_res_blocks + 1) x [concat(h, skip) -> ResBlock -> c_i (+ attention)],
          then Upsample (not after level 0)
    out   = Conv3x3(SiLU(GroupNorm(h))) -> in_channels, starting at zero      (B, C, S, S)

"Attention" is :class:`~lightning_seq.layers.SpatialSelfAttention` after every residual block of a level
whose side is in ``attention_resolutions``; the middle always has it. The ``ddpm-cifar10`` preset is the
paper's CIFAR-10 model, 35.7M parameters (35,746,307 here, on 32 x 32 x 3).

Class conditioning (``num_classes`` set): an embedding of ``num_classes + 1`` rows is added to the time
embedding; the last row, index ``null_label == num_classes``, is "no class", which a classifier-free
guidance trainer swaps in for a fraction of the labels and a sampler uses for the unconditional branch.

Net contract for the diffusion module: ``net(x_t, t, labels=None) -> eps (B, C, S, S)`` with the
attributes ``image_size``, ``in_channels``, ``num_classes`` and ``null_label``. Pure torch: no Lightning.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.resblocks import (
    Downsample,
    ResBlock,
    SpatialSelfAttention,
    TimeEmbedding,
    Upsample,
    ddpm_init_,
    group_norm,
)
from lightning_seq.nets._presets import Presets

__all__ = ["UNet"]

_FIELD = "model.init_args.net.init_args"


class _Stage(nn.Module):
    """A residual block, then self-attention when its level asks for it: ``(h, e) -> h'``."""

    def __init__(self, res: ResBlock, attention: SpatialSelfAttention | None) -> None:
        super().__init__()
        self.res, self.attention = res, attention

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        h = self.res(h, emb)
        return h if self.attention is None else self.attention(h)


class _Level(nn.Module):
    """One side of the U: its stages and the resampling after them (None at the bottom / top)."""

    def __init__(self, stages: list[_Stage], resample: nn.Module | None) -> None:
        super().__init__()
        self.stages, self.resample = nn.ModuleList(stages), resample


class UNet(Presets, nn.Module):
    """The DDPM noise-prediction U-Net (see the module docstring), unconditional or class-conditional.

    .. math::
        \\hat\\epsilon_\\theta(x_t, t, y) \\approx \\epsilon, \\qquad
        x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\epsilon

    Presets (parameters on 32 x 32 x 3, unconditional): ``nano`` (base 8, two levels, one block each,
    attention only in the middle: 41,899) is the tests' size; ``small`` (base 32, mults 1-2-2, attention
    at 8 x 8: 1,624,323) trains on a CPU; ``ddpm-cifar10`` (base 128, mults 1-2-2-2, attention at
    16 x 16: 35,746,307) is Ho et al.'s CIFAR-10 model.

    Args:
        image_size: side ``S`` of the square images; divisible by ``2**(len(channel_mults) - 1)``
            (linked from the data).
        in_channels: image channels, in and out (linked from the data).
        base_channels: channels of the first level; the time embedding is four times as wide.
        channel_mults: channels of each level as multiples of ``base_channels``; one level per entry, the
            side halved between levels.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: sides at which the levels add self-attention after each residual block
            (the middle always has it); each must be a level's side.
        heads: attention heads; must divide every level's channels.
        dropout: dropout rate inside every residual block, in ``[0, 1)``.
        num_classes: classes to condition on (linked from labelled data); ``None`` is unconditional.
        groups: most GroupNorm groups (fewer where the channels need it).
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {
            "base_channels": 8,
            "channel_mults": (1, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (),  # the middle's attention, at the lowest side, is the only one
            "dropout": 0.0,
            "groups": 4,
        },
        "small": {
            "base_channels": 32,
            "channel_mults": (1, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (8,),
            "dropout": 0.1,
        },
        "ddpm-cifar10": {
            "base_channels": 128,
            "channel_mults": (1, 2, 2, 2),
            "num_res_blocks": 2,
            "attention_resolutions": (16,),
            "dropout": 0.1,
        },
    }

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        base_channels: int = 64,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: tuple[int, ...] = (16,),
        heads: int = 1,
        dropout: float = 0.1,
        num_classes: int | None = None,
        groups: int = 32,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        channel_mults, attention_resolutions = tuple(channel_mults), tuple(attention_resolutions)
        _check(image_size, in_channels, base_channels, channel_mults, num_res_blocks,
               attention_resolutions, heads, dropout, num_classes, groups)  # fmt: skip
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.null_label = num_classes  # the extra embedding row: "no class" (None when unconditional)
        emb_dim = 4 * base_channels
        self.time_embedding = TimeEmbedding(base_channels, emb_dim)
        self.class_embedding = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.conv_in = ddpm_init_(nn.Conv2d(in_channels, base_channels, 3, padding=1))

        def stage(c_in: int, c_out: int, side: int) -> _Stage:
            attention = SpatialSelfAttention(c_out, heads, groups) if side in attention_resolutions else None
            return _Stage(ResBlock(c_in, c_out, emb_dim, dropout, groups), attention)

        last = len(channel_mults) - 1
        skips, c, side = [base_channels], base_channels, image_size  # channels of each skip connection
        self.down = nn.ModuleList()
        for i, mult in enumerate(channel_mults):
            stages = []
            for _ in range(num_res_blocks):
                stages.append(stage(c, base_channels * mult, side))
                c = base_channels * mult
                skips.append(c)
            self.down.append(_Level(stages, Downsample(c) if i < last else None))
            if i < last:
                skips.append(c)
                side //= 2
        self.middle = _Stage(ResBlock(c, c, emb_dim, dropout, groups), SpatialSelfAttention(c, heads, groups))
        self.middle_out = ResBlock(c, c, emb_dim, dropout, groups)
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mults))):
            stages = []
            for _ in range(num_res_blocks + 1):
                stages.append(stage(c + skips.pop(), base_channels * mult, side))
                c = base_channels * mult
            self.up.append(_Level(stages, Upsample(c) if i > 0 else None))
            side *= 2
        self.norm_out = group_norm(c, groups)
        self.conv_out = ddpm_init_(nn.Conv2d(c, in_channels, 3, padding=1), zero=True)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """The predicted noise ``(B, C, S, S)`` of ``x (B, C, S, S)`` at timesteps ``t (B,)``.

        Args:
            x: the noisy images ``x_t``.
            t: one timestep per image (integers, or floats for continuous time).
            labels: one class per image ``(B,)`` for a conditional net, where ``null_label`` means none;
                None gives every image the null label. An unconditional net takes none.
        """
        self._check_inputs(x, t, labels)
        emb = self.time_embedding(t)  # (B, 4 base)
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full_like(t, self.null_label, dtype=torch.long)  # (B,)
            emb = emb + self.class_embedding(labels)  # (B, 4 base)
        h = self.conv_in(x)  # (B, base, S, S)
        skips = [h]
        for level in self.down:
            for stage in level.stages:
                h = stage(h, emb)  # (B, c_i, side, side)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)  # (B, c_i, side / 2, side / 2)
                skips.append(h)
        h = self.middle_out(self.middle(h, emb), emb)  # (B, c_last, S / 2**(L-1), S / 2**(L-1))
        for level in self.up:
            for stage in level.stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)  # (B, c + c_skip, ...) -> (B, c_i, ...)
            if level.resample is not None:
                h = level.resample(h)  # (B, c_i, 2 side, 2 side)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, S, S)

    def _check_inputs(self, x: Tensor, t: Tensor, labels: Tensor | None) -> None:
        """Shapes only (no host sync): images of the net's size, one timestep (and label) per image."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"UNet: expected images (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}. "
                f"Fix: pass images of the data the net was built for, or set {_FIELD}.image_size and "
                f"{_FIELD}.in_channels to match them."
            )
        batch = x.shape[0]
        if tuple(t.shape) != (batch,):
            raise InputError(
                f"UNet: expected timesteps t of shape ({batch},), one per image, got {tuple(t.shape)}. "
                "Fix: pass t (B,), e.g. torch.full((B,), step)."
            )
        if labels is not None and self.num_classes is None:
            raise InputError(
                f"UNet: labels were given, but the net is unconditional (num_classes=None). Fix: set "
                f"{_FIELD}.num_classes (linked from labelled data), or pass no labels."
            )
        if labels is not None and tuple(labels.shape) != (batch,):
            raise InputError(
                f"UNet: expected labels of shape ({batch},), one class index per image (null_label="
                f"{self.null_label} for none), got {tuple(labels.shape)}. Fix: pass labels (B,) as integers."
            )


# ---------------------------------------------------------------------------------------- helpers
def _nearest_multiple(size: int, factor: int) -> int:
    """The multiple of ``factor`` nearest to ``size`` (the larger one on a tie), at least ``factor``."""
    return max(factor, (size + factor // 2) // factor * factor)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(
    image_size: Any,
    in_channels: Any,
    base_channels: Any,
    channel_mults: tuple[Any, ...],
    num_res_blocks: Any,
    attention_resolutions: tuple[Any, ...],
    heads: Any,
    dropout: Any,
    num_classes: Any,
    groups: Any,
) -> None:
    """An :class:`InputError` naming the net's field for the first argument it cannot be built with."""
    sizes = {  # {field: the fix to name}
        "image_size": "it is linked from the data: check data.init_args.image_size",
        "in_channels": "it is linked from the data: check data.init_args.channels",
        "base_channels": "e.g. 128 (the paper's)",
        "num_res_blocks": "e.g. 2 (the paper's)",
        "heads": "e.g. 1 (the paper's)",
        "groups": "e.g. 32 (the paper's)",
    }
    values = {"image_size": image_size, "in_channels": in_channels, "base_channels": base_channels,
              "num_res_blocks": num_res_blocks, "heads": heads, "groups": groups}  # fmt: skip
    for name, fix in sizes.items():
        if not _positive(values[name]):
            raise InputError(
                f"{_FIELD}.{name}: expected a positive integer, got {values[name]!r}. "
                f"Fix: set it to at least 1 ({fix})."
            )
    if num_classes is not None and not _positive(num_classes):
        raise InputError(
            f"{_FIELD}.num_classes: expected None (unconditional) or at least 1 class, got {num_classes!r}. "
            "Fix: leave it to the data's link, or set it to null."
        )
    if not channel_mults or not all(_positive(m) for m in channel_mults):
        raise InputError(
            f"{_FIELD}.channel_mults: expected one positive multiple of base_channels per level, got "
            f"{list(channel_mults)}. Fix: set it to e.g. [1, 2, 2] (three levels)."
        )
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        raise InputError(
            f"{_FIELD}.dropout: expected a rate in [0, 1), got {dropout!r}. Fix: set it to e.g. 0.1 (the "
            "paper's on CIFAR-10) or 0 for none."
        )
    halvings = len(channel_mults) - 1
    factor = 2**halvings
    if image_size % factor:
        raise InputError(
            f"{_FIELD}.image_size: the U-Net halves the side {halvings} times (channel_mults has "
            f"{len(channel_mults)} levels), so image_size must be divisible by 2**{halvings} = {factor}; "
            f"got {image_size}. Fix: resize the images (data.init_args.image_size) to a multiple of "
            f"{factor}, e.g. {_nearest_multiple(image_size, factor)}, or use fewer levels in "
            f"{_FIELD}.channel_mults."
        )
    sides = [image_size // 2**i for i in range(len(channel_mults))]
    for resolution in attention_resolutions:
        if resolution not in sides:
            raise InputError(
                f"{_FIELD}.attention_resolutions: no level runs at side {resolution!r}; with image_size="
                f"{image_size} and {len(channel_mults)} levels the sides are {', '.join(map(str, sides))}. "
                "Fix: list sides from those, or [] for attention only in the middle."
            )
    for mult in dict.fromkeys(channel_mults):
        if (base_channels * mult) % heads:
            raise InputError(
                f"{_FIELD}.heads: {heads} heads do not divide the {base_channels * mult} channels of a "
                f"level (base_channels={base_channels} x {mult}). Fix: choose heads dividing every level's "
                "channels, e.g. 1."
            )

"""Pixel conventions: what an image batch holds, and the way back to ``[0, 1]`` for drawing and metrics.

========== ===================================== ====================================================
convention batch                                   from uint8 ``x``
========== ===================================== ====================================================
normalized float, mean 0 and std 1 per channel     ``(x / 255 - mean) / std`` (classifiers)
unit       float in ``[0, 1]``                     ``x / 255`` (VAEs)
symmetric  float in ``[-1, 1]``                    ``x / 127.5 - 1`` (GANs, diffusion)
uint8      int64 in ``0..255``                     ``x`` (PixelCNN's targets; the model casts)
binary     float 0 or 1                            ``x / 255 >= 0.5``, or Bernoulli(``x / 255``)
========== ===================================== ====================================================

Dynamic binarisation draws every pixel from a uniform number that a counter-based hash derives
from ``(seed, stream, epoch, item index, pixel position)`` (:func:`item_uniforms`): the same item
in the same epoch gets the same draws on any device, in any batch and after a resume, and another
epoch gets new ones, without a random generator state to carry. Pure torch: no Lightning.
"""

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import Tensor

Pixels = Literal["normalized", "unit", "symmetric", "uint8", "binary"]
PIXELS: tuple[str, ...] = get_args(Pixels)

Stats = Tensor | Sequence[float] | None

_MASK = 0xFFFFFFFF  # hashes work on 32-bit values held in int64, so no product overflows
_MIX = 0x45D9F3B
_GOLDEN = 0x9E3779B9
_NORMALS = 0x6E6F726D  # "norm": the streams of item_normals, apart from binarisation's 0, 1...


def from_uint8(images_uint8: Tensor, pixels: Pixels, mean: Stats = None, std: Stats = None) -> Tensor:
    """A uint8 batch ``(..., C, H, W)`` as the model sees it in convention ``pixels`` (binary: static).

    Args:
        images_uint8: integer pixels in ``0..255``.
        pixels: the convention.
        mean: per-channel mean ``(C,)`` on a 0-1 scale, for ``normalized``.
        std: per-channel standard deviation ``(C,)``, for ``normalized``.
    """
    return from_unit(images_uint8.float().div_(255.0), pixels, mean, std)


def from_unit(
    images: Tensor, pixels: Pixels, mean: Stats = None, std: Stats = None, uniforms: Tensor | None = None
) -> Tensor:
    """Float images in ``[0, 1]`` ``(..., C, H, W)`` in convention ``pixels``.

    Args:
        images: intensities in ``[0, 1]``.
        pixels: the convention.
        mean: per-channel mean ``(C,)``, for ``normalized``.
        std: per-channel standard deviation ``(C,)``, for ``normalized``.
        uniforms: for ``binary``, uniform numbers in ``[0, 1)`` of the images' shape: a pixel is 1 with
            probability equal to its intensity (dynamic binarisation); None: 1 where the intensity is
            at least 0.5 (static).
    """
    if pixels == "normalized":
        mean, std = _stats(mean, std, images)
        return (images - mean) / std
    if pixels == "unit":
        return images
    if pixels == "symmetric":
        return images * 2.0 - 1.0
    if pixels == "uint8":
        return images.mul(255.0).round_().clamp_(0, 255).long()
    if pixels == "binary":
        ones = uniforms < images if uniforms is not None else images >= 0.5
        return ones.to(images.dtype)
    raise ValueError(f"unknown pixels {pixels!r}; expected one of {', '.join(PIXELS)}")


def to_unit(images: Tensor, pixels: Pixels, mean: Stats = None, std: Stats = None) -> Tensor:
    """Images in convention ``pixels`` (a batch, or a model's samples) as floats in ``[0, 1]``.

    Float images keep their dtype; integer ones become float32. Values outside the convention's
    range (a model's raw output) are clamped.
    """
    if not images.is_floating_point():
        images = images.float()
    if pixels == "normalized":
        mean, std = _stats(mean, std, images)
        images = images * std + mean
    elif pixels == "symmetric":
        images = (images + 1.0) / 2.0
    elif pixels == "uint8":
        images = images / 255.0
    elif pixels not in ("unit", "binary"):
        raise ValueError(f"unknown pixels {pixels!r}; expected one of {', '.join(PIXELS)}")
    return images.clamp(0.0, 1.0)


def binarize(
    images: Tensor, index: Tensor | None = None, seed: int = 0, epoch: int = 0, stream: int = 0
) -> Tensor:
    """Float 0/1 images from intensities in ``[0, 1]`` ``(B, C, H, W)``: static, or dynamic with ``index``.

    Args:
        images: intensities in ``[0, 1]``.
        index: ``(B,)`` item indices: draw Bernoulli(intensity) per pixel (:func:`item_uniforms`);
            None: threshold at 0.5.
        seed: the run's seed.
        epoch: the epoch (new draws every epoch).
        stream: separates draws that must differ for the same item and epoch (e.g. train and evaluation).
    """
    uniforms = None if index is None else item_uniforms(index, images.shape[1:], seed, epoch, stream)
    return from_unit(images, "binary", uniforms=uniforms)


def item_uniforms(
    index: Tensor, shape: Sequence[int], seed: int = 0, epoch: int = 0, stream: int = 0
) -> Tensor:
    """Uniforms in ``[0, 1)`` ``(B, *shape)``, functions of ``(seed, stream, epoch, index[b], position)``.

    Integer hashing on the index's device (24 bits per number); deterministic across devices, batch
    compositions and processes.
    """
    key = _mix(_mix(_mix(seed & _MASK) ^ (stream & _MASK)) ^ (epoch & _MASK))
    items = _mix(_mix(index.long() & _MASK) ^ key)  # (B,)
    count = 1
    for size in shape:
        count *= int(size)
    positions = torch.arange(count, device=index.device, dtype=torch.long) * _GOLDEN & _MASK  # (N,)
    bits = _mix(_mix(items[:, None] ^ positions[None, :]) ^ key)  # (B, N)
    uniforms = (bits >> 8).float() * (1.0 / (1 << 24))  # (B, N) in [0, 1)
    return uniforms.view(index.shape[0], *shape)  # (B, *shape)


def item_normals(
    index: Tensor, shape: Sequence[int], seed: int = 0, epoch: int = 0, stream: int = 0
) -> Tensor:
    """Standard normals ``(B, *shape)``, functions of ``(seed, stream, epoch, index[b], position)``.

    Box-Muller on two streams of :func:`item_uniforms`, apart from those of dynamic binarisation:
    ``sqrt(-2 ln(1 - u1)) cos(2 pi u2)``. The same item gets the same draws on any device, in any batch,
    in any process and after a resume (e.g. a VAE's reparameterisation noise under DDP).
    """
    u1 = item_uniforms(index, shape, seed, epoch, (2 * stream) ^ _NORMALS)
    u2 = item_uniforms(index, shape, seed, epoch, (2 * stream + 1) ^ _NORMALS)
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)


def _mix(x):
    """A 32-bit integer hash (two multiply-xorshift rounds); works on ints and int64 tensors alike."""
    x = ((x >> 16) ^ x) * _MIX & _MASK
    x = ((x >> 16) ^ x) * _MIX & _MASK
    return (x >> 16) ^ x


def _stats(mean: Stats, std: Stats, images: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std as ``(C, 1, 1)`` tensors on the images' device and dtype, to broadcast over them."""
    if mean is None or std is None:
        raise ValueError("the 'normalized' pixel convention needs the per-channel mean and std")
    return tuple(
        torch.as_tensor(t, dtype=images.dtype, device=images.device).reshape(-1, 1, 1) for t in (mean, std)
    )  # type: ignore[return-value]

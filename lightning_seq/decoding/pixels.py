"""Pixel-by-pixel sampling of autoregressive image models (PixelCNN, Gated PixelCNN, Row LSTM).

The sampler drives any model through one function of the partly drawn images::

    logits_fn(images (B, C, H', W), labels) -> params (B, P, C, H', W)

``images`` hold the values drawn so far in the likelihood's pixel convention (uint8 values as int64
``0..255``, binary as float 0/1; values not drawn yet are 0), and ``params`` are the likelihood's
parameters of every channel value (:mod:`lightning_seq.layers.likelihoods`). Values are drawn in
raster order, channel by channel inside a pixel, for the whole batch at once:
``x_{c,i,j} ~ softmax(filter_logits(log p(x_{c,i,j} = v | x_{<}), temperature, top_k, top_p))``,
reusing the text strategies' filter (:func:`~lightning_seq.decoding.strategies.filter_logits`) over
the support's ``V`` values (2 binary, 256 uint8).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_seq.decoding.strategies import filter_logits
from lightning_seq.layers.likelihoods import PixelLikelihood

__all__ = ["LogitsFn", "sample_pixels", "support", "value_log_probs"]

LogitsFn = Callable[[Tensor, Tensor | None], Tensor]


def support(pixels: str, device: torch.device | str | None = None) -> Tensor:
    """The ``V`` values a pixel of convention ``pixels`` takes: binary ``[0., 1.]``, uint8 ``0..255``
    (int64), unit ``k / 255``."""
    if pixels == "binary":
        return torch.tensor([0.0, 1.0], device=device)
    if pixels == "uint8":
        return torch.arange(256, device=device)
    if pixels == "unit":
        return torch.arange(256, device=device, dtype=torch.float32) / 255.0
    raise ValueError(f"no discrete support for pixels {pixels!r}; expected binary, uint8 or unit")


def value_log_probs(likelihood: PixelLikelihood, params: Tensor, values: Tensor) -> Tensor:
    """``log p(x = v | params)`` of every value ``v`` of the support ``values (V,)``: ``(B, V)``.

    Args:
        likelihood: the per-value distribution.
        params: ``(B, P)``, one channel value's parameters.
        values: the support, in the likelihood's convention.
    """
    if likelihood.name == "categorical":  # its parameters are these logits already
        return params.float().log_softmax(-1)
    b, p, v = params.size(0), params.size(1), values.numel()
    expanded = params[:, :, None, None, None].expand(b, p, 1, 1, v)  # (B, P, 1, 1, V)
    candidates = values.view(1, 1, 1, v).expand(b, 1, 1, v)  # (B, 1, 1, V)
    return likelihood.log_prob_values(expanded, candidates).view(b, v)  # (B, V)


@torch.no_grad()
def sample_pixels(
    logits_fn: LogitsFn,
    shape: tuple[int, int, int, int],
    likelihood: PixelLikelihood,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    labels: Tensor | None = None,
    record: bool = False,
    device: torch.device | str | None = None,
    crop_rows: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Draw images value by value: ``H * W * C`` calls of ``logits_fn``, each for the whole batch.

    Each value is drawn by inverting the filtered distribution's CDF at a uniform number taken from
    ``generator`` on the generator's device, so a generator state gives the same images on any device.

    Args:
        logits_fn: ``(images, labels) -> params`` (see the module docstring).
        shape: ``(B, C, H, W)`` of the images.
        likelihood: the distribution of a value given its parameters; its first pixel convention is
            the images'.
        temperature: softmax temperature, > 0 (below 1: sharper).
        top_k: draw among the ``k`` most likely values only.
        top_p: draw from the nucleus of mass ``top_p`` only.
        generator: the source of randomness.
        labels: ``(B,)`` class ids handed to ``logits_fn`` (None: unconditional).
        record: also return the log-probability of every drawn value under the model (before
            temperature and filtering), so that their sum is the image's ``log p(x)``.
        device: where the images are built (default the CPU).
        crop_rows: give ``logits_fn`` only rows ``0..i`` while drawing row ``i`` (valid for a model whose
            outputs at row ``i`` do not depend on later rows, as causal fully convolutional and
            row-recurrent nets; about twice as fast).

    Returns:
        ``(B, C, H, W)`` images in the convention; with ``record``, also ``(B, C, H, W)`` float log-probs.
    """
    _, channels, height, width = shape
    values = support(likelihood.pixels[0], device)  # (V,)
    images = torch.zeros(shape, dtype=values.dtype, device=device)  # (B, C, H, W)
    log_probs = torch.zeros(shape, device=device)
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                visible = images[:, :, : i + 1] if crop_rows else images  # (B, C, i + 1 or H, W)
                params = logits_fn(visible, labels)[:, :, c, i, j]  # (B, P)
                log_p = value_log_probs(likelihood, params, values)  # (B, V)
                chosen = _draw(filter_logits(log_p, temperature, top_k, top_p), generator)  # (B,)
                images[:, c, i, j] = values[chosen]
                log_probs[:, c, i, j] = log_p.gather(1, chosen[:, None])[:, 0]
    return (images, log_probs) if record else images


def _draw(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """One index per row of ``logits (B, V)``: the first whose CDF exceeds a uniform ``u``."""
    cdf = logits.softmax(-1).cumsum(-1)  # (B, V)
    cdf = cdf / cdf[:, -1:]  # the last entry exactly 1, so some index is always chosen
    where = generator.device if generator is not None else logits.device
    u = torch.rand(logits.size(0), 1, generator=generator, device=where).to(logits.device)  # (B, 1)
    return (cdf <= u).sum(-1)  # (B,); values of zero probability never chosen

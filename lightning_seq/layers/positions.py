"""Absolute position encodings added to token embeddings: fixed sinusoids and learned vectors.

Both take ``x (B, T, dim)`` and an ``offset``, the position of ``x[:, 0]`` in the whole sequence,
so that incremental decoding (one new token after ``offset`` cached ones) gets the right rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError


def sinusoidal_embedding(positions: Tensor, dim: int) -> Tensor:
    """The sinusoids of Vaswani et al. (2017) at arbitrary positions, ``(N,) -> (N, dim)``.

    .. math::
        PE_{p, 2i} = \\sin\\big(p / 10000^{2i/d}\\big), \\qquad
        PE_{p, 2i+1} = \\cos\\big(p / 10000^{2i/d}\\big)

    The same columns (sine and cosine interleaved) and frequencies as :func:`sinusoidal_table`, for
    positions that need not be ``0 ... T - 1``: diffusion timesteps, offsets, fractional positions.
    Computed in float64 and returned as float32 on the positions' device.

    Args:
        positions: ``(N,)``, integer or float.
        dim: Width ``d`` (odd widths drop the last cosine column).
    """
    pos = positions.to(torch.float64)[:, None]  # (N, 1)
    exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)  # (ceil(d/2),)
    inv_freq = torch.exp(exponents * (-math.log(10000.0) / dim))  # 10000^(-2i/d)
    angles = pos * inv_freq  # (N, ceil(d/2))
    table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (N, 2 ceil(d/2)) interleaved
    return table[:, :dim].float()  # (N, d)


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """The fixed encodings of Vaswani et al. (2017) for positions ``0 ... length - 1``, ``(length, dim)``.

    :func:`sinusoidal_embedding` of ``arange(length)``.

    Args:
        length: Number of positions, ``0 ... length - 1``.
        dim: Width ``d`` (odd widths drop the last cosine column).
    """
    return sinusoidal_embedding(torch.arange(length), dim)  # (T, d)


def _check_range(owner: str, offset: int, length: int, max_len: int | None) -> None:
    if max_len is not None and offset + length > max_len:
        raise InputError(
            f"{owner}: positions {offset}..{offset + length - 1} exceed max_len={max_len}; use sequences "
            f"(context plus generated tokens) of at most {max_len} tokens, or build the model with a "
            "larger max_len."
        )


class SinusoidalPositions(nn.Module):
    """Adds :func:`sinusoidal_table` rows: ``x + PE[offset : offset + T]``.

    Args:
        dim: Model width.
        max_len: Longest sequence allowed; None extends the table on demand (no limit).
    """

    def __init__(self, dim: int, max_len: int | None = None) -> None:
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.register_buffer("table", sinusoidal_table(max_len or 0, dim), persistent=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_len={self.max_len}"

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``(B, T, dim) -> (B, T, dim)``."""
        t = x.shape[1]
        _check_range("SinusoidalPositions", offset, t, self.max_len)
        if offset + t > self.table.shape[0]:
            length = max(offset + t, 2 * self.table.shape[0])
            self.table = sinusoidal_table(length, self.dim).to(self.table.device)
        return x + self.table[offset : offset + t].to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a learned vector per position: ``x + P[offset : offset + T]`` (GPT-2's ``wpe``).

    Args:
        max_len: Number of positions with a vector; longer sequences are an :class:`InputError`.
        dim: Model width.
    """

    no_weight_decay = ("weight",)  # read by the optimizer set-up, like every position embedding

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.max_len, self.dim = max_len, dim
        self.weight = nn.Parameter(torch.empty(max_len, dim))
        nn.init.normal_(self.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"max_len={self.max_len}, dim={self.dim}"

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """``(B, T, dim) -> (B, T, dim)``."""
        t = x.shape[1]
        _check_range("LearnedPositions", offset, t, self.max_len)
        return x + self.weight[offset : offset + t]

"""The blocks of the DDPM U-Net (Ho et al., 2020): time embedding, residual, attention, resampling.

Every block works on feature maps ``(B, C, H, W)``; the residual block also takes the conditioning
embedding ``emb (B, E)`` (the time embedding, plus a class embedding in a conditional net).

Initialisation follows Ho et al.'s code: every convolution and linear layer starts Xavier-uniform
(``fan_avg``) with zero bias, and the last layer of each residual branch (the second convolution of
:class:`ResBlock`, the output projection of :class:`SpatialSelfAttention`) starts at zero, so that each
block begins as the identity. Normalisation is :class:`~torch.nn.GroupNorm` with ``eps = 1e-6`` (the
paper's), with the group count from :func:`group_count` so that narrow test sizes still build.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.layers.attention import MultiHeadAttention
from lightning_seq.layers.positions import sinusoidal_embedding

__all__ = [
    "Downsample",
    "ResBlock",
    "SpatialSelfAttention",
    "TimeEmbedding",
    "Upsample",
    "group_count",
    "group_norm",
]


def group_count(channels: int, groups: int = 32) -> int:
    """The largest divisor of ``channels`` that is at most ``groups``: ``min(groups, channels)``, stepped
    down until it divides the channels (32 for 128 channels, 8 for 8, 6 for 12 with ``groups=8``)."""
    count = max(1, min(groups, channels))
    while channels % count:
        count -= 1
    return count


def group_norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """``GroupNorm`` over ``channels`` with :func:`group_count` groups and the paper's ``eps = 1e-6``."""
    return nn.GroupNorm(group_count(channels, groups), channels, eps=1e-6)


def ddpm_init_(module: nn.Module, zero: bool = False) -> nn.Module:
    """Ho et al.'s initialisation of a convolution or linear layer: Xavier-uniform weight (zero if
    ``zero``), zero bias."""
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)
    return module


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1, zero: bool = False) -> nn.Conv2d:
    return ddpm_init_(nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1), zero)


class TimeEmbedding(nn.Module):
    """The embedding of a diffusion timestep: sinusoids, then a two-layer MLP.

    .. math::
        e(t) = W_2\\, \\mathrm{SiLU}(W_1\\, \\mathrm{PE}(t) + b_1) + b_2, \\qquad
        \\mathrm{PE}(t)_{2i} = \\sin(t / 10000^{2i/d}), \\;
        \\mathrm{PE}(t)_{2i+1} = \\cos(t / 10000^{2i/d})

    ``PE`` is :func:`~lightning_seq.layers.sinusoidal_embedding` (the Transformer's sinusoids). Ho et
    al.'s code lays the sines and cosines out in two halves, with frequencies ``10000^{-i/(d/2-1)}``; the
    first linear layer makes the layout immaterial, and the frequencies differ only in the last decimals
    of the exponent.

    Args:
        dim: Width ``d`` of the sinusoidal embedding (the U-Net's base channels).
        hidden: Width of the MLP and of the output (four times the base channels in DDPM).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear1 = ddpm_init_(nn.Linear(dim, hidden))
        self.linear2 = ddpm_init_(nn.Linear(hidden, hidden))

    def forward(self, t: Tensor) -> Tensor:
        """Timesteps ``(B,)`` (integer or float) to embeddings ``(B, hidden)``."""
        pe = sinusoidal_embedding(t, self.dim).to(self.linear1.weight.dtype)  # (B, dim)
        return self.linear2(F.silu(self.linear1(pe)))  # (B, hidden)


class ResBlock(nn.Module):
    """A pre-activation residual block with the conditioning embedding added between its convolutions.

    .. math::
        h &= \\mathrm{Conv}_{3\\times3}(\\mathrm{SiLU}(\\mathrm{GN}(x))) + W_e\\, \\mathrm{SiLU}(e) \\\\
        y &= \\mathrm{skip}(x)
            + \\mathrm{Conv}_{3\\times3}(\\mathrm{Dropout}(\\mathrm{SiLU}(\\mathrm{GN}(h))))

    with ``W_e e`` broadcast over the pixels and ``skip`` the identity, or a 1x1 convolution when the
    channels change. The second convolution starts at zero, as in Ho et al.'s code: the block is then
    the identity (or the 1x1 projection) at initialisation, so a deep stack of them starts as a shallow
    net and its activations do not grow with depth. (The gradients of the layers before that
    convolution are zero on the very first step, and non-zero from the next one on.)

    Args:
        in_channels: Channels of ``x``.
        out_channels: Channels of ``y``.
        embedding_dim: Width ``E`` of the embedding ``e``.
        dropout: Dropout rate before the second convolution.
        groups: Most groups for each GroupNorm (see :func:`group_count`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, embedding_dim: int, dropout: float = 0.0, groups: int = 32
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.embed = ddpm_init_(nn.Linear(embedding_dim, out_channels))
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels, zero=True)
        changes = in_channels != out_channels
        self.skip = ddpm_init_(nn.Conv2d(in_channels, out_channels, 1)) if changes else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, in_channels, H, W)`` and ``emb (B, E)`` to ``(B, out_channels, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.embed(F.silu(emb))[:, :, None, None]  # (B, out) -> (B, out, 1, 1), broadcast
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # (B, out, H, W)
        return self.skip(x) + h


class SpatialSelfAttention(nn.Module):
    """Self-attention among the pixels of a feature map, with a residual connection.

    .. math::
        y = x + \\mathrm{MHA}(\\mathrm{GN}(x)) \\quad \\text{over the } H W \\text{ tokens of width } C

    ``MHA`` is :class:`~lightning_seq.layers.MultiHeadAttention` (fused kernel); with one head it is the
    attention block of Ho et al. (four ``C x C`` projections, scale ``C^{-1/2}``). Its output projection
    starts at zero, as in their code, so the block starts as the identity.

    Args:
        channels: Channels ``C`` (the token width); a multiple of ``heads``.
        heads: Attention heads.
        groups: Most groups for the GroupNorm (see :func:`group_count`).
    """

    def __init__(self, channels: int, heads: int = 1, groups: int = 32) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.attention = MultiHeadAttention(channels, heads)
        for proj in (self.attention.q_proj, self.attention.k_proj, self.attention.v_proj):
            ddpm_init_(proj)
        ddpm_init_(self.attention.out_proj, zero=True)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        b, c, height, width = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, C, HW) -> (B, HW, C)
        out = self.attention(tokens)  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, height, width)  # (B, C, HW) -> (B, C, H, W)


class Downsample(nn.Module):
    """Halve the side with a strided convolution: ``y = \\mathrm{Conv}^{\\downarrow 2}_{3\\times3}(x)``,
    ``(B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2))``.

    Args:
        channels: Channels in and out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the side: nearest-neighbour upsampling, then a convolution,
    ``y = \\mathrm{Conv}_{3\\times3}(\\mathrm{Nearest}^{\\uparrow 2}(x))``,
    ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Args:
        channels: Channels in and out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))  # (B, C, 2H, 2W)

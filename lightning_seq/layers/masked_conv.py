"""Causal convolutions over images in raster order: masked convolutions (PixelCNN, van den Oord et al.,
2016) and the gated block with vertical and horizontal stacks (Gated PixelCNN, van den Oord et al., 2016).

Pixels are ordered row by row, left to right, and inside a pixel the colour channels R -> G -> B.
A layer's output at ``(i, j)`` may depend on the input at ``(i', j')`` only where ``(i', j')`` comes
before ``(i, j)``; at ``(i, j)`` itself, output colour group ``g`` sees input colour groups ``g' < g``
(mask ``"A"``, the first layer, which must not see the value it predicts) or ``g' <= g`` (mask
``"B"``, later layers, whose inputs at ``(i, j)`` already exclude it).

Colour groups are interleaved: channel ``c`` of a layer with ``G`` groups belongs to group ``c % G``.
Chunking a layer's channels into halves (gates) or ``(P, C)`` (a head's ``P`` parameters per colour)
keeps every channel in its group, so no reordering is needed anywhere. Pure torch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError

__all__ = ["GatedBlock", "MaskedConv2d", "raster_mask", "shift_down"]

MaskType = Literal["A", "B"]


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def raster_mask(
    out_channels: int,
    in_channels: int,
    kernel_size: int | tuple[int, int],
    mask_type: MaskType = "B",
    channels: int = 1,
    centre: tuple[int, int] | None = None,
) -> Tensor:
    """The 0/1 mask ``(out, in, kh, kw)`` of a causal convolution kernel.

    With the kernel's centre ``(ci, cj)`` at the output pixel, tap ``(a, b)`` is kept when it lies
    before the centre in raster order (``a < ci``, or ``a == ci`` and ``b < cj``); at the centre,
    output channel ``o`` sees input channel ``k`` when ``k % G < o % G`` (type A) or
    ``k % G <= o % G`` (type B), ``G = channels``; taps after the centre are 0.

    Args:
        out_channels: output channels, a multiple of ``channels``.
        in_channels: input channels, a multiple of ``channels``.
        kernel_size: ``k`` or ``(kh, kw)``.
        mask_type: ``"A"`` (centre excludes its own colour group) or ``"B"`` (includes it).
        channels: colour groups ``G`` (1 grey, 3 RGB).
        centre: the tap over the output pixel; default the kernel's middle ``(kh // 2, kw // 2)``.
    """
    kh, kw = _pair(kernel_size)
    ci, cj = centre if centre is not None else (kh // 2, kw // 2)
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, :ci, :] = 1.0  # rows above
    mask[:, :, ci, :cj] = 1.0  # left in the same row
    out_group = torch.arange(out_channels) % channels  # (out,)
    in_group = torch.arange(in_channels) % channels  # (in,)
    if mask_type == "A":
        allowed = in_group[None, :] < out_group[:, None]  # (out, in)
    else:
        allowed = in_group[None, :] <= out_group[:, None]
    mask[:, :, ci, cj] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed causal mask (:func:`raster_mask`).

    .. math::
        y_{o,i,j} = b_o + \\sum_{k,a,b} (W \\odot M)_{o,k,a,b}\\, x_{k,\\,i + a - c_i,\\,j + b - c_j}

    The input is zero-padded so that the output has the input's size and kernel tap ``centre`` lies
    over the output pixel: the usual ``"same"`` padding for a centred kernel, or only left/top padding
    for a kernel whose centre is its last column/row (the horizontal stack's ``(1, k//2 + 1)``).

    Args:
        in_channels: input channels (a multiple of ``channels``).
        out_channels: output channels (a multiple of ``channels``).
        kernel_size: ``k`` or ``(kh, kw)``.
        mask_type: ``"A"`` (first layer) or ``"B"`` (later layers).
        channels: colour groups, 1 (grey) or 3 (RGB, ordered R -> G -> B).
        centre: the tap over the output pixel; default the kernel's middle.
        bias: add a learned bias.
    """

    mask: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        mask_type: MaskType = "B",
        channels: int = 1,
        centre: tuple[int, int] | None = None,
        bias: bool = True,
    ) -> None:
        kh, kw = _pair(kernel_size)
        _check(in_channels, out_channels, mask_type, channels)
        super().__init__(in_channels, out_channels, (kh, kw), padding=0, bias=bias)
        ci, cj = centre if centre is not None else (kh // 2, kw // 2)
        if not (0 <= ci < kh and 0 <= cj < kw):
            raise InputError(f"MaskedConv2d: centre={centre} lies outside the {kh} x {kw} kernel.")
        self.mask_type, self.channels, self.centre = mask_type, channels, (ci, cj)
        self._padding = (cj, kw - 1 - cj, ci, kh - 1 - ci)  # left, right, top, bottom
        self.register_buffer(
            "mask", raster_mask(out_channels, in_channels, (kh, kw), mask_type, channels, (ci, cj))
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, H, W) -> (B, out, H, W)``."""
        return F.conv2d(F.pad(x, self._padding), self.weight * self.mask, self.bias)

    def effective_parameters(self) -> int:
        """Parameters that can affect the output (kernel entries the mask keeps, and the bias)."""
        bias = self.bias.numel() if self.bias is not None else 0
        return int(self.mask.sum().item()) + bias

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mask_type={self.mask_type}, channels={self.channels}"


def _check(in_channels: int, out_channels: int, mask_type: str, channels: int) -> None:
    if mask_type not in ("A", "B"):
        raise InputError(f"MaskedConv2d: mask_type must be 'A' or 'B', got {mask_type!r}.")
    if channels < 1 or in_channels % channels or out_channels % channels:
        raise InputError(
            f"MaskedConv2d: in_channels={in_channels} and out_channels={out_channels} must be multiples of "
            f"the {channels} colour groups. Fix: choose widths divisible by {channels}."
        )


def shift_down(x: Tensor, rows: int = 1) -> Tensor:
    """Move a feature map ``rows`` rows down, zeros entering at the top: ``y_{i} = x_{i - rows}``."""
    return F.pad(x, (0, 0, rows, 0))[:, :, : x.size(2), :]  # (B, C, H, W)


class GatedBlock(nn.Module):
    """A Gated PixelCNN layer: a vertical stack over the rows above and a horizontal stack over the
    current row, with gated activations and an optional class bias (van den Oord et al., 2016).

    .. math::
        \\tilde v = W_v * v, \\qquad \\tilde h = W_h * h + U\\, \\mathrm{down}(\\tilde v) \\\\
        v' = \\tanh(\\tilde v_1 + e_1(y)) \\odot \\sigma(\\tilde v_2 + e_2(y)), \\quad
        h' = h + R\\,[\\tanh(\\tilde h_1 + e_1(y)) \\odot \\sigma(\\tilde h_2 + e_2(y))]

    ``W_v`` is a ``(k//2 + 1) x k`` convolution over rows ``i - k//2 .. i`` (padded on top), so
    ``v`` at row ``i`` depends on rows ``<= i`` only; ``down`` shifts it one row down before the
    ``1 x 1`` map ``U`` feeds it to the horizontal stack, which therefore sees only rows ``< i``
    from it. Information flows one way, from the vertical stack into the horizontal one through
    ``down``, never back. ``W_h`` is a
    ``1 x (k//2 + 1)`` masked convolution over columns ``j - k//2 .. j`` (mask A in the first block,
    which reads the image, B afterwards), and ``R`` a masked ``1 x 1`` residual map (absent in the
    first block). Together the stacks cover every pixel above within the receptive field and every
    pixel to the left: no blind spot. ``(subscripts 1, 2: the two halves of the channels.)``

    Args:
        in_channels: input channels of both stacks (the image's in the first block).
        width: channels ``h`` of both stacks' outputs (a multiple of ``channels``).
        kernel_size: odd ``k``.
        first: the first block (mask A, no residual).
        channels: colour groups, 1 or 3.
        num_classes: classes of the optional class-conditional bias ``e(y)``; None: unconditional.
    """

    def __init__(
        self,
        in_channels: int,
        width: int,
        kernel_size: int = 3,
        first: bool = False,
        channels: int = 1,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InputError(f"GatedBlock: kernel_size must be odd and positive, got {kernel_size}.")
        half = kernel_size // 2
        mask_type: MaskType = "A" if first else "B"
        self.first, self.width = first, width
        self.vertical = nn.Conv2d(in_channels, 2 * width, (half + 1, kernel_size))
        self._v_padding = (half, half, half, 0)  # left, right, top, bottom
        self.horizontal = MaskedConv2d(
            in_channels, 2 * width, (1, half + 1), mask_type, channels, centre=(0, half)
        )
        self.link = nn.Conv2d(2 * width, 2 * width, 1)  # vertical -> horizontal, rows above only
        self.residual = None if first else MaskedConv2d(width, width, 1, "B", channels)
        self.embedding = nn.Embedding(num_classes, 2 * width) if num_classes else None

    @staticmethod
    def gate(x: Tensor) -> Tensor:
        """``tanh(x_1) * sigmoid(x_2)`` of the channels' two halves: ``(B, 2h, H, W) -> (B, h, H, W)``."""
        a, b = x.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(v, h)`` each ``(B, C_in, H, W)`` -> ``(v', h')`` each ``(B, width, H, W)``."""
        v_pre = self.vertical(F.pad(v, self._v_padding))  # (B, 2h, H, W)
        h_pre = self.horizontal(h) + self.link(shift_down(v_pre))  # (B, 2h, H, W)
        if self.embedding is not None and labels is not None:
            bias = self.embedding(labels)[:, :, None, None]  # (B, 2h, 1, 1)
            v_pre, h_pre = v_pre + bias, h_pre + bias
        v_out, h_gated = self.gate(v_pre), self.gate(h_pre)
        if self.residual is None:
            return v_out, h_gated
        return v_out, h + self.residual(h_gated)

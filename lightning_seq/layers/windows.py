"""Shifted-window attention of the Swin Transformer (Liu et al., 2021).

Feature maps are channels-last ``(B, H, W, C)`` throughout. Self-attention runs inside
non-overlapping ``ws x ws`` windows; every other block first rolls the map by
``-shift = -ws // 2`` in both directions so that the new windows straddle the old window
borders. Tokens that share a rolled window but were not neighbours before the roll (they
wrapped around the border) must not attend to each other: :func:`shifted_window_mask` splits
the rolled map into 3 x 3 regions and allows attention only within a region.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.attention import MultiHeadAttention
from lightning_seq.layers.transformer import DropPath, FeedForward, trunc_normal_


def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a feature map into non-overlapping windows.

    Args:
        x: ``(B, H, W, C)`` with ``H`` and ``W`` multiples of ``window_size``.
        window_size: Window side ``ws``.

    Returns:
        ``(B * nW, ws * ws, C)``, windows in row-major order per image, tokens row-major inside
        each window; ``nW = (H / ws) (W / ws)``.
    """
    b, h, w, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w // ws, ws, c)  # (B, H/ws, ws, W/ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)  # (B * nW, ws * ws, C)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, ws * ws, C) -> (B, H, W, C)``."""
    ws = window_size
    c = windows.shape[-1]
    x = windows.view(-1, height // ws, width // ws, ws, ws, c)  # (B, H/ws, W/ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)  # (B, H, W, C)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the relative position bias table for every pair of tokens in a window.

    .. math:: \\mathrm{idx}(i, j) = (\\Delta h + ws - 1)(2 ws - 1) + (\\Delta w + ws - 1)

    with ``(Delta h, Delta w)`` the offset of token ``i`` from token ``j``; equal offsets share
    an index, and there are ``(2 ws - 1)^2`` of them.

    Returns:
        Long tensor ``(ws * ws, ws * ws)``.
    """
    ws = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    offsets = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # (2, N, N), each in [0, 2ws-2]
    return offsets[0] * (2 * ws - 1) + offsets[1]  # (N, N)


def shifted_window_mask(height: int, width: int, window_size: int, shift: int) -> Tensor:
    """Which token pairs of each rolled window may attend to each other.

    After ``torch.roll(x, (-shift, -shift))`` the rows split into the regions
    ``[0, H - ws)``, ``[H - ws, H - shift)``, ``[H - shift, H)`` (the last one wrapped around
    from the top), and likewise the columns: 9 regions. Two tokens of a window may attend to
    each other iff they lie in the same region.

    Returns:
        Boolean ``(nW, ws * ws, ws * ws)``, True = may attend; all True when ``shift == 0``.
    """
    bounds = (slice(0, -window_size), slice(-window_size, -shift), slice(-shift, None))
    region = torch.zeros(1, height, width, 1)
    if shift > 0:
        for label, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
            region[:, rows, cols] = label
    ids = window_partition(region, window_size).squeeze(-1)  # (nW, ws * ws)
    return ids[:, :, None] == ids[:, None, :]  # (nW, ws * ws, ws * ws)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learnable relative position bias.

    .. math:: \\mathrm{softmax}\\big(Q K^\\top / \\sqrt{d} + B_{\\mathrm{idx}(i, j)} + M\\big) V

    where ``B`` is a ``((2 ws - 1)^2, heads)`` table indexed by :func:`relative_position_index`
    and ``M`` masks the pairs forbidden by :func:`shifted_window_mask`.

    Args:
        dim: Token width.
        heads: Attention heads.
        window_size: Window side ``ws``.
        attn_dropout: Dropout on the attention weights.
    """

    no_weight_decay = ("relative_position_bias_table",)  # read by the optimizer set-up

    def __init__(self, dim: int, heads: int, window_size: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.window_size = window_size
        self.heads = heads
        self.attn = MultiHeadAttention(dim, heads, dropout=attn_dropout)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, heads))
        trunc_normal_(self.relative_position_bias_table)
        self.register_buffer(
            "relative_position_index", relative_position_index(window_size), persistent=False
        )

    def relative_position_bias(self) -> Tensor:
        """The bias for every pair of tokens in a window, ``(heads, ws * ws, ws * ws)``."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.flatten()]  # (N * N, heads)
        return bias.view(n, n, self.heads).permute(2, 0, 1)  # (heads, N, N)

    def forward(self, windows: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend within each window.

        Args:
            windows: ``(B * nW, ws * ws, dim)`` as from :func:`window_partition`.
            mask: Boolean ``(nW, ws * ws, ws * ws)``, True = may attend, or None.

        Returns:
            ``(B * nW, ws * ws, dim)``.
        """
        if mask is not None:
            repeats = windows.shape[0] // mask.shape[0]
            mask = mask.repeat(repeats, 1, 1).unsqueeze(1)  # (B * nW, 1, N, N)
        return self.attn(windows, mask=mask, bias=self.relative_position_bias().unsqueeze(0))


class SwinBlock(nn.Module):
    """Swin Transformer block: (shifted) window attention and an MLP, both pre-norm residual.

    .. math::
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{roll}_{+s}(\\mathrm{W\\text{-}MSA}(
            \\mathrm{roll}_{-s}(\\mathrm{LN}_1(x))))) \\\\
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{MLP}(\\mathrm{LN}_2(x)))

    where W-MSA is :class:`WindowAttention` over :func:`window_partition` windows with the
    :func:`shifted_window_mask` when ``s > 0``. If the map is no larger than the window
    (``min(H, W) <= window_size``) the window shrinks to the map and there is no shift, as in
    the reference implementation.

    Args:
        dim: Token width ``C``.
        heads: Attention heads.
        input_resolution: ``(H, W)`` of the feature maps this block will see.
        window_size: Window side ``ws``; must divide ``H`` and ``W``.
        shift: Cyclic shift ``s`` (0 for a plain window block, usually ``ws // 2`` otherwise).
        mlp_ratio: MLP inner width as a multiple of ``dim``.
        dropout: Dropout on the attention output and inside the MLP.
        attn_dropout: Dropout on the attention weights.
        drop_path: Stochastic-depth probability.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        input_resolution: tuple[int, int],
        window_size: int = 7,
        shift: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        height, width = input_resolution
        if min(height, width) <= window_size:
            window_size, shift = min(height, width), 0
        if height % window_size or width % window_size or not 0 <= shift < window_size:
            raise InputError(
                f"SwinBlock: window_size={window_size} must divide input_resolution={input_resolution} "
                f"and shift={shift} must lie in [0, window_size)."
            )
        self.input_resolution = (height, width)
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window_size, attn_dropout=attn_dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)
        mask = shifted_window_mask(height, width, window_size, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def extra_repr(self) -> str:
        return f"input_resolution={self.input_resolution}, window_size={self.window_size}, shift={self.shift}"

    def _window_attention(self, x: Tensor) -> Tensor:
        _, height, width, _ = x.shape
        s = self.shift
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(x, self.window_size)  # (B * nW, ws * ws, C)
        windows = self.attn_drop(self.attn(windows, self.attn_mask))
        x = window_reverse(windows, self.window_size, height, width)  # (B, H, W, C)
        return torch.roll(x, shifts=(s, s), dims=(1, 2)) if s else x

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H, W, C)`` with ``(H, W) == input_resolution``."""
        if tuple(x.shape[1:3]) != self.input_resolution:
            raise ValueError(
                f"SwinBlock: expected a (B, H, W, C) map with (H, W) = {self.input_resolution}, "
                f"got {tuple(x.shape)}."
            )
        x = x + self.drop_path(self._window_attention(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Downsample by 2: concatenate each 2 x 2 neighbourhood, normalise, project to ``2C``.

    .. math:: y_{ij} = W\\, \\mathrm{LN}([x_{2i,2j};\\, x_{2i+1,2j};\\, x_{2i,2j+1};\\, x_{2i+1,2j+1}])

    Args:
        dim: Input width ``C``; the output has ``2C``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, C) -> (B, H/2, W/2, 2C)``; ``H`` and ``W`` must be even."""
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"PatchMerging: expected even H and W in (B, H, W, C), got {tuple(x.shape)}.")
        parts = (x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2])
        x = torch.cat(parts, dim=-1)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)

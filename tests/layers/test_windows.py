"""Swin windows: partition round trip, relative positions, the shifted-window mask and block locality."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from lightning_seq.errors import InputError
from lightning_seq.layers import (
    PatchMerging,
    SwinBlock,
    WindowAttention,
    attention_reference,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

# --------------------------------------------------------------------------- independent geometry
# Everything below is computed from positions in the original (un-rolled) map, one token at a time.


def _shifted(pos: tuple[int, int], shift: int, size: tuple[int, int]) -> tuple[int, int]:
    """Where the token at original ``pos`` sits after torch.roll by (-shift, -shift)."""
    return (pos[0] - shift) % size[0], (pos[1] - shift) % size[1]


def _window_of(pos: tuple[int, int], ws: int, shift: int, size: tuple[int, int]) -> tuple[int, int]:
    r, c = _shifted(pos, shift, size)
    return r // ws, c // ws


def _band(x: int, ws: int, shift: int, n: int) -> int:
    """Which of the three bands an original row (or column) falls into for the shifted windows:
    the interior [shift, n - ws + shift), the last window's own part [n - ws + shift, n), or the
    first ``shift`` rows that wrap around to the end."""
    if x < shift:
        return 2
    return 1 if x >= n - ws + shift else 0


def _region(pos: tuple[int, int], ws: int, shift: int, size: tuple[int, int]) -> tuple[int, int]:
    return _band(pos[0], ws, shift, size[0]), _band(pos[1], ws, shift, size[1])


def _original_of(window: int, token: int, ws: int, shift: int, size: tuple[int, int]) -> tuple[int, int]:
    """Original position of ``token`` (row-major) of rolled window number ``window`` (row-major)."""
    per_row = size[1] // ws
    r = (window // per_row) * ws + token // ws
    c = (window % per_row) * ws + token % ws
    return (r + shift) % size[0], (c + shift) % size[1]


# --------------------------------------------------------------------------- partition


def test_window_partition_round_trip_and_layout() -> None:
    x = torch.randn(2, 8, 12, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 2 * 3, 16, 3)
    assert torch.equal(window_reverse(windows, 4, 8, 12), x)
    # window 4 of image 1 is window row 1, column 1; its token 6 is row 1, column 2 inside it
    assert torch.equal(windows[6 + 4, 6], x[1, 4 + 1, 4 + 2])


def test_relative_position_index() -> None:
    ws = 3
    index = relative_position_index(ws)
    assert index.shape == (ws * ws, ws * ws)
    assert index.dtype == torch.long
    assert set(index.flatten().tolist()) == set(range((2 * ws - 1) ** 2))
    by_offset: dict[tuple[int, int], set[int]] = {}
    for i, j in itertools.product(range(ws * ws), repeat=2):
        offset = (i // ws - j // ws, i % ws - j % ws)
        by_offset.setdefault(offset, set()).add(int(index[i, j]))
    assert all(len(ids) == 1 for ids in by_offset.values())  # equal offsets -> one index
    assert len(by_offset) == (2 * ws - 1) ** 2  # distinct offsets -> distinct indices


# --------------------------------------------------------------------------- shifted-window mask


@pytest.mark.parametrize(("size", "ws", "shift"), [((8, 12), 4, 2), ((9, 6), 3, 1)])
def test_shifted_window_mask_matches_regions(size: tuple[int, int], ws: int, shift: int) -> None:
    mask = shifted_window_mask(*size, ws, shift)
    num_windows = (size[0] // ws) * (size[1] // ws)
    assert mask.shape == (num_windows, ws * ws, ws * ws)
    assert mask.dtype == torch.bool
    for w, i, j in itertools.product(range(num_windows), range(ws * ws), range(ws * ws)):
        p, q = _original_of(w, i, ws, shift, size), _original_of(w, j, ws, shift, size)
        same_region = _region(p, ws, shift, size) == _region(q, ws, shift, size)
        assert bool(mask[w, i, j]) == same_region, (w, p, q)
        # same region <=> the two tokens were within one window's reach before the roll
        adjacent = abs(p[0] - q[0]) < ws and abs(p[1] - q[1]) < ws
        assert same_region == adjacent


def test_unshifted_mask_allows_everything() -> None:
    assert shifted_window_mask(8, 8, 4, 0).all()


# --------------------------------------------------------------------------- blocks


def _influence(block: SwinBlock, size: tuple[int, int], dim: int) -> Tensor:
    """(H, W, H, W) bool: does input token q change output token p (nonzero gradient)?"""
    x = torch.randn(1, *size, dim, dtype=torch.float64, requires_grad=True)
    out = block(x)
    rows = []
    for r, c in itertools.product(range(size[0]), range(size[1])):
        (grad,) = torch.autograd.grad(out[0, r, c].sum(), x, retain_graph=True)
        rows.append(grad[0].abs().sum(-1) > 0)  # (H, W)
    return torch.stack(rows).view(*size, *size)


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_attends_only_within_window_and_region(shift: int) -> None:
    torch.manual_seed(0)
    size, ws, dim = (8, 8), 4, 8
    block = SwinBlock(dim, 2, size, window_size=ws, shift=shift).double().eval()
    influence = _influence(block, size, dim)
    positions = list(itertools.product(range(size[0]), range(size[1])))
    for p, q in itertools.product(positions, repeat=2):
        expected = _window_of(p, ws, shift, size) == _window_of(q, ws, shift, size)
        if shift:
            expected = expected and _region(p, ws, shift, size) == _region(q, ws, shift, size)
        assert bool(influence[(*p, *q)]) == expected, (p, q)


def test_swin_block_small_map_uses_whole_map_without_shift() -> None:
    block = SwinBlock(8, 2, (4, 4), window_size=7, shift=3)
    assert (block.window_size, block.shift) == (4, 0)
    assert block.attn.relative_position_bias_table.shape == (7 * 7, 2)
    assert block(torch.randn(2, 4, 4, 8)).shape == (2, 4, 4, 8)


def test_swin_block_rejects_bad_sizes() -> None:
    with pytest.raises(InputError, match="window_size=3"):
        SwinBlock(8, 2, (8, 8), window_size=3)
    block = SwinBlock(8, 2, (8, 8), window_size=4, shift=2)
    with pytest.raises(ValueError, match=r"\(H, W\) = \(8, 8\)"):
        block(torch.randn(1, 4, 4, 8))


def test_window_attention_bias_is_the_relative_position_table() -> None:
    torch.manual_seed(0)
    ws, heads, dim = 3, 2, 8
    attn = WindowAttention(dim, heads, ws).double().eval()
    table = attn.relative_position_bias_table
    bias = torch.empty(heads, ws * ws, ws * ws, dtype=torch.float64)
    for i, j in itertools.product(range(ws * ws), repeat=2):
        dh, dw = i // ws - j // ws, i % ws - j % ws
        bias[:, i, j] = table[(dh + ws - 1) * (2 * ws - 1) + dw + ws - 1]
    torch.testing.assert_close(attn.relative_position_bias(), bias)

    windows = torch.randn(4, ws * ws, dim, dtype=torch.float64)
    mha = attn.attn
    q, k, v = (mha._split_heads(proj(windows)) for proj in (mha.q_proj, mha.k_proj, mha.v_proj))
    expected = mha.out_proj(mha._merge_heads(attention_reference(q, k, v, bias=bias)))
    torch.testing.assert_close(attn(windows), expected)


def test_patch_merging_concatenates_2x2_neighbours() -> None:
    torch.manual_seed(0)
    merge = PatchMerging(3)
    x = torch.randn(2, 4, 6, 3)
    out = merge(x)
    assert out.shape == (2, 2, 3, 6)
    neighbours = torch.cat([x[:, 2, 4], x[:, 3, 4], x[:, 2, 5], x[:, 3, 5]], dim=-1)  # token (1, 2)
    torch.testing.assert_close(out[:, 1, 2], merge.reduction(merge.norm(neighbours)))

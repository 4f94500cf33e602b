"""Position encodings: the sinusoid formula by hand, offsets for incremental decoding, max_len errors."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers import LearnedPositions, SinusoidalPositions, sinusoidal_table


@pytest.mark.parametrize(
    ("pos", "col", "expected"),
    [
        (0, 0, 0.0),  # sin(0)
        (0, 1, 1.0),  # cos(0)
        (3, 0, math.sin(3.0)),  # i = 0: frequency 1
        (3, 1, math.cos(3.0)),
        (5, 2, math.sin(5 / 10000 ** (2 / 8))),  # i = 1
        (5, 3, math.cos(5 / 10000 ** (2 / 8))),
        (7, 6, math.sin(7 / 10000 ** (6 / 8))),  # i = 3
        (40, 7, math.cos(40 / 10000 ** (6 / 8))),
    ],
)
def test_sinusoidal_formula_by_hand(pos: int, col: int, expected: float) -> None:
    table = sinusoidal_table(50, 8)
    assert table.shape == (50, 8) and table.dtype == torch.float32
    assert table[pos, col].item() == pytest.approx(expected, abs=1e-6)


def test_sinusoidal_odd_width() -> None:
    table = sinusoidal_table(4, 5)
    assert table.shape == (4, 5)
    assert table[2, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-6)


def test_sinusoidal_positions_add_the_rows_at_the_offset() -> None:
    pe = SinusoidalPositions(8)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(pe(x), x + sinusoidal_table(3, 8))
    torch.testing.assert_close(pe(x, offset=97), x + sinusoidal_table(100, 8)[97:])  # grows on demand
    assert not pe.state_dict()  # fixed: nothing to save


def test_sinusoidal_positions_with_a_max_len() -> None:
    pe = SinusoidalPositions(8, max_len=10)
    pe(torch.zeros(1, 10, 8))
    with pytest.raises(InputError, match="max_len=10"):
        pe(torch.zeros(1, 2, 8), offset=9)


def test_learned_positions_add_their_rows_and_train() -> None:
    torch.manual_seed(0)
    pe = LearnedPositions(16, 8)
    assert pe.weight.shape == (16, 8)
    assert pe.weight.std().item() == pytest.approx(0.02, rel=0.2)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(pe(x, offset=4), x + pe.weight[4:9])
    pe(x, offset=11).sum().backward()
    assert pe.weight.grad[11:].abs().sum() > 0 and pe.weight.grad[:11].abs().sum() == 0


def test_learned_positions_past_max_len_is_a_clear_error() -> None:
    pe = LearnedPositions(16, 8)
    pe(torch.zeros(1, 16, 8))  # exactly max_len is fine
    with pytest.raises(InputError, match=r"positions 15\.\.16 exceed max_len=16.*larger max_len"):
        pe(torch.zeros(1, 2, 8), offset=15)

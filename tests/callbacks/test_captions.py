"""AttentionMaps' grid: one row per image, the image then one panel per word, each panel bright where that
word's attention is."""

import numpy as np
import pytest
import torch

from lightning_seq.callbacks import AttentionMaps
from lightning_seq.callbacks.captions import attention_grid
from lightning_seq.errors import InputError


def test_each_word_panel_is_bright_where_its_attention_is_and_dark_elsewhere():
    images = torch.full((2, 3, 16, 16), 0.8)
    attention = torch.zeros(2, 3, 16)  # a 4 x 4 grid
    attention[0, 0, 0] = attention[0, 1, 15] = attention[1, 0, 5] = 1.0  # top-left, bottom-right, (1, 1)
    attention[0, 2] = attention[1, 1:] = 1 / 16
    words = [["a", "red", "star"], ["a", "ring"]]
    grid = np.asarray(attention_grid(images, words, attention, (4, 4), tile_size=16).convert("L"), np.float32)
    tile, text = 16 + 4, 14  # a panel, its margin and the caption strip under it
    assert grid.shape == (2 * (tile + text), 4 * tile)  # 2 rows; the image + up to 3 words

    def panel(row: int, col: int) -> np.ndarray:
        top, left = row * (tile + text) + 2, col * tile + 2
        return grid[top : top + 16, left : left + 16]

    first, last, even = panel(0, 1), panel(0, 2), panel(0, 3)
    assert first[:4, :4].mean() > 2 * first[8:, 8:].mean()  # "a": the top-left cell
    assert last[12:, 12:].mean() > 2 * last[:8, :8].mean()  # "red": the bottom-right cell
    assert even.std() < 5 and panel(1, 3).min() > 250  # uniform attention; no third word: a blank panel
    assert panel(0, 0).mean() == pytest.approx(0.8 * 255, abs=2)  # the image itself, unchanged


def test_a_net_without_spatial_attention_gets_its_images_captioned():
    grid = attention_grid(torch.rand(3, 3, 8, 8), [["a"], ["b"], ["c"]], None, (2, 2), tile_size=8)
    assert grid.size[1] > 3 * 16  # one row per image, each with its caption strip


def test_bad_settings_are_refused():
    with pytest.raises(InputError, match="num_images >= 1"):
        AttentionMaps(num_images=0)

"""ImagePredictions: the labelled grid shows each image with its caption, green when right, red when wrong."""

import numpy as np
import torch

from lightning_seq.callbacks.images import draw_grid


def caption_hue(grid, row: int, col: int, tile: int) -> str:
    """``green`` or ``red``: the colour of the (antialiased) caption text under tile (row, col)."""
    pixels = np.asarray(grid).astype(int)
    x, y = col * (tile + 4) + 2, row * (tile + 14 + 4) + 2 + tile
    strip = pixels[y : y + 14, x : x + tile].reshape(-1, 3)
    green = ((strip[:, 1] - strip[:, 0]) > 80).sum()
    red = ((strip[:, 0] - strip[:, 1]) > 80).sum()
    assert green + red > 10, "no caption text"
    return "green" if green > red else "red"


def test_grid_places_every_image_and_colours_captions_by_correctness():
    images = torch.rand(5, 3, 8, 8)
    images[1] = 0.0  # a black tile
    labels, preds = [0, 1, 2, 0, 1], [0, 1, 0, 0, 2]
    grid = draw_grid(images, labels, preds, names=["a", "b", "c"], tile_size=32)
    assert grid.size == (3 * (32 + 4), 2 * (32 + 14 + 4))  # 5 tiles: 3 a row, 2 rows
    tile = np.asarray(grid)[2 : 2 + 32, 36 + 2 : 36 + 2 + 32]  # tile 1, scaled 4x with nearest
    assert (tile == 0).all()
    assert [caption_hue(grid, 0, col, 32) for col in range(3)] == ["green", "green", "red"]  # c / a wrong
    assert [caption_hue(grid, 1, col, 32) for col in range(2)] == ["green", "red"]


def test_grey_images_are_drawn_too():
    grid = draw_grid(torch.full((2, 1, 4, 4), 0.5), [0, 1], [0, 1], None, tile_size=16)
    assert np.asarray(grid)[2, 2].tolist() == [128, 128, 128]

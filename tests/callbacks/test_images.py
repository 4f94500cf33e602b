"""Image grids: ImagePredictions' labelled grid (captions green when right, red when wrong), and
ImageSamples' grids of a generative model's samples (per class rows, fixed seed, eval mode)."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seq.callbacks import ImageSamples
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


# ------------------------------------------------------------------------------------ ImageSamples
class Flat(L.LightningModule):
    """The generative contract at its simplest: flat grey images whose intensity is ``(class + 1) / 8``
    (conditional) or a uniform draw of the generator (unconditional); one weight, trained."""

    def __init__(self, num_classes: int | None = None, classes: list[str] | None = None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.num_classes, self.classes, self.pixels = num_classes, classes, "symmetric"
        self.modes: list[bool] = []  # the module's training flag at each sample() call

    def sample(self, n: int, *, labels=None, generator=None) -> torch.Tensor:
        self.modes.append(self.training)
        value = (labels.float() + 1) / 8 if labels is not None else torch.rand(n, generator=generator)
        return (value.view(n, 1, 1, 1) * 2 - 1).expand(n, 1, 6, 6)  # symmetric pixels in [-1, 1]

    def training_step(self, batch, batch_idx):
        return (self.weight - 1) ** 2

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(8, 1), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def fit_with(callback, module, tmp_path, max_steps=3) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=max_steps, logger=False, callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module)
    return trainer


def test_samples_of_a_conditional_model_come_in_one_row_per_class(tmp_path):
    module = Flat(num_classes=3, classes=["red", "green", "blue"])
    fit_with(ImageSamples(per_class=4, every_n_steps=2, every_n_epochs=None, tile_size=12), module, tmp_path)
    # every 2 steps, and the final weights' grid where the run ends (step 3)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_000002.png", "step_000003.png"]
    grid = np.asarray(Image.open(tmp_path / "samples" / "step_000002.png").convert("RGB")).astype(int)
    tile = 12  # 6 px scaled 2x
    assert grid.shape == (3 * (tile + 14 + 4), 4 * (tile + 4), 3)  # 3 class rows of 4, captioned
    for row in range(3):
        for col in range(4):
            x, y = col * (tile + 4) + 2, row * (tile + 14 + 4) + 2
            expected = round((row + 1) / 8 * 255)  # symmetric samples back in [0, 1] through pixels.to_unit
            assert np.abs(grid[y : y + tile, x : x + tile] - expected).max() <= 1, (row, col)
        caption = grid[y + tile : y + tile + 14, 2 : 2 + 4 * (tile + 4)]
        assert (caption < 128).any()  # the class name is written under the tiles
    assert module.modes == [False, False] and module.training  # drawn in eval mode, training mode restored


@pytest.mark.parametrize("max_steps, drawn", [(12, [8, 12]), (8, [8]), (6, [6])])
def test_the_last_weights_get_a_grid_whatever_the_period(tmp_path, max_steps, drawn):
    """Every 2 epochs (of 4 steps): a grid at step 8, and one of the final weights where the run ends,
    once, whether at an epoch's end off the period (12), on it (8) or mid-epoch (6)."""
    fit_with(ImageSamples(every_n_epochs=2, tile_size=12), Flat(), tmp_path, max_steps=max_steps)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"step_{s:06d}.png" for s in drawn]


def test_samples_are_the_same_for_the_same_seed(tmp_path):
    grids = []
    for i, seed in enumerate((0, 0, 1)):
        callback = ImageSamples(num_images=9, every_n_epochs=1, seed=seed, tile_size=12)
        fit_with(callback, Flat(), tmp_path / str(i), max_steps=4)  # one epoch of 4 batches
        (path,) = (tmp_path / str(i) / "samples").iterdir()
        assert path.name == "step_000004.png"
        grids.append(np.asarray(Image.open(path)))
    assert grids[0].shape == (3 * (12 + 4), 3 * (12 + 4), 3)  # unconditional: a square grid, no captions
    assert (grids[0] == grids[1]).all() and not (grids[0] == grids[2]).all()


class Fading(Flat):
    """A "diffusion" model whose trajectory frame ``f`` of sample ``i`` is flat at ``(f + 1) / 8`` and whose
    samples are the last frame."""

    def denoising_trajectory(self, n: int, *, frames: int = 8, labels=None, generator=None) -> torch.Tensor:
        self.asked = (n, frames, None if labels is None else labels.tolist())
        value = torch.arange(1, frames + 1).float().view(frames, 1, 1, 1, 1) / 8  # (F, 1, 1, 1, 1)
        return (value * 2 - 1).expand(frames, n, 1, 6, 6)  # symmetric pixels


def test_the_trajectory_grid_has_one_row_per_sample_from_noise_to_image(tmp_path):
    module = Fading(num_classes=3)
    callback = ImageSamples(per_class=2, every_n_steps=2, every_n_epochs=None, tile_size=12, trajectory=4,
                            trajectory_frames=5)  # fmt: skip
    fit_with(callback, module, tmp_path)
    assert module.asked == (4, 5, [0, 1, 2, 0])  # the first classes, one per row
    grid = np.asarray(Image.open(tmp_path / "trajectory" / "step_000002.png").convert("RGB")).astype(int)
    tile = 12
    assert grid.shape == (4 * (tile + 4), 5 * (tile + 4), 3)  # 4 rows of 5 frames, no captions
    for row in range(4):
        for frame in range(5):
            x, y = frame * (tile + 4) + 2, row * (tile + 4) + 2
            assert np.abs(grid[y : y + tile, x : x + tile] - round((frame + 1) / 8 * 255)).max() <= 1
    plain = Flat()  # a model without a trajectory draws only its samples
    fit_with(ImageSamples(every_n_steps=2, every_n_epochs=None, trajectory=4), plain, tmp_path / "plain")
    assert not (tmp_path / "plain" / "trajectory").exists()

"""ELBOLogging: through a real Trainer it logs the ELBO's terms as the VAE computes them, the KL per
latent dimension, the active units over the whole validation set (not per batch), and a grid of inputs
beside their reconstructions every N epochs; any module returning the terms works with it."""

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from trainers import quiet_trainer

from lightning_seq.callbacks import ELBOLogging
from lightning_seq.callbacks.elbo import reconstruction_grid
from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.modules import VariationalAutoencoder
from lightning_seq.nets import VAE

SCENES = dict(
    image_size=16, channels=1, pixels="binary", labels="none", num_train=128, num_val=64, num_test=32,
    batch_size=32, num_workers=0, augment=ImageAugment(crop_scale=None, hflip=False),  # the data as it is
)  # fmt: skip


def test_logs_the_vae_terms_latent_statistics_and_a_reconstruction_grid(tmp_path):
    L.seed_everything(0)
    dm = ImageDataModule(**SCENES)
    model = VariationalAutoencoder(
        VAE.from_preset("nano", image_size=16),
        optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
        warmup_steps=0,
    )
    callback = ELBOLogging(every_n_epochs=2, num_images=16, tile_size=32)
    run = quiet_trainer(tmp_path, max_epochs=4, callbacks=[callback])
    run.fit(model, dm)
    m = {k: float(v) for k, v in run.callback_metrics.items()}
    assert m["val/elbo"] == pytest.approx(-m["val/nll"], rel=1e-5)  # the module's bound, the same number
    assert m["val/elbo"] == pytest.approx(m["val/recon"] - m["val/kl"], rel=1e-5)
    assert sum(m[f"val/kl_dim/{j}"] for j in range(4)) == pytest.approx(m["val/kl"], rel=1e-4)
    assert {"train/elbo", "train/recon", "train/kl"} <= m.keys()

    # active units from scratch: the variance over the validation images of each posterior mean
    batches = [dm.on_after_batch_transfer(b, 0)["image"] for b in dm.val_dataloader()]
    with model.evaluating():
        mu = torch.cat([model.net.encode(x)[0] for x in batches]).double()  # (64, 4)
    variance = mu.var(0, unbiased=False)
    assert m["val/active_units"] == callback.active_units == int((variance > 0.01).sum())

    grids = sorted(p.name for p in (tmp_path / "reconstructions").iterdir())
    assert grids == ["step_000008.png", "step_000016.png"], "epochs 2 and 4 (every_n_epochs=2), 4 steps each"
    grid = np.asarray(Image.open(tmp_path / "reconstructions" / "step_000016.png").convert("L"))
    assert grid.shape == (4 * (32 + 4), 8 * (32 + 4))  # 16 pairs: 4 pairs (8 tiles) a row, 4 rows
    first = batches[0][0, 0].numpy() * 255  # (16, 16): the first validation image, scaled 2x in the grid
    assert np.array_equal(grid[2 : 2 + 32 : 2, 2 : 2 + 32 : 2], first.astype(np.uint8))
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    with model.evaluating():  # the validation step's reconstruction: the decoder's mean at its sample of z
        params = model.elbo_terms(batch["image"], model.step_noise(batch, 1, "val"))["params"]
        recon = model.likelihood.mean(params)[0, 0].numpy()  # (16, 16), the tile beside the input
    tile = grid[2 : 2 + 32 : 2, 36 + 2 : 36 + 2 + 32 : 2].astype(float)
    assert np.abs(tile - recon * 255).max() <= 1.0

    test = run.test(model, dm, verbose=False)[0]
    assert test["test/elbo"] == pytest.approx(test["test/recon"] - test["test/kl"], rel=1e-5)
    assert "test/active_units" in test and "test/kl_dim/0" in test


class Terms(L.LightningModule):
    """Any module returning the terms: two validation batches whose posterior means differ between the
    batches only (dimension 0), within a batch only (1), not at all (2), or by less than 0.01 (3)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        terms = {name: torch.zeros(2) for name in ("elbo", "recon", "kl")}
        return {"loss": (self.weight - 1) ** 2, **terms}

    def validation_step(self, batch, batch_idx):
        n = 8
        mu = torch.zeros(n, 4)
        mu[:, 0] = float(batch_idx)  # 0 in one batch, 1 in the other: variance 0.25 over the data
        mu[:, 1] = torch.arange(n) % 2 * 2.0  # 0, 2, 0, 2: variance 1
        mu[:, 3] = torch.arange(n) % 2 * 0.1  # variance 0.0025
        kl_per_dim = torch.tensor([1.0, 2.0, 0.0, 0.5]).expand(n, 4) * (batch_idx + 1)
        recon = torch.full((n,), -10.0)
        kl = kl_per_dim.sum(-1)
        return {"elbo": recon - kl, "recon": recon, "kl": kl, "kl_per_dim": kl_per_dim, "mu": mu}

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(16, 1), batch_size=8)

    def configure_optimizers(self):
        return torch.optim.SGD([self.weight], lr=0.1)


def test_active_units_count_the_variance_over_the_whole_set_not_per_batch(tmp_path):
    callback = ELBOLogging()
    run = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    run.fit(Terms())
    m = {k: float(v) for k, v in run.callback_metrics.items()}
    assert m["val/active_units"] == 2.0  # dimensions 0 and 1; 2 is constant, 3 varies by 0.0025
    assert [m[f"val/kl_dim/{j}"] for j in range(4)] == pytest.approx([1.5, 3.0, 0.0, 0.75])
    assert m["val/kl"] == pytest.approx(5.25) and m["val/elbo"] == pytest.approx(-15.25)
    assert not (tmp_path / "reconstructions").exists(), "no inputs/reconstructions: no grid"
    loose = ELBOLogging(active_threshold=0.001)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[loose]).fit(Terms())
    assert loose.active_units == 3


def test_reconstruction_grid_puts_each_input_beside_its_reconstruction():
    inputs, recons = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    grid = np.asarray(reconstruction_grid(inputs, recons, tile_size=8).convert("L"))
    assert grid.shape == (2 * 12, 4 * 12)  # 2 pairs a row
    row = grid[2 + 4]  # through the first row of tiles: black, white, black, white
    assert [row[x] for x in (2 + 4, 14 + 4, 26 + 4, 38 + 4)] == [0, 255, 0, 255]


def test_a_module_without_the_terms_and_bad_settings_are_one_clear_line(tmp_path):
    class NoTerms(Terms):
        def validation_step(self, batch, batch_idx):
            return {"loss": torch.zeros(())}

    with pytest.raises(InputError, match=r"ELBOLogging: NoTerms's val step returned no elbo/recon/kl terms"):
        quiet_trainer(tmp_path, max_epochs=1, callbacks=[ELBOLogging()]).fit(NoTerms())
    for kwargs in ({"every_n_epochs": 0}, {"num_images": 0}, {"active_threshold": -1.0}, {"tile_size": 2}):
        with pytest.raises(InputError, match=r"ELBOLogging\.\w+: expected"):
            ELBOLogging(**kwargs)

"""SampleQuality: FID / KID / conditional accuracy in the feature space of our own classifier.

One small feature net, the default one trained on 16x16 scenes (a session fixture), serves every
test. A toy generative module stands in for a real one: its ``sample()`` returns held-out scenes
(optionally of the requested class), noise, or scenes of one class only, so the right ordering of
the metrics is known. Run as a script, this file is also the program of the two-process DDP test.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_seq.callbacks import ImageSamples, SampleQuality
from lightning_seq.callbacks.quality import FeatureNetTraining, default_feature_net, load_feature_net
from lightning_seq.checkpointing import load_net
from lightning_seq.data import ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.modules.image_classifier import load_classifier

SIZES = {"num_train": 1200, "num_val": 300, "num_test": 300}
TRAINING = FeatureNetTraining(widths=(8, 16, 32), epochs=10, num_train=1200, num_test=300, batch_size=32)


def scenes(cache_dir: Path, **overrides) -> ImageDataModule:
    """16x16 RGB scenes in [0, 1] of one large shape, labelled by it: the generative data of the tests."""
    args = dict(image_size=16, object_size=(0.6, 0.9), pixels="unit", num_workers=0, batch_size=50,
                cache_dir=str(cache_dir), **SIZES)  # fmt: skip
    return ImageDataModule(**{**args, **overrides})


class ToyGenerator(L.LightningModule):
    """The generative contract over a bank of images ``(N, C, H, W)`` in [0, 1].

    ``sample(n, labels, generator)`` picks bank images with the generator (of the requested classes
    when ``conditional``), adds ``noise`` times Gaussian noise, and ``shift`` (the one trained weight).
    """

    def __init__(
        self, bank: torch.Tensor, labels: torch.Tensor, conditional: bool = False, noise: float = 0.0
    ):
        super().__init__()
        self.register_buffer("bank", bank, persistent=False)
        self.register_buffer("bank_labels", labels, persistent=False)
        self.shift = nn.Parameter(torch.zeros(()))
        self.num_classes = int(labels.max()) + 1 if conditional else None
        self.pixels, self.noise = "unit", noise
        self.sample_calls = 0

    def sample(self, n: int, *, labels=None, generator=None) -> torch.Tensor:
        self.sample_calls += 1
        u = torch.rand(n, generator=generator)
        if labels is None:
            index = (u * len(self.bank)).long()
        else:
            index = torch.empty(n, dtype=torch.long)
            for i, c in enumerate(labels.tolist()):
                of_class = (self.bank_labels == c).nonzero().flatten().cpu()
                index[i] = of_class[int(u[i] * len(of_class))]
        images = self.bank[index.to(self.bank.device)].float()
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        return (images + self.noise * noise + self.shift).clamp(0, 1)

    def training_step(self, batch, batch_idx):
        return (self.shift - 0.01) ** 2

    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return torch.optim.SGD([self.shift], lr=0.1)


def split(datamodule: ImageDataModule, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images in [0, 1] ``(N, C, H, W)`` and labels."""
    items = datamodule.split_dataset(name)
    batch = items.__getitems__(list(range(len(items))))
    images = torch.stack([b["image"] for b in batch]).float() / 255
    return images, torch.tensor([int(b["label"]) for b in batch])


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The data, its splits, and the default feature net trained on them (its checkpoint and FeatureNet)."""
    cache = tmp_path_factory.mktemp("quality-cache")
    data = scenes(cache)
    data.prepare_data()
    checkpoint = default_feature_net(data, TRAINING)
    val, test = split(data, "val"), split(data, "test")
    return {"cache": cache, "data": data, "ckpt": checkpoint, "net": load_feature_net(checkpoint), "val": val,
            "test": test}  # fmt: skip


def distances(net, real: torch.Tensor, fake: torch.Tensor, subset_size: int = 50) -> tuple[float, float]:
    """FID and KID of ``fake`` against ``real`` (images in [0, 1]) in the feature net's space."""
    fid = FrechetInceptionDistance(feature=net)
    kid = KernelInceptionDistance(feature=net, subsets=20, subset_size=subset_size)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    torch.manual_seed(0)
    return float(fid.compute()), float(kid.compute()[0])


# --------------------------------------------------------------------------------- the metrics
def test_the_default_feature_net_is_a_classifier_checkpoint_trained_once(world):
    checkpoint, net = world["ckpt"], world["net"]
    meta = torch.load(checkpoint, weights_only=True)["feature_net"]
    assert meta["accuracy"] >= TRAINING.min_accuracy
    assert net.classes == world["data"].classes and net.num_classes == 6
    assert (net.image_size, net.in_channels, net.num_features) == (16, 3, 32)
    assert isinstance(load_net(checkpoint), type(net.net))
    assert load_classifier(checkpoint).classes == net.classes  # what `lightning fit` writes, as a teacher
    before = checkpoint.stat().st_mtime_ns
    assert default_feature_net(world["data"], TRAINING) == checkpoint  # cached: not trained again
    assert checkpoint.stat().st_mtime_ns == before
    with pytest.raises(InputError, match=r"SampleQuality\.feature_net: the default feature net reaches only"):
        default_feature_net(world["data"], FeatureNetTraining(**{**TRAINING.__dict__, "min_accuracy": 1.01}))


def test_fid_and_kid_of_a_set_against_itself_are_zero(world):
    images = world["val"][0]
    fid, kid = distances(world["net"], images, images.clone())
    noise_fid, noise_kid = distances(world["net"], images, torch.rand(images.shape))
    print(f"FID/KID against itself {fid, kid}, against noise {noise_fid, noise_kid}")
    assert abs(fid) < 1e-6 * noise_fid  # exactly 0 but for rounding
    assert abs(kid) < 0.01 * noise_kid  # unbiased, over random subsets: about 0


def test_held_out_scenes_are_far_closer_than_noise_or_a_single_class(world):
    net, (val, _), (test, test_labels) = world["net"], world["val"], world["test"]
    one_class = test[test_labels == 0]
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
    held_out, single, random = (distances(net, val, fake, 40) for fake in (test, one_class, noise))
    print(f"FID/KID held out {held_out}, one class {single}, noise {random}")
    assert held_out[0] < 0.1 * random[0] and held_out[0] < 0.5 * single[0]
    assert held_out[1] < 0.1 * random[1] and held_out[1] < 0.5 * single[1]


def test_kid_works_with_small_subsets(world):
    net, (val, _) = world["net"], world["val"]
    kid = KernelInceptionDistance(feature=net, subsets=5, subset_size=8)
    kid.update(val[:20], real=True)
    kid.update(torch.rand(20, 3, 16, 16), real=False)
    mean, std = kid.compute()
    assert torch.isfinite(mean) and torch.isfinite(std) and mean > 0


def test_the_feature_net_converts_size_and_channels(world):
    net, (val, labels) = world["net"], world["val"]
    big = torch.nn.functional.interpolate(val, size=40, mode="bicubic").clamp(0, 1)  # resized back to 16
    right = (net.features_and_logits(big)[1].argmax(-1) == labels).float().mean()
    assert right > 0.9, right  # the net still knows the shapes
    grey = val[:8].mean(1, keepdim=True)
    assert net(grey).shape == (8, net.num_features)  # grey is repeated to RGB


# ------------------------------------------------------------------------------- the callback
def fit(world, tmp_path, module: L.LightningModule, callbacks: list, **trainer_args) -> L.Trainer:
    """Train ``module`` briefly on the test scenes (2 steps and a validation run, unless told otherwise)."""
    args = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2,
        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer = L.Trainer(**{**args, **trainer_args})
    trainer.fit(module, datamodule=scenes(world["cache"]))
    return trainer


def test_the_callback_logs_the_metrics_and_keeps_the_feature_net_out_of_the_model(world, tmp_path):
    quality = SampleQuality(str(world["ckpt"]), num_samples=120, batch_size=40, kid_subset_size=50)
    saved = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    module = ToyGenerator(*world["test"], conditional=True)
    trainer = fit(world, tmp_path, module, [quality, saved])
    metrics = trainer.callback_metrics
    assert {"val/fid", "val/kid", "val/cond_acc"} <= set(metrics)
    assert metrics["val/cond_acc"] > 0.8  # the toy draws scenes of the asked class: the net agrees
    assert metrics["val/fid"] == pytest.approx(quality.last["val/fid"])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == {"shift"}  # the toy's own weight only
    assert checkpoint["callbacks"]["SampleQuality"] == {"validations": 1}  # no weights
    assert module.shift.item() != 0.0  # it trained
    trained = quality.net.net.state_dict()
    for name, value in load_net(world["ckpt"]).state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=0, atol=0, msg=name)
    assert not any(m.training for m in quality.net.modules())
    assert not any(p.requires_grad for p in quality.net.parameters())
    assert not any(p is q for p in quality.net.parameters() for q in module.parameters())


def test_conditional_accuracy_falls_when_samples_ignore_their_class(world, tmp_path):
    class Unconditioned(ToyGenerator):
        def sample(self, n, *, labels=None, generator=None):
            return super().sample(n, labels=None, generator=generator)

    quality = SampleQuality(str(world["ckpt"]), num_samples=120, batch_size=40, kid_subset_size=50)
    trainer = fit(world, tmp_path, Unconditioned(*world["test"], conditional=True), [quality])
    assert trainer.callback_metrics["val/cond_acc"] < 0.4  # about 1/6


def test_noisy_samples_score_worse_and_measurements_repeat(world, tmp_path):
    values = {}
    for noise in (0.0, 0.0, 0.5):
        quality = SampleQuality(str(world["ckpt"]), num_samples=120, batch_size=40, kid_subset_size=50)
        module = ToyGenerator(*world["test"], noise=noise)
        fit(world, tmp_path / str(len(values)), module, [quality])
        values[len(values)] = quality.last
    assert values[0] == values[1]  # the same seed: the same samples and KID subsets
    assert values[2]["val/fid"] > 3 * values[0]["val/fid"] and "val/cond_acc" not in values[0]


def test_validate_measures_and_fit_measures_every_n_validations(world, tmp_path):
    module = ToyGenerator(*world["test"])
    quality = SampleQuality(str(world["ckpt"]), num_samples=120, batch_size=40, kid_subset_size=50)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1,
                        callbacks=[quality])  # fmt: skip
    trainer.validate(module, datamodule=scenes(world["cache"]))  # under torch.inference_mode
    assert {"val/fid", "val/kid"} <= set(trainer.callback_metrics) and module.sample_calls == 3
    quality = SampleQuality(str(world["ckpt"]), num_samples=120, batch_size=40, every_n_validations=2)
    fit(world, tmp_path, module, [quality], limit_train_batches=6, val_check_interval=2)  # 3 validations
    assert module.sample_calls == 3 + 3  # measured at the 2nd only: 3 batches of 40 samples


def test_other_data_with_no_feature_net_named_is_one_clear_error(world, tmp_path):
    from imagefiles import class_folders

    folder = class_folders(tmp_path / "photos", sizes=((16, 16),))
    data = ImageDataModule(str(folder), image_size=16, pixels="unit", num_workers=0, batch_size=4,
                           cache_dir=str(world["cache"]))  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_progress_bar=False,
                        callbacks=[SampleQuality()])  # fmt: skip
    with pytest.raises(InputError, match=r"SampleQuality.feature_net: no feature net is named.*Fix: train"):
        trainer.fit(ToyGenerator(*world["test"]), datamodule=data)


# ------------------------------------------------------------------------------------------ DDP
def test_two_processes_measure_what_one_process_does(world, tmp_path):
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        command = [sys.executable, __file__, str(world["cache"]), str(world["ckpt"]), str(out), str(devices)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results[devices] = [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]
    one, (zero, first) = results[1][0], results[2]
    print(f"one process {one['last']}, two {zero['last']}")
    for name in ("val/fid", "val/kid"):
        assert zero["last"][name] == pytest.approx(one["last"][name], rel=1e-4), name
        assert first["logged"][name] == zero["logged"][name]  # every rank logs the same value
    assert one["grid_files"] == zero["grid_files"] == 2  # ImageSamples: after steps 1 and 2 ...
    assert zero["drew"] and not first["drew"]  # ... drawn by rank zero alone
    calls = [one["sample_calls"], zero["sample_calls"], first["sample_calls"]]
    assert calls == [2 + 4, 2 + 2, 2]  # grids + the quality's batches (4 of 30, shared by the ranks)


def _ddp_main(cache: str, checkpoint: str, out: str, devices: int) -> None:
    """One fit of the toy on 1 or 2 CPU processes (gloo); each rank writes what it measured and logged."""
    torch.set_num_threads(1)
    data = scenes(Path(cache))
    data.prepare_data()
    quality = SampleQuality(checkpoint, num_samples=120, batch_size=30, kid_subset_size=50, kid_subsets=10)
    grids = ImageSamples(num_images=4, every_n_steps=1, every_n_epochs=None)
    module = ToyGenerator(*split(data, "test"))
    trainer = L.Trainer(
        default_root_dir=out, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[quality, grids],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    record = {
        "last": quality.last, "logged": logged, "drew": grids.last_grid is not None,
        "grid_files": len(list((Path(out) / "samples").glob("*.png"))), "sample_calls": module.sample_calls,
    }  # fmt: skip
    Path(out, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _ddp_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

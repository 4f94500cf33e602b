"""Diffusion module: the loss is the MSE of each parameterisation's target at q_sample's x_t, a nano U-Net
learns the scenes through a real Trainer, the EMA is the warmed-up average and is what validates and
samples, per-item draws (timestep, noise, label dropout) do not depend on the batch, label dropout uses
the null label at its rate, sample() keeps the generative contract with its sampler options and
guidance, the trajectory ends at the sample, and bad settings are one clear error."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from trainers import quiet_trainer

from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.decoding.diffusion import NoiseSchedule
from lightning_seq.errors import InputError
from lightning_seq.modules import Diffusion
from lightning_seq.nets import UNet


class Blobs(Dataset):
    """8x8 grey images in [-1, 1] whose brightness is their class, with label and index."""

    def __init__(self, n: int = 64, size: int = 8, classes: int = 3):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        level = self.labels.view(-1, 1, 1, 1).float() / classes * 2 - 1
        self.images = (level + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "index": i}


def _model(conditional: bool = True, **kwargs) -> Diffusion:
    torch.manual_seed(0)
    classes = 3 if conditional else None
    net = UNet(image_size=8, in_channels=1, num_classes=classes, preset="nano")
    settings = dict(timesteps=50, conditional=conditional, num_classes=classes)
    return Diffusion(net, **{**settings, **kwargs})


class Recorder(nn.Module):
    """A linear "denoiser" that records what it is called with (image_size 8, one channel)."""

    image_size, in_channels, num_classes, null_label = 8, 1, 3, 3

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls: list[tuple[Tensor, Tensor, Tensor | None]] = []

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        self.calls.append((x.detach(), t, labels))
        return self.scale * x


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("parameterization", ["epsilon", "x0", "v"])
def test_the_loss_is_the_mse_of_the_parameterisations_target(parameterization):
    model = Diffusion(Recorder(), timesteps=50, parameterization=parameterization, ema_decay=None,
                      conditional=True, num_classes=3, label_dropout=0.0)  # fmt: skip
    batch = next(iter(DataLoader(Blobs(16), batch_size=16)))
    loss = model._step(batch, "val")["loss"]
    t, noise, _ = model.draws(batch, "val")
    (x_t, seen_t, labels), schedule = model.net.calls[-1], NoiseSchedule("linear", 50)
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    x0 = batch["image"]
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    target = {"epsilon": noise, "x0": x0, "v": abar.sqrt() * noise - (1 - abar).sqrt() * x0}[parameterization]
    torch.testing.assert_close(loss, F.mse_loss(0.5 * x_t, target))
    assert torch.equal(seen_t, t) and torch.equal(labels, batch["label"])  # no label dropout in validation


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_label_dropout_replaces_its_share_of_labels_by_the_null_label_in_training_only():
    model = Diffusion(Recorder(), timesteps=50, label_dropout=0.25, conditional=True, num_classes=3)
    batch = next(iter(DataLoader(Blobs(512), batch_size=512)))
    model._step(batch, "train")
    labels = model.net.calls[-1][2]
    dropped = labels == 3
    assert 0.19 < dropped.float().mean() < 0.31  # 128 of 512 expected
    assert torch.equal(labels[~dropped], batch["label"][~dropped])
    _, _, drop = model.draws(batch, "train")
    assert torch.equal(dropped, drop < 0.25)  # the items' own draws decide


def test_the_draws_of_an_item_do_not_depend_on_its_batch_and_validation_draws_are_fixed():
    model = _model()
    batch = next(iter(DataLoader(Blobs(10), batch_size=10)))
    together = model.draws(batch, "train")
    parts = (slice(0, 3), slice(3, 10))
    halves = [model.draws({k: v[part] for k, v in batch.items()}, "train") for part in parts]
    for whole, *parts in zip(together, *halves, strict=True):
        assert torch.equal(whole, torch.cat(parts))
    t, noise, _ = together
    assert t.min() >= 0 and t.max() < 50 and noise.shape == (10, 1, 8, 8)
    assert not torch.equal(model.draws(batch, "val")[1], noise)  # the stages draw apart


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Diffusion, ImageDataModule, dict]:
    """A nano conditional U-Net after 120 steps on 16x16 grey scenes (about 10 s)."""
    L.seed_everything(0)
    dm = ImageDataModule(
        cache_dir=str(tmp_path_factory.mktemp("cache")), image_size=16, channels=1, pixels="symmetric",
        labels="class", num_train=512, num_val=64, num_test=64, batch_size=32, num_workers=0,
        augment=ImageAugment(crop_scale=None, hflip=False),
    )  # fmt: skip
    torch.manual_seed(0)
    net = UNet(image_size=16, in_channels=1, num_classes=6, preset="nano")
    model = Diffusion(net, timesteps=100, conditional=True, num_classes=6, ema_decay=0.99,
                      optimizer=lambda p: torch.optim.Adam(p, lr=2e-3))  # fmt: skip
    before = quiet_trainer(tmp_path_factory.mktemp("before")).validate(model, dm, verbose=False)[0]
    trainer = quiet_trainer(tmp_path_factory.mktemp("fit"), max_steps=120, limit_val_batches=2)
    trainer.fit(model, dm)
    after = trainer.validate(model, dm, verbose=False)[0]
    return model, dm, {"before": before, "after": after}


def test_a_nano_unet_learns_the_scenes_through_a_real_trainer(trained):
    _, _, metrics = trained
    before, after = metrics["before"]["val/loss"], metrics["after"]["val/loss"]
    # a fresh U-Net predicts 0 (its output conv starts at zero): the noise's variance, 1.0
    assert before == pytest.approx(1.0, abs=0.05)
    assert after < 0.25, f"val/loss {after:.3f} after 120 steps"


def test_validation_and_samples_use_the_moving_average(trained):
    model, dm, _ = trained
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    assert model.denoiser_net is model.net_ema
    with torch.no_grad():
        t, noise, _ = model.draws(batch, "val")
        ema_loss = model.compute_loss(model.net_ema, batch["image"], t, noise, batch["label"])
        raw_loss = model.compute_loss(model.net, batch["image"], t, noise, batch["label"])
    assert not torch.equal(ema_loss, raw_loss)
    first = model.sample(4, generator=torch.Generator().manual_seed(0), steps=5)
    saved = [p.clone() for p in model.net.parameters()]
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)  # the trained net changes; the average, which samples, does not
    again = model.sample(4, generator=torch.Generator().manual_seed(0), steps=5)
    with torch.no_grad():
        for p, s in zip(model.net.parameters(), saved, strict=True):
            p.copy_(s)
    assert torch.equal(first, again)


def test_the_ema_is_the_warmed_up_average_of_the_weights(tmp_path):
    model = _model(ema_decay=0.5, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    initial = [p.clone() for p in model.net.parameters()]
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, DataLoader(Blobs(), batch_size=16))
    decay = min(0.5, (1 + 1) / (10 + 1))  # after step 1
    moved = 0
    for ema, start, now in zip(model.net_ema.parameters(), initial, model.net.parameters(), strict=True):
        torch.testing.assert_close(ema, decay * start + (1 - decay) * now)
        moved += not torch.equal(start, now)
    assert moved > 0
    assert any(name.startswith("net_ema.") for name in model.state_dict())  # checkpoints keep both


def test_sample_keeps_the_contract_and_its_options_change_the_draw(trained):
    model, _, _ = trained
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a, b = model.sample(6, generator=g(), steps=10), model.sample(6, generator=g(), steps=10)
    assert a.shape == (6, 1, 16, 16) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, model.sample(6, generator=torch.Generator().manual_seed(2), steps=10))
    assert not torch.equal(a, model.sample(6, generator=g(), steps=20))
    assert not torch.equal(a, model.sample(6, generator=g(), steps=10, guidance=3.0))
    assert not torch.equal(a, model.sample(6, generator=g(), steps=10, eta=1.0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert torch.equal(a, model.sample(6, labels=labels, generator=g(), steps=10))  # default: 0, 1, ...
    ddpm = model.sample(2, generator=g(), sampler="ddpm")
    assert ddpm.shape == (2, 1, 16, 16)


def test_unit_pixels_come_back_in_0_1():
    model = _model(conditional=False, pixels="unit")
    images = model.sample(3, generator=torch.Generator().manual_seed(0), steps=4)
    assert images.min() >= 0 and images.max() <= 1 and images.shape == (3, 1, 8, 8)


def test_guidance_mixes_the_conditional_and_unconditional_predictions_in_one_call():
    model = Diffusion(Recorder(), timesteps=20, guidance=3.0, conditional=True, num_classes=3, ema_decay=None)
    model.sample(4, generator=torch.Generator().manual_seed(0), steps=5)
    calls = model.net.calls
    assert len(calls) == 5 and all(x.shape[0] == 8 for x, _, _ in calls)  # 2B a step: with and without class
    assert calls[0][2].tolist() == [0, 1, 2, 0, 3, 3, 3, 3]


def test_the_trajectory_goes_from_noise_to_the_sample(trained):
    model, _, _ = trained
    frames = model.denoising_trajectory(3, frames=5, generator=torch.Generator().manual_seed(4))
    assert frames.shape == (5, 3, 1, 16, 16)
    final = model.sample(3, generator=torch.Generator().manual_seed(4))
    assert torch.equal(frames[-1], final)
    assert frames[0].std() > frames[-1].std() * 0.5  # x_T is noise (clamped to [-1, 1])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timesteps": 1}, "model.init_args.timesteps"),
        ({"schedule": "quadratic"}, "model.init_args.schedule"),
        ({"parameterization": "score"}, "model.init_args.parameterization"),
        ({"label_dropout": 1.0}, "model.init_args.label_dropout"),
        ({"conditional": False, "num_classes": None, "guidance": 2.0}, "needs a class-conditional model"),
        ({"label_dropout": 0.0, "guidance": 2.0}, "the unconditional one is never trained"),
        ({"guidance": -1.0}, "model.init_args.guidance: expected a scale >= 0"),
        ({"ema_decay": 1.0}, "model.init_args.ema_decay"),
        ({"pixels": "uint8"}, "model.init_args.pixels"),
        ({"sampler": "euler"}, "model.init_args.sampler"),
        ({"sample_steps": 51}, "model.init_args.sample_steps"),
        ({"eta": -0.5}, "model.init_args.eta"),
        ({"variance": "learned"}, "model.init_args.variance"),
        ({"clip_x0": 0.0}, "model.init_args.clip_x0"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(InputError, match=message):
        _model(**settings)


def test_sampling_options_are_checked_and_an_unconditional_model_refuses_labels():
    model = _model(conditional=False)
    with pytest.raises(InputError, match="labels given, but the model is not class-conditional"):
        model.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(InputError, match="needs a class-conditional model"):
        model.sample(2, guidance=2.0)
    with pytest.raises(InputError, match=r"sample_steps: expected DDIM steps in 1\.\.50"):
        model.sample(2, steps=0)

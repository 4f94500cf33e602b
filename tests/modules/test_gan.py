"""GAN module: the losses' closed forms, generator steps as the trainer's steps, both optimizers and the
EMA updating what they should, the sample() contract, per-item noise, and bad settings refused."""

import math
import os
import subprocess
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lightning_seq.callbacks import GradientClipping
from lightning_seq.errors import InputError
from lightning_seq.modules import GAN
from lightning_seq.modules.gan import discriminator_loss, generator_loss, r1_penalty
from lightning_seq.nets import DCGAN


class Blobs(Dataset):
    """Images in [-1, 1] with their label and index, as ImageDataModule batches them."""

    def __init__(self, n: int = 64, size: int = 8, classes: int = 3):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.images = (
            (self.labels.view(-1, 1, 1, 1).float() / classes) * 2
            - 1
            + 0.1 * torch.randn(n, 1, size, size, generator=g)
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].clamp(-1, 1), "label": self.labels[i], "index": i}


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    return L.Trainer(enable_model_summary=False, default_root_dir=tmp_path, **{**settings, **kwargs})


def _model(conditional: bool = True, **kwargs) -> GAN:
    torch.manual_seed(0)
    net = DCGAN(image_size=8, in_channels=1, num_classes=3 if conditional else None, preset="nano")
    return GAN(net, conditional=conditional, num_classes=3 if conditional else None, **kwargs)


def test_the_losses_equal_their_closed_forms():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    expected = -(0.9 * sig(real).log() + 0.1 * (1 - sig(real)).log()).mean() - (1 - sig(fake)).log().mean()
    torch.testing.assert_close(discriminator_loss(real, fake, "bce", 0.1), expected)
    torch.testing.assert_close(generator_loss(fake, "bce"), -sig(fake).log().mean())
    hinge = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    torch.testing.assert_close(discriminator_loss(real, fake, "hinge"), hinge)
    torch.testing.assert_close(generator_loss(fake, "hinge"), -fake.mean())
    # R1 of D(x) = w . x is ||w||^2 for every image
    w = torch.tensor([3.0, 4.0])
    x = torch.randn(5, 2, requires_grad=True)
    assert r1_penalty(x @ w, x).item() == pytest.approx(25.0)


def test_max_steps_counts_generator_steps_and_both_nets_learn(tmp_path):
    model = _model(n_critic=2)
    d_before = [p.clone() for p in model.net.discriminator.parameters()]
    data = DataLoader(Blobs(), batch_size=16)
    trainer = _trainer(
        tmp_path,
        max_steps=6,
        limit_val_batches=0,
        log_every_n_steps=1,
        callbacks=[GradientClipping(clip_val=10.0)],
    )
    trainer.fit(model, data)
    assert trainer.global_step == 6  # six batches: six generator steps, 12 uncounted discriminator steps
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 6
    states = [model.named_optimizer(n).optimizer.state for n in ("discriminator", "generator")]
    d_steps = {int(s["step"]) for s in states[0].values()}
    g_steps = {int(s["step"]) for s in states[1].values()}
    assert d_steps == {12} and g_steps == {6}
    assert all(
        not torch.equal(a, b) for a, b in zip(d_before, model.net.discriminator.parameters(), strict=True)
    )
    # the EMA moved toward the generator, and is neither the initial nor the current weights
    ema, current = model.generator_ema.state_dict(), model.net.generator.state_dict()
    assert any(not torch.equal(ema[k], current[k]) for k in ema if ema[k].is_floating_point())
    metrics = trainer.callback_metrics
    for name in ("train/loss_d", "train/loss_g", "train/d_real", "train/d_fake"):
        assert math.isfinite(metrics[name].item()), name
    assert {"train/grad_norm_generator", "train/grad_norm_discriminator"} <= set(metrics)


def test_the_ema_is_the_warmed_up_average_of_the_generator_weights(tmp_path):
    model = _model(ema_decay=0.5)
    initial = [p.clone() for p in model.net.generator.parameters()]
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(model, DataLoader(Blobs(), batch_size=16))
    decay = min(0.5, (1 + 1) / (10 + 1))  # after generator step 1
    for ema, start, now in zip(
        model.generator_ema.parameters(), initial, model.net.generator.parameters(), strict=True
    ):
        torch.testing.assert_close(ema, decay * start + (1 - decay) * now)


def test_sample_uses_the_average_is_deterministic_and_in_the_data_convention():
    model = _model()
    a = model.sample(6, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    with torch.no_grad():
        for p in model.generator_ema.parameters():
            p.add_(0.5)
    assert not torch.equal(model.sample(6, generator=torch.Generator().manual_seed(1)), a)  # the EMA samples
    unit = _model(pixels="unit").sample(4, generator=torch.Generator().manual_seed(1))
    assert unit.min() >= 0 and unit.max() <= 1
    plain = _model(ema_decay=None)
    assert plain.generator_ema is None and plain.generator is plain.net.generator


def test_the_noise_of_an_item_does_not_depend_on_its_batch():
    model = _model()
    index = torch.arange(10)
    together = model.item_noise(index, 0)
    apart = torch.cat([model.item_noise(index[:3], 0), model.item_noise(index[3:], 0)])
    assert torch.equal(together, apart) and together.shape == (10, model.latent_size)
    assert not torch.equal(together, model.item_noise(index, 1))


def test_lazy_r1_penalises_every_kth_discriminator_step_k_times_as_much():
    lazy, every_step = _model(r1_gamma=2.0, r1_every=4), _model(r1_gamma=2.0)
    assert [lazy.r1_weight(step) for step in range(9)] == [8.0, 0, 0, 0, 8.0, 0, 0, 0, 8.0]
    assert sum(lazy.r1_weight(s) for s in range(400)) == sum(every_step.r1_weight(s) for s in range(400))
    assert _model().r1_weight(0) == 0.0  # no R1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": "wasserstein"}, "model.init_args.loss: expected 'bce'"),
        ({"n_critic": 0}, "model.init_args.n_critic"),
        ({"label_smoothing": 1.0}, "model.init_args.label_smoothing"),
        ({"loss": "hinge", "label_smoothing": 0.1}, "only for the bce loss"),
        ({"r1_gamma": -1.0}, "model.init_args.r1_gamma"),
        ({"r1_every": 0}, "model.init_args.r1_every"),
        ({"ema_decay": 1.0}, "model.init_args.ema_decay"),
        ({"pixels": "uint8"}, "model.init_args.pixels: a GAN's generator draws images in \\[-1, 1\\]"),
        ({"aux_weight": -0.5}, "model.init_args.aux_weight: expected a weight >= 0"),
        ({"aux_weight": 1.0}, "the discriminator has no class head"),
    ],
)
def test_bad_settings_are_one_clear_error(settings, message):
    with pytest.raises(InputError, match=message):
        _model(**settings)


def test_the_auxiliary_class_losses_are_cross_entropies_of_the_class_head(tmp_path):
    """AC-GAN: L_D gains w * CE(c(x), y) on real images, L_G gains w * CE(c(G(z, y)), y); the class head
    is trained by the discriminator's optimizer only, and a head on an unconditional net is refused."""
    torch.manual_seed(0)
    net = DCGAN(image_size=8, in_channels=1, num_classes=3, preset="nano", aux_classifier=True)
    model = GAN(net, conditional=True, num_classes=3, aux_weight=2.0, ema_decay=None)
    images, labels = Blobs(n=8).images.clamp(-1, 1), Blobs(n=8).labels
    scores, classes = net.discriminator.scores_and_classes(images, labels)
    torch.testing.assert_close(scores, net.discriminator(images, labels))  # one pass, the same scores
    assert classes.shape == (8, 3)
    phi, head = net.discriminator.features(images, labels).mean((2, 3)), net.discriminator.classifier
    torch.testing.assert_close(classes, phi @ head.weight.T + head.bias)  # of the pooled features

    head_before = net.discriminator.classifier.weight.clone()
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(model, DataLoader(Blobs(), batch_size=16))
    assert not torch.equal(head_before, net.discriminator.classifier.weight)
    assert math.isfinite(trainer.callback_metrics["train/loss_aux"].item())
    g_params = {id(p) for p in model.optimizations()["generator"].params.parameters()}
    assert id(net.discriminator.classifier.weight) not in g_params
    with pytest.raises(
        InputError,
        match="aux_classifier: the auxiliary classifier predicts the class, but the net has no classes",
    ):
        DCGAN(image_size=8, in_channels=1, preset="nano", aux_classifier=True)


def test_conditioning_must_agree_between_module_net_and_data(tmp_path):
    with pytest.raises(InputError, match="the net is conditioned on 3 classes"):
        GAN(DCGAN(image_size=8, in_channels=1, num_classes=3, preset="nano"))
    with pytest.raises(InputError, match="needs a net with a `generator`"):
        GAN(torch.nn.Linear(2, 2))

    class Unlabelled(Blobs):
        def __getitem__(self, i):
            return {k: v for k, v in super().__getitem__(i).items() if k != "label"}

    with pytest.raises(InputError, match="needs labelled batches"):
        _trainer(tmp_path, max_steps=1).fit(_model(), DataLoader(Unlabelled(), batch_size=8))


DDP_SCRIPT = """
import sys, torch, lightning as L
from lightning_seq.data import ImageDataModule
from lightning_seq.modules import GAN
from lightning_seq.nets import DCGAN

world, n_critic, conditioning, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
L.seed_everything(3)
data = ImageDataModule(image_size=16, pixels="symmetric", labels="class", num_train=256, num_val=32,
                       num_test=32, batch_size=16 // world, num_workers=0,
                       augment={"crop_scale": None, "hflip": False})
net = DCGAN(image_size=16, in_channels=3, num_classes=6, preset="nano", generator_conditioning=conditioning)
model = GAN(net, conditional=True, num_classes=6, n_critic=n_critic)
trainer = L.Trainer(max_steps=8, accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                    logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                    enable_model_summary=False)
trainer.fit(model, data)
if trainer.is_global_zero:
    torch.save(model.state_dict(), out)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("n_critic", "conditioning"), [(1, "concat"), (2, "batch_norm")])
def test_two_ddp_processes_with_half_batches_end_with_the_weights_of_one_process(
    tmp_path, n_critic, conditioning
):
    """Plain ``strategy=ddp`` (no "unused parameters" error); batch norm over the global batch (the
    class-conditional one's too) and per-item noise make the two processes' discriminator and generator
    steps those of one process."""
    script = tmp_path / "ddp_gan.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for world in (1, 2):
        out = tmp_path / f"world{world}.pt"
        done = subprocess.run(
            [sys.executable, str(script), str(world), str(n_critic), conditioning, str(out)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (torch.load(tmp_path / f"world{w}.pt", weights_only=True) for w in (1, 2))
    assert one.keys() == two.keys() and any(k.startswith("generator_ema.") for k in one)
    for name, value in one.items():
        torch.testing.assert_close(two[name], value, rtol=1e-4, atol=1e-5, msg=name)

"""VariationalAutoencoder: a nano VAE learns the embedded scenes through a real Trainer; its bounds are
the ELBO and IWAE as derived (IWAE_1 = ELBO in expectation, IWAE_k rises with k, and on a linear-Gaussian
VAE, whose log p(x) is known in closed form, it converges to it); beta, KL warm-up and free bits follow
their equations; the noise is a function of the item; bad settings are one clear line."""

import itertools
import math

import lightning as L
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal
from trainers import quiet_trainer

from lightning_seq.callbacks import ELBOLogging
from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import PixelLikelihood
from lightning_seq.modules import VariationalAutoencoder
from lightning_seq.nets import VAE

SCENES = dict(  # one-object 16 x 16 grey scenes, binarised; 8 batches an epoch
    image_size=16, channels=1, pixels="binary", labels="none", num_train=256, num_val=64, num_test=64,
    batch_size=32, num_workers=0, augment=ImageAugment(crop_scale=None, hflip=False),  # the data as it is
)  # fmt: skip


def nano_vae(**kwargs) -> VariationalAutoencoder:
    settings = dict(optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), warmup_steps=0, lr_schedule="constant")
    return VariationalAutoencoder(VAE.from_preset("nano", image_size=16), **{**settings, **kwargs})


def factorised_nll(dm: ImageDataModule) -> float:
    """Validation NLL (nats/image) of the best model with independent pixels: the train set's per-pixel
    frequencies. A VAE below it has learned structure that its latent carries."""
    train = torch.cat([dm.on_after_batch_transfer(b, 0)["image"] for b in dm.train_dataloader()])
    val = torch.cat([dm.on_after_batch_transfer(b, 0)["image"] for b in dm.val_dataloader()])
    p = train.mean(0).clamp(1 / 512, 1 - 1 / 512)  # (C, H, W)
    return float(-(val * p.log() + (1 - val) * (1 - p).log()).flatten(1).sum(1).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[VariationalAutoencoder, ImageDataModule, dict]:
    """The nano VAE after 160 steps (20 epochs; about 2 s) on the binarised scenes."""
    L.seed_everything(0)
    dm = ImageDataModule(cache_dir=str(tmp_path_factory.mktemp("cache")), **SCENES)
    model = nano_vae(iwae_samples=200, iwae_batch=50)
    before = quiet_trainer(tmp_path_factory.mktemp("before")).validate(model, dm, verbose=False)[0]
    run = quiet_trainer(tmp_path_factory.mktemp("vae"), max_epochs=20, callbacks=[ELBOLogging()])
    run.fit(model, dm)
    after = run.validate(model, dm, verbose=False)[0]
    test = run.test(model, dm, verbose=False)[0]
    return model, dm, {"before": before, "after": after, "test": test}


def test_a_nano_vae_learns_the_scenes_through_a_real_trainer(trained):
    _, dm, metrics = trained
    before, after, test = metrics["before"]["val/nll"], metrics["after"]["val/nll"], metrics["test"]
    baseline = factorised_nll(dm)  # about 60 nats on these scenes
    assert before > 150, f"an untrained model is near 256 ln 2 = 177 nats, got {before:.1f}"
    assert after < 50 and after < baseline - 8, f"-ELBO {after:.1f} nats; independent pixels {baseline:.1f}"
    assert metrics["after"]["val/bpd"] == pytest.approx(after / (256 * math.log(2)), rel=1e-5)
    assert test["test/nll"] <= -test["test/elbo"] + 0.1, "IWAE_200 is a tighter bound than the ELBO"
    assert test["test/bpd"] == pytest.approx(test["test/nll"] / (256 * math.log(2)), rel=1e-5)


def test_iwae_k_does_not_decrease_with_k_on_the_trained_model(trained):
    model, dm, _ = trained
    x = torch.cat([dm.on_after_batch_transfer(b, 0)["image"] for b in dm.val_dataloader()])  # (64, 1, 16, 16)
    x = x.repeat(4, 1, 1, 1)  # (256, ...): 4 independent estimates per image
    bounds = {
        k: -model.iwae_nll(x, k, generator=torch.Generator().manual_seed(k)) for k in (1, 10, 100, 1000)
    }
    means = {k: round(b.mean().item(), 3) for k, b in bounds.items()}
    for small, large in itertools.pairwise(bounds):
        gain = bounds[large] - bounds[small]  # (256,)
        assert gain.mean() > -2 * gain.std() / math.sqrt(len(gain)), f"IWAE_k by k (nats): {means}"
    assert means[1000] - means[1] > 0.5, f"a trained VAE's IWAE gains over its ELBO: {means}"
    assert means[10] > means[1] and means[100] > means[1], f"IWAE_k by k (nats): {means}"


def test_iwae_1_equals_the_elbo_in_expectation(trained):
    model, dm, _ = trained
    x = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)["image"][:1].expand(4000, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    iwae = -model.iwae_nll(x, 1, generator=g)  # (4000,) draws of log p(x, z) - log q(z | x)
    with model.evaluating():
        elbo = model.elbo_terms(x, torch.randn(1, 4000, model.latent_size, generator=g))["elbo"]  # (4000,)
    error = math.sqrt(iwae.var() / len(iwae) + elbo.var() / len(elbo))
    assert abs(iwae.mean() - elbo.mean()) < 4 * error, (
        f"{iwae.mean():.3f} vs {elbo.mean():.3f} +- {error:.3f}"
    )


# ------------------------------------------------------------------------ linear-Gaussian VAE
class ContinuousGaussian(PixelLikelihood):
    """A Gaussian density of fixed std per value (test only: a model whose log p(x) is in closed form)."""

    name, pixels, params = "continuous", ("unit",), 1

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        return torch.distributions.Normal(params[:, 0], self.sigma).log_prob(x)

    def mean(self, params: Tensor) -> Tensor:
        return params[:, 0]


class LinearGaussianVAE(nn.Module):
    """``p(z) = N(0, I)``, ``p(x|z) = N(W z + b, s^2 I)``, so ``p(x) = N(b, W W^T + s^2 I)``; the encoder is
    the exact posterior (W has orthogonal columns, so it is diagonal), or a distorted one."""

    def __init__(self, w: Tensor, b: Tensor, s: float, mu_shift: float = 0.0, logvar_shift: float = 0.0):
        super().__init__()
        self.w, self.b, self.s, self.latent_size = w, b, s, w.shape[1]
        self.likelihood = ContinuousGaussian(s)
        self.posterior_var = 1 / (1 + (w * w).sum(0) / s**2)  # (Z,) diag of (I + W^T W / s^2)^-1
        self.mu_shift, self.logvar_shift = mu_shift, logvar_shift
        self.anchor = nn.Parameter(torch.zeros(()))  # the module needs a parameter to exist

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = self.posterior_var * ((x.flatten(1) - self.b) @ self.w) / self.s**2  # (B, Z)
        logvar = self.posterior_var.log().expand_as(mu)
        return mu + self.mu_shift, logvar + self.logvar_shift

    def decode(self, z: Tensor) -> Tensor:
        return (z @ self.w.T + self.b).view(-1, 1, 1, 2, 2)  # (N, P=1, C=1, H=2, W=2)


def linear_gaussian(**distortion) -> VariationalAutoencoder:
    """The module on the linear-Gaussian net (4 pixels, 2 latents); ``distortion`` shifts its posterior."""
    w = torch.tensor([[0.3, 0.2], [-0.2, 0.3], [0.1, 0.0], [0.0, 0.1]])  # orthogonal columns: W^T W diagonal
    assert abs(float(w[:, 0] @ w[:, 1])) < 1e-7
    net = LinearGaussianVAE(w, torch.full((4,), 0.5), 0.1, **distortion)
    return VariationalAutoencoder(net, pixels="unit", iwae_batch=500)


def marginal(model: VariationalAutoencoder) -> MultivariateNormal:
    """The exact ``p(x) = N(b, W W^T + s^2 I)`` of the linear-Gaussian net."""
    net = model.net
    return MultivariateNormal(net.b, net.w @ net.w.T + net.s**2 * torch.eye(4))


def test_iwae_of_a_linear_gaussian_vae_converges_to_the_exact_log_likelihood():
    torch.manual_seed(0)
    exact_model = linear_gaussian()
    x = marginal(exact_model).sample(torch.Size([8])).clamp(0, 1).view(8, 1, 2, 2)  # (B, C, H, W)
    log_px = marginal(exact_model).log_prob(x.flatten(1))  # (8,) in closed form
    iwae_1 = -exact_model.iwae_nll(x, 1, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(iwae_1, log_px, atol=1e-4), "with the true posterior every weight is p(x)"
    model = linear_gaussian(mu_shift=0.3, logvar_shift=0.7)  # a worse q: a loose ELBO
    repeats = x.repeat(100, 1, 1, 1)  # (800, 1, 2, 2): 100 independent estimates per image
    gaps = {}
    for k in (1, 10, 100, 5000):
        bound = -model.iwae_nll(repeats, k, generator=torch.Generator().manual_seed(k)).view(100, 8)
        gaps[k] = (log_px - bound.mean(0)).mean().item()  # E[log p(x) - IWAE_k], averaged over images
    assert gaps[1] > 1.0, f"the distorted posterior's ELBO is loose: {gaps}"
    assert gaps[1] > gaps[10] > gaps[100] > gaps[5000] > -0.005, f"the gap shrinks with k: {gaps}"
    assert gaps[5000] < 0.02, f"IWAE_5000 within 0.02 nats of log p(x): {gaps}"


# ------------------------------------------------------------------------ beta, warm-up, free bits
def test_the_loss_is_recon_plus_beta_times_kl_with_free_bits_per_dimension():
    recon = torch.tensor([-10.0, -14.0])
    kl_per_dim = torch.tensor([[0.02, 1.0, 3.0], [0.04, 2.0, 1.0]], requires_grad=True)  # means .03, 1.5, 2
    plain = nano_vae(beta=2.0).compute_loss(recon, kl_per_dim, weight=2.0)
    assert plain.item() == pytest.approx(12.0 + 2.0 * (0.03 + 1.5 + 2.0))
    free = nano_vae(free_bits=0.5).compute_loss(recon, kl_per_dim, weight=1.0)
    assert free.item() == pytest.approx(12.0 + 0.5 + 1.5 + 2.0)  # the first dimension charged 0.5 nats
    free.backward()
    assert kl_per_dim.grad[:, 0].abs().sum() == 0, "a dimension under its free bits gets no KL gradient"
    assert torch.allclose(kl_per_dim.grad[:, 1:], torch.full((2, 2), 0.5))


class Weights(L.Callback):
    def __init__(self):
        self.weights: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append(pl_module.kl_weight())


def test_the_kl_weight_warms_up_linearly_to_beta_in_training_only(tmp_path):
    L.seed_everything(0)
    dm = ImageDataModule(**SCENES)
    model, weights = nano_vae(beta=0.5, kl_warmup_steps=4), Weights()
    quiet_trainer(tmp_path, max_steps=6, callbacks=[weights], limit_val_batches=0).fit(model, dm)
    assert weights.weights == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5])
    model.eval()
    assert model.kl_weight() == 0.5


def test_a_large_beta_pushes_the_kl_down(tmp_path):
    """beta-VAE: the same 80 steps with beta = 8 end with a much smaller KL (and a worse reconstruction)
    than with beta = 1 (measured: 0.62 vs 1.84 nats)."""
    terms = {}
    for beta in (1.0, 8.0):
        L.seed_everything(0)
        dm = ImageDataModule(**SCENES)
        model = nano_vae(beta=beta)
        quiet_trainer(tmp_path / str(beta), max_epochs=10, limit_val_batches=0).fit(model, dm)
        batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
        with model.evaluating():
            out = model.elbo_terms(batch["image"], torch.zeros(1, 32, 4))
        terms[beta] = out["kl"].mean().item(), out["recon"].mean().item()
    assert terms[8.0][0] < 0.5 * terms[1.0][0], f"(KL, recon) by beta: {terms}"
    assert terms[8.0][1] < terms[1.0][1], f"(KL, recon) by beta: {terms}"


# ------------------------------------------------------------------------ noise, outputs, generation
@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # _step called outside a Trainer
def test_the_noise_of_an_item_does_not_depend_on_its_batch():
    model = nano_vae()
    x = (torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    whole = model._step({"image": x, "index": torch.arange(10, 16)}, "val")
    part = model._step({"image": x[3:], "index": torch.arange(13, 16)}, "val")
    assert torch.equal(whole["elbo"][3:], part["elbo"])  # what makes 2 processes equal to one
    other = model._step({"image": x, "index": torch.arange(20, 26)}, "val")
    assert not torch.equal(whole["elbo"], other["elbo"])
    train = model.step_noise({"image": x, "index": torch.arange(6)}, 3, "train")
    assert train.shape == (3, 6, 4) and not torch.equal(train[0], train[1])  # 3 draws per image
    assert abs(train.mean()) < 0.3 and abs(train.std() - 1) < 0.2


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # _step called outside a Trainer
def test_the_step_returns_what_elbo_logging_needs():
    model = nano_vae(train_samples=2)
    x = (torch.rand(5, 1, 16, 16) > 0.5).float()
    out = model._step({"image": x, "index": torch.arange(5)}, "train")
    assert out["loss"].requires_grad and out["loss"].shape == ()
    for name in ("elbo", "recon", "kl"):
        assert out[name].shape == (5,) and not out[name].requires_grad
    assert out["kl_per_dim"].shape == out["mu"].shape == (5, 4)
    assert torch.allclose(out["elbo"], out["recon"] - out["kl"])
    assert torch.allclose(out["kl"], out["kl_per_dim"].sum(-1))
    assert out["inputs"] is x and out["reconstructions"].shape == x.shape
    assert ((out["reconstructions"] >= 0) & (out["reconstructions"] <= 1)).all()


def test_samples_reconstructions_and_interpolations_are_images_in_the_data_convention(trained):
    model, dm, _ = trained
    a = model.sample(6, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert a.shape == (6, 1, 16, 16) and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 1.0}, "samples are pixels in the data's convention"
    x = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)["image"][:4]
    recon = model.reconstruct(x)
    assert recon.shape == x.shape
    line = model.interpolate(x[0], x[1], steps=5)
    assert line.shape == (5, 1, 16, 16)
    assert torch.allclose(line[0], recon[0], atol=1e-6) and torch.allclose(line[-1], recon[1], atol=1e-6)
    assert model.interpolate(x[:2], x[2:], steps=3).shape == (2, 3, 1, 16, 16)
    means = VariationalAutoencoder(model.net, sample_mode="mean").sample(8)
    assert means.min() >= 0 and means.max() <= 1, "sample_mode=mean gives the probabilities of 1"
    assert not set(means.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # _step called outside a Trainer
def test_uint8_samples_are_integers_in_0_to_255():
    model = VariationalAutoencoder(
        VAE.from_preset("nano", image_size=16, likelihood="logistic"), pixels="uint8"
    )
    images = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert images.dtype == torch.long and images.min() >= 0 and images.max() <= 255
    x = torch.randint(0, 256, (2, 1, 16, 16))
    out = model._step({"image": x}, "val")  # no index: torch.randn noise
    assert torch.isfinite(out["elbo"]).all() and out["reconstructions"].dtype == torch.long


# ------------------------------------------------------------------------ bad input
def test_bad_settings_are_one_clear_line():
    with pytest.raises(
        InputError, match=r"a bernoulli likelihood is a distribution of binary pixels, but the"
    ):
        nano_vae(pixels="uint8")
    with pytest.raises(InputError, match=r"model.init_args.conditional: the VAE is unconditional"):
        nano_vae(conditional=True, num_classes=3)
    with pytest.raises(InputError, match=r"net.init_args.latent_size: expected a positive integer, got 0"):
        VAE(latent_size=0)
    for name, value in (("beta", -1.0), ("free_bits", -0.1), ("train_samples", 0), ("iwae_samples", 0)):
        with pytest.raises(InputError, match=rf"model.init_args.{name}: expected"):
            nano_vae(**{name: value})

"""VAE net: both layouts give (B, Z) posteriors and (N, P, C, H, W) likelihood parameters for every
likelihood, the presets are the papers' shapes, the sample depends on the noise, and sizes the layout
cannot take are one clear error."""

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import LIKELIHOODS
from lightning_seq.nets import VAE

PARAMS = {"bernoulli": 1, "categorical": 256, "logistic": 2, "gaussian": 2, "gaussian_fixed": 1}
DATA = {  # a batch in the convention of each likelihood
    "bernoulli": lambda g, shape: (torch.rand(shape, generator=g) > 0.5).float(),
    "categorical": lambda g, shape: torch.randint(0, 256, shape, generator=g),
    "logistic": lambda g, shape: torch.randint(0, 256, shape, generator=g),
    "gaussian": lambda g, shape: torch.randint(0, 256, shape, generator=g) / 255,
    "gaussian_fixed": lambda g, shape: torch.randint(0, 256, shape, generator=g) / 255,
}


@pytest.mark.parametrize("encoder", ["mlp", "conv"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_shapes_of_both_layouts_for_every_likelihood(encoder, likelihood):
    torch.manual_seed(0)
    net = VAE(image_size=8, in_channels=3, latent_size=5, encoder=encoder, hidden=(16,), widths=(4, 8),
              likelihood=likelihood)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = DATA[likelihood](g, (2, 3, 8, 8))
    unit = x.float() / (255 if likelihood in ("categorical", "logistic") else 1)
    mu, logvar = net.encode(unit)
    assert mu.shape == logvar.shape == (2, 5)
    out = net(unit, torch.randn(4, 2, 5))  # 4 draws per image
    assert out.z.shape == (4, 2, 5)
    assert out.params.shape == (8, PARAMS[likelihood], 3, 8, 8)
    assert net.likelihood.params == PARAMS[likelihood]
    log_p = net.likelihood.log_prob(out.params[:2], x)  # the decoder feeds the data's likelihood
    assert log_p.shape == (2,) and torch.isfinite(log_p).all() and (log_p <= 0).all()


def test_presets_have_the_classic_shapes():
    classic = VAE.from_preset("classic")  # Kingma & Welling's MNIST MLP: 784-400-20 and back
    linears = [m for m in classic.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 400),
        (400, 40),
        (20, 400),
        (400, 784),
    ]
    assert sum(p.numel() for p in classic.parameters()) == 652_824  # as the PyTorch examples' VAE
    conv = VAE.from_preset("conv_small", image_size=16)
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in conv.modules())
    assert VAE(preset="nano", image_size=16).latent_size == 4
    assert VAE(preset="classic", activation="tanh").encoder.net[1].__class__ is torch.nn.Tanh


def test_the_sample_moves_with_the_noise_and_the_posterior_mean_is_deterministic():
    torch.manual_seed(1)
    net = VAE.from_preset("nano", image_size=16)
    x = torch.rand(3, 1, 16, 16)
    a, b = net(x, torch.zeros(3, 4)), net(x, torch.ones(3, 4))
    assert torch.equal(a.mu, b.mu) and torch.equal(a.z, a.mu)  # eps = 0 is the mean
    assert torch.allclose(b.z, b.mu + torch.exp(0.5 * b.logvar))
    assert not torch.allclose(a.params, b.params)


def test_sizes_it_cannot_be_built_with_are_one_clear_error():
    with pytest.raises(InputError, match=r"net.init_args.latent_size: expected a positive integer, got 0"):
        VAE(latent_size=0)
    with pytest.raises(InputError, match=r"net.init_args.image_size: .* needs a multiple of 4, got 30"):
        VAE(image_size=30, encoder="conv", widths=(8, 16))
    VAE(image_size=30, encoder="conv", widths=(8,))  # one stage halves 30 once: fine
    with pytest.raises(InputError, match=r"net.init_args.likelihood: expected one of"):
        VAE(likelihood="poisson")
    with pytest.raises(InputError, match=r"net.init_args.sigma"):
        VAE(likelihood="gaussian_fixed", sigma=0.0)
    with pytest.raises(InputError, match=r"net.init_args.encoder"):
        VAE(encoder="transformer")

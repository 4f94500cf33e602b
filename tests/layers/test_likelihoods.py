"""Pixel likelihoods are probabilities of the discrete pixels: they sum to one over every value a
pixel can take, their samples follow them, and a mismatched pixel convention is refused."""

import math

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import LIKELIHOODS, bits_per_dim, check_pixels, make_likelihood

VALUES = {"binary": torch.tensor([0.0, 1.0]), "uint8": torch.arange(256), "unit": torch.arange(256) / 255}


def params_for(likelihood, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random parameter sets ``(n, P, 1, 1, 1)``, some far in the tails (large means, tiny scales)."""
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(n, likelihood.params, 1, 1, 1, generator=g) * 3
    if likelihood.params == 2:
        params[:, 1] = torch.linspace(-9, 1, n).view(n, 1, 1, 1)  # log scales, down to the clamp
    return params


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_probabilities_of_every_pixel_value_sum_to_one(name):
    likelihood = make_likelihood(name, sigma=0.05)
    values = VALUES[likelihood.pixels[0]]
    params = params_for(likelihood, 32)
    # every value k against every parameter set: (K, 32) log-probabilities
    grid = torch.stack(
        [likelihood.log_prob(params, torch.full((32, 1, 1, 1), float(v))) for v in values.tolist()]
    )
    assert torch.isfinite(grid).all()
    assert torch.allclose(grid.exp().sum(0), torch.ones(32), atol=2e-3)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_samples_follow_the_likelihood(name):
    likelihood = make_likelihood(name, sigma=0.1)
    params = params_for(likelihood, 1, seed=3).expand(20000, -1, -1, -1, -1)
    if likelihood.params == 2:
        params = params.clone()
        params[:, 1] = -1.5  # a scale wide enough that many values occur
    draws = likelihood.sample(params, torch.Generator().manual_seed(0)).flatten()
    values = VALUES[likelihood.pixels[0]]
    index = torch.bucketize(draws.float(), values.float(), right=False).clamp(max=len(values) - 1)
    assert torch.allclose(values.float()[index], draws.float()), "samples are not pixel values"
    observed = torch.bincount(index, minlength=len(values)).float() / len(draws)
    expected = (
        torch.stack(
            [likelihood.log_prob(params[:1], torch.full((1, 1, 1, 1), float(v))) for v in values.tolist()]
        )
        .exp()
        .flatten()
    )
    assert (observed - expected).abs().sum() < 0.06  # total variation of 20,000 draws
    mean = (expected * values.float()).sum()
    assert torch.allclose(likelihood.mean(params[:1]).flatten(), mean.view(1), rtol=0.03, atol=0.01)


def test_log_prob_sums_over_channels_and_pixels():
    likelihood = make_likelihood("bernoulli")
    params = torch.zeros(2, 1, 3, 4, 5)  # p = 1/2 everywhere
    assert torch.allclose(
        likelihood.log_prob(params, torch.ones(2, 3, 4, 5)), torch.full((2,), -60 * math.log(2))
    )
    assert torch.allclose(bits_per_dim(torch.tensor(60 * math.log(2)), 60), torch.tensor(1.0))


def test_a_likelihood_of_other_pixels_is_refused():
    with pytest.raises(
        InputError, match=r"model\.net: a bernoulli likelihood .* 'uint8' pixels.*pixels=binary"
    ):
        check_pixels(make_likelihood("bernoulli"), "uint8", "model.net")
    check_pixels(make_likelihood("logistic"), "uint8", "model.net")
    with pytest.raises(InputError, match="expected one of"):
        make_likelihood("poisson")

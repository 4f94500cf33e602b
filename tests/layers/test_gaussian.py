"""Gaussian latents: the closed-form KLs equal torch.distributions' and a Monte-Carlo estimate, the KL is
exactly 0 when q is the prior, gradients reach mu and sigma through the reparameterised sample, and the
log-densities are the normal's."""

import math

import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from lightning_seq.layers.gaussian import (
    diagonal_normal_log_prob,
    kl_diagonal_standard,
    kl_gaussian,
    reparameterize,
    standard_normal_log_prob,
)


def random_covariances(generator: torch.Generator, *batch: int, k: int) -> torch.Tensor:
    """Symmetric positive definite ``(*batch, k, k)``: ``A A^T + 0.5 I`` in float64."""
    a = torch.randn(*batch, k, k, generator=generator, dtype=torch.float64)
    return a @ a.transpose(-1, -2) + 0.5 * torch.eye(k, dtype=torch.float64)


def test_diagonal_kl_equals_torch_distributions_per_dimension():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))  # (8, 5)
    assert torch.allclose(kl_diagonal_standard(mu, logvar), expected, atol=1e-6)


def test_diagonal_kl_matches_a_monte_carlo_estimate_within_its_error():
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.tensor([0.7, -1.2, 0.0], dtype=torch.float64), torch.tensor([-0.5, 0.8, -2.0]).double()
    eps = torch.randn(200_000, 3, generator=g, dtype=torch.float64)
    z = reparameterize(mu, logvar, eps)  # (N, 3)
    log_ratio = diagonal_normal_log_prob(z, mu, logvar) - standard_normal_log_prob(z)  # (N,)
    estimate, error = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    exact = kl_diagonal_standard(mu, logvar).sum()
    assert abs(estimate - exact) < 4 * error, f"MC {estimate:.4f} +- {error:.4f}, closed form {exact:.4f}"


def test_full_covariance_kl_equals_torch_distributions_batched():
    g = torch.Generator().manual_seed(2)
    mu1, mu2 = torch.randn(4, 6, generator=g).double(), torch.randn(4, 6, generator=g).double()
    cov1, cov2 = random_covariances(g, 4, k=6), random_covariances(g, 4, k=6)
    expected = kl_divergence(MultivariateNormal(mu1, cov1), MultivariateNormal(mu2, cov2))  # (4,)
    assert torch.allclose(kl_gaussian(mu1, cov1, mu2, cov2), expected, atol=1e-9)
    shared = kl_gaussian(mu1, cov1[0], mu2, cov2[0])  # one covariance broadcast over the batch
    expected = kl_divergence(MultivariateNormal(mu1, cov1[0]), MultivariateNormal(mu2, cov2[0]))
    assert shared.shape == (4,) and torch.allclose(shared, expected, atol=1e-9)


def test_full_covariance_kl_matches_a_monte_carlo_estimate_within_its_error():
    g = torch.Generator().manual_seed(3)
    mu1, mu2 = torch.randn(3, generator=g).double(), torch.randn(3, generator=g).double()
    cov1, cov2 = random_covariances(g, k=3), random_covariances(g, k=3)
    p, q = MultivariateNormal(mu1, cov1), MultivariateNormal(mu2, cov2)
    torch.manual_seed(3)
    x = p.sample((200_000,))
    log_ratio = p.log_prob(x) - q.log_prob(x)  # (N,)
    estimate, error = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    exact = kl_gaussian(mu1, cov1, mu2, cov2)
    assert abs(estimate - exact) < 4 * error, f"MC {estimate:.4f} +- {error:.4f}, closed form {exact:.4f}"


def test_full_kl_of_diagonal_gaussians_against_the_prior_is_the_sum_of_the_diagonal_kls():
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(5, 4, generator=g).double(), torch.randn(5, 4, generator=g).double()
    eye = torch.eye(4, dtype=torch.float64)
    full = kl_gaussian(mu, torch.diag_embed(logvar.exp()), torch.zeros(4).double(), eye)
    assert torch.allclose(full, kl_diagonal_standard(mu, logvar).sum(-1), atol=1e-12)


def test_kl_is_exactly_zero_when_q_is_the_prior():
    assert (kl_diagonal_standard(torch.zeros(3, 7), torch.zeros(3, 7)) == 0).all()
    assert (kl_gaussian(torch.zeros(2, 5), torch.eye(5), torch.zeros(2, 5), torch.eye(5)) == 0).all()
    g = torch.Generator().manual_seed(5)  # and ~0 (rounding only) for any q equal to p
    mu, cov = torch.randn(3, 4, generator=g).double(), random_covariances(g, 3, k=4)
    assert kl_gaussian(mu, cov, mu, cov).abs().max() < 1e-12
    assert (kl_diagonal_standard(torch.tensor([0.1]), torch.tensor([0.0])) > 0).all()


def test_gradients_reach_mu_and_sigma_through_the_sample():
    g = torch.Generator().manual_seed(6)
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    logvar = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    eps = torch.randn(400_000, 2, generator=g, dtype=torch.float64)
    z = reparameterize(mu, logvar, eps)  # (N, 2)
    z.square().mean(0).sum().backward()  # E[z^2] = mu^2 + sigma^2 per dimension
    sigma2 = logvar.detach().exp()
    assert torch.allclose(mu.grad, 2 * mu.detach(), atol=0.02)  # d/dmu = 2 mu
    assert torch.allclose(logvar.grad, sigma2, atol=0.02)  # d/dlogvar sigma^2 = sigma^2
    mu.grad = logvar.grad = None
    reparameterize(mu, logvar, eps[:1]).sum().backward()  # one draw: dz/dmu = 1, dz/dlogvar = sigma eps / 2
    assert torch.equal(mu.grad, torch.ones(2, dtype=torch.float64))
    assert torch.allclose(logvar.grad, 0.5 * (0.5 * logvar.detach()).exp() * eps[0])


def test_log_densities_are_the_normals():
    g = torch.Generator().manual_seed(7)
    z, mu, logvar = (torch.randn(6, 3, generator=g) for _ in range(3))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(diagonal_normal_log_prob(z, mu, logvar), expected, atol=1e-5)
    assert torch.allclose(standard_normal_log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(-1), atol=1e-5)
    samples = reparameterize(mu, logvar, torch.randn(2, 6, 3, generator=g))  # a leading sample axis
    assert samples.shape == (2, 6, 3)

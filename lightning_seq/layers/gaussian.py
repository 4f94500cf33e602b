"""Gaussian latents: the reparameterised sample, log-densities and KL divergences (closed form).

A VAE's encoder gives ``q(z|x) = N(mu, diag(exp(logvar)))``; the prior is ``N(0, I)``. Drawing
``z = mu + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (Kingma & Welling, 2014) moves the randomness
into ``eps``, so gradients reach ``mu`` and ``logvar`` through the sample. For two diagonal or full
Gaussians the KL divergence has a closed form; the VAE uses the diagonal one against the prior, and
:func:`kl_gaussian` covers any pair of full covariances. Pure torch: no Lightning.
"""

import math

import torch
from torch import Tensor

__all__ = [
    "diagonal_normal_log_prob",
    "kl_diagonal_standard",
    "kl_gaussian",
    "reparameterize",
    "standard_normal_log_prob",
]

_LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """The sample of ``N(mu, diag(exp(logvar)))`` that the standard normal draw ``eps`` gives.

    .. math:: z = \\mu + \\sigma \\odot \\epsilon, \\qquad \\sigma = e^{\\log\\sigma^2 / 2}

    Args:
        mu: means ``(..., Z)``.
        logvar: log-variances, the shape of ``mu``.
        eps: standard normal draws, broadcastable to (or a leading sample axis before) ``mu``'s shape,
            e.g. ``(S, B, Z)`` for ``S`` samples of ``(B, Z)`` posteriors.

    Returns:
        ``z`` of the broadcast shape of ``mu`` and ``eps``.
    """
    return mu + torch.exp(0.5 * logvar) * eps


def kl_diagonal_standard(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per latent dimension, in nats.

    .. math:: \\mathrm{KL}_j = \\tfrac12 \\left(\\mu_j^2 + \\sigma_j^2 - 1 - \\log\\sigma_j^2\\right)

    Exactly 0 where ``mu = 0`` and ``logvar = 0`` (q is the prior). Sum over the last axis for the
    KL of the whole latent.

    Args:
        mu: means ``(..., Z)``.
        logvar: log-variances ``(..., Z)``.

    Returns:
        ``(..., Z)``.
    """
    return 0.5 * (mu.square() + torch.exp(logvar) - 1.0 - logvar)


def kl_gaussian(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> Tensor:
    """``KL(N(mu1, S1) || N(mu2, S2))`` for full covariances, batched, in nats.

    .. math::
        \\mathrm{KL} = \\tfrac12 \\Big(\\mathrm{tr}(S_2^{-1} S_1) + (\\mu_2 - \\mu_1)^\\top S_2^{-1}
        (\\mu_2 - \\mu_1) - k + \\log\\det S_2 - \\log\\det S_1\\Big)

    With Cholesky factors ``S = L L^T``, the trace is ``||L_2^{-1} L_1||_F^2`` (the trace trick:
    ``tr(S_2^{-1} S_1) = tr(L_2^{-T} L_2^{-1} L_1 L_1^T) = tr((L_2^{-1} L_1)^T (L_2^{-1} L_1))``), the
    quadratic form ``||L_2^{-1} (mu_2 - mu_1)||^2`` and ``log det S = 2 sum_i log L_ii``: two triangular
    solves, no inverse.

    Args:
        mu1: means of the first ``(..., k)``.
        cov1: its covariances ``(..., k, k)``, symmetric positive definite.
        mu2: means of the second ``(..., k)``.
        cov2: its covariances ``(..., k, k)``.

    Returns:
        ``(...)``, the broadcast batch shape.
    """
    k = mu1.shape[-1]
    batch = torch.broadcast_shapes(mu1.shape[:-1], mu2.shape[:-1], cov1.shape[:-2], cov2.shape[:-2])
    l1 = torch.linalg.cholesky(cov1).expand(*batch, k, k)  # (..., k, k) lower triangular
    l2 = torch.linalg.cholesky(cov2).expand(*batch, k, k)
    a = torch.linalg.solve_triangular(l2, l1, upper=False)  # (..., k, k) = L2^-1 L1
    diff = (mu2 - mu1).expand(*batch, k).unsqueeze(-1)  # (..., k, 1)
    b = torch.linalg.solve_triangular(l2, diff, upper=False)  # (..., k, 1) = L2^-1 (mu2 - mu1)
    trace = a.square().sum(dim=(-2, -1))
    quadratic = b.square().sum(dim=(-2, -1))
    log_det = 2.0 * (_log_diag(l2) - _log_diag(l1))  # log det S2 - log det S1
    return 0.5 * (trace + quadratic - k + log_det)


def _log_diag(lower: Tensor) -> Tensor:
    """``sum_i log L_ii`` of Cholesky factors ``(..., k, k) -> (...)``."""
    return torch.diagonal(lower, dim1=-2, dim2=-1).log().sum(-1)


def diagonal_normal_log_prob(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """``log N(z; mu, diag(exp(logvar)))``, summed over the last axis, in nats.

    .. math:: \\log q(z) = -\\tfrac12 \\sum_j \\left(\\log 2\\pi + \\log\\sigma_j^2
        + (z_j - \\mu_j)^2 / \\sigma_j^2\\right)

    Args:
        z: points ``(..., Z)``.
        mu: means, broadcastable to ``z``.
        logvar: log-variances, broadcastable to ``z``.

    Returns:
        ``(...)``.
    """
    return -0.5 * (_LOG_2PI + logvar + (z - mu).square() * torch.exp(-logvar)).sum(-1)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I) = -(Z log 2 pi + ||z||^2) / 2`` over the last axis: ``(..., Z) -> (...)``."""
    return -0.5 * (_LOG_2PI + z.square()).sum(-1)

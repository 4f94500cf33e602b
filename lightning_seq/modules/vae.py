"""VariationalAutoencoder: trains a VAE by the ELBO and reports likelihoods as nats and bits/dim.

For an image ``x`` (in the data's pixel convention) the net's encoder gives ``q(z|x) = N(mu, diag(sigma^2))``
from ``x`` in ``[0, 1]``, and its decoder the parameters of ``p(x|z)``, a likelihood of the pixels as the
data holds them (:mod:`lightning_seq.layers.likelihoods`). With ``z_s = mu + sigma * eps_s``::

    ELBO(x) = 1/S sum_s log p(x | z_s) - KL(q(z|x) || N(0, I))          (KL in closed form)
    loss    = -mean_x 1/S sum_s log p(x | z_s) + beta_t sum_j max(lambda, mean_x KL_j)
    IWAE_k  = log 1/k sum_i p(x | z_i) p(z_i) / q(z_i | x)  <=  log p(x)          (z_i ~ q(z|x))

``beta_t`` ramps linearly from 0 to ``beta`` over ``kl_warmup_steps`` (KL annealing, Bowman et al.,
2016) and ``lambda`` is ``free_bits`` nats per latent dimension (Kingma et al., 2016), applied to the
batch mean of each dimension's KL. ``val/nll`` is ``-ELBO`` (a bound), ``test/nll`` the tighter
``-IWAE_k`` (Burda et al., 2016), both also as bits/dim.

The noise ``eps`` of an item is a function of ``(seed, step, item index, stage)``
(:func:`~lightning_seq.data.pixels.item_normals`) when the batch has its ``"index"``, so a run draws the
same noise in any batch composition, in any number of processes and after a resume.
"""

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seq.data import pixels as px
from lightning_seq.errors import InputError
from lightning_seq.layers.gaussian import (
    diagonal_normal_log_prob,
    kl_diagonal_standard,
    reparameterize,
    standard_normal_log_prob,
)
from lightning_seq.layers.likelihoods import check_pixels
from lightning_seq.modules._generative import GenerativeModule

__all__ = ["VariationalAutoencoder"]

_STREAMS = {"train": 0, "val": 1, "test": 2, "predict": 3}  # the noise of each stage apart
_IWAE_STREAM = 16  # + chunk number: the IWAE's samples, apart from the ELBO's


class VariationalAutoencoder(GenerativeModule):
    """Trains a VAE net (e.g. :class:`~lightning_seq.nets.VAE`) on unlabelled images.

    The net has ``encode(x_unit) -> (mu, logvar)`` (each ``(B, Z)``), ``decode(z) -> params (N, P, C, H, W)``,
    ``latent_size`` and ``likelihood`` (a ``PixelLikelihood`` of the data's ``pixels``). Each step returns
    the terms :class:`~lightning_seq.callbacks.ELBOLogging` logs: ``elbo``, ``recon``, ``kl`` ``(B,)``,
    ``kl_per_dim`` and ``mu`` ``(B, Z)``, ``inputs`` and ``reconstructions`` (the likelihood's mean at
    the first sample) in the pixel convention.

    Args:
        net: the VAE network.
        beta: weight of the KL term (``beta``-VAE; 1 is the ELBO).
        kl_warmup_steps: the KL weight ramps linearly from 0 to ``beta`` over this many training steps.
        free_bits: the least KL, in nats per latent dimension, that the loss charges (on the batch mean
            of each dimension; under DDP, of each process's batch); 0 turns it off.
        train_samples: draws of ``z`` per image in the training ELBO.
        iwae_samples: ``k`` of the IWAE bound of ``test/nll``.
        iwae_batch: samples per image evaluated at once by the IWAE (memory: ``iwae_batch * B`` decodes).
        sample_mode: what :meth:`sample` returns: a ``sample`` of the likelihood (pixels in the data's
            convention, 0/1 for binary ones, what sample-quality metrics compare with the data) or its
            ``mean`` (binary pixels: the probability of 1, a smoother picture). Reconstructions and
            interpolations always show the mean.
        seed: seeds the per-item noise.
        pixels: what the data's images hold (linked from the DataModule).
        conditional: must be false: the VAE is unconditional.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        free_bits: float = 0.0,
        train_samples: int = 1,
        iwae_samples: int = 1000,
        iwae_batch: int = 100,
        sample_mode: Literal["mean", "sample"] = "sample",
        seed: int = 0,
        pixels: px.Pixels = "binary",
        conditional: bool = False,
        **kwargs,
    ):
        _check_settings(
            beta, kl_warmup_steps, free_bits, train_samples, iwae_samples, iwae_batch, sample_mode
        )
        if conditional:
            raise InputError(
                "model.init_args.conditional: the VAE is unconditional. Fix: set it to false (or leave it "
                "out); for class-conditional samples use a conditional GAN or diffusion model."
            )
        likelihood = getattr(net, "likelihood", None)
        if likelihood is None:
            raise InputError(
                f"model.init_args.net: {type(net).__name__} has no `likelihood`. Fix: use "
                "lightning_seq.nets.VAE, or give the net a PixelLikelihood attribute."
            )
        if pixels in px.PIXELS:  # an unknown convention is the base class's error
            check_pixels(likelihood, pixels, "model.init_args.net.init_args.likelihood")
        super().__init__(net, pixels=pixels, conditional=False, **kwargs)

    @property
    def likelihood(self) -> nn.Module:
        """The net's ``PixelLikelihood`` of the data's pixels."""
        return self.net.likelihood

    @property
    def latent_size(self) -> int:
        return int(self.net.latent_size)

    # -------------------------------------------------------------------------------- the bound
    def kl_weight(self) -> float:
        """``beta_t``: ``beta * min(1, step / kl_warmup_steps)`` in training, ``beta`` otherwise."""
        beta, warmup = self.hparams.beta, self.hparams.kl_warmup_steps
        if not self.training or warmup <= 0:
            return float(beta)
        return float(beta) * min(1.0, self.global_step / warmup)

    def compute_loss(self, recon: Tensor, kl_per_dim: Tensor, weight: float) -> Tensor:
        """``-mean_x recon + weight * sum_j max(free_bits, mean_x KL_j)``.

        Args:
            recon: ``(B,)`` the sample mean of ``log p(x | z)`` per image.
            kl_per_dim: ``(B, Z)`` the closed-form KL per latent dimension.
            weight: the KL's weight ``beta_t``.
        """
        kl = kl_per_dim.mean(0)  # (Z,)
        if self.hparams.free_bits > 0:
            kl = kl.clamp(min=self.hparams.free_bits)
        return -recon.mean() + weight * kl.sum()

    def elbo_terms(self, x: Tensor, eps: Tensor) -> dict[str, Tensor]:
        """The ELBO's terms of images ``x (B, C, H, W)`` (pixel convention) with noise ``eps (S, B, Z)``.

        Returns:
            ``recon`` ``(B,)`` (mean over the ``S`` samples of ``log p(x | z_s)``), ``kl_per_dim`` ``(B, Z)``,
            ``kl`` and ``elbo`` ``(B,)``, ``mu``, ``logvar`` ``(B, Z)`` and ``params`` of the first sample
            ``(B, P, C, H, W)``.
        """
        mu, logvar = self.net.encode(px.to_unit(x, self.pixels))  # (B, Z) each
        samples, size = eps.shape[0], x.shape[0]
        z = reparameterize(mu, logvar, eps)  # (S, B, Z)
        params = self.net.decode(z.reshape(samples * size, -1))  # (S * B, P, C, H, W)
        targets = x.expand(samples, *x.shape).reshape(samples * size, *x.shape[1:])  # (S * B, C, H, W)
        recon = self.likelihood.log_prob(params, targets).view(samples, size).mean(0)  # (B,)
        kl_per_dim = kl_diagonal_standard(mu.float(), logvar.float())  # (B, Z)
        kl = kl_per_dim.sum(-1)  # (B,)
        return {
            "recon": recon, "kl_per_dim": kl_per_dim, "kl": kl, "elbo": recon - kl, "mu": mu,
            "logvar": logvar, "params": params[:size],
        }  # fmt: skip

    @torch.no_grad()
    def iwae_log_likelihood(self, x: Tensor, k: int, eps_fn=None) -> Tensor:
        """The IWAE bound ``IWAE_k(x) <= log p(x)`` per image ``(B,)``, ``iwae_batch`` samples at a time.

        .. math:: \\mathrm{IWAE}_k = \\log \\frac1k \\sum_{i=1}^k
            \\frac{p(x \\mid z_i)\\, p(z_i)}{q(z_i \\mid x)}, \\quad z_i \\sim q(z \\mid x)

        Args:
            x: images ``(B, C, H, W)`` in the pixel convention.
            k: importance samples per image.
            eps_fn: ``eps_fn(chunk_number, samples) -> (samples, B, Z)`` standard normals; default
                ``torch.randn`` on the module's device.
        """
        mu, logvar = self.net.encode(px.to_unit(x, self.pixels))  # (B, Z) each
        size, chunk = x.shape[0], max(1, min(self.hparams.iwae_batch, k))
        if eps_fn is None:
            eps_fn = lambda _, s: torch.randn(s, size, self.latent_size, device=mu.device)  # noqa: E731
        total = torch.full((size,), -math.inf, device=mu.device)  # running log sum_i w_i
        for number, start in enumerate(range(0, k, chunk)):
            samples = min(chunk, k - start)
            z = reparameterize(mu, logvar, eps_fn(number, samples).to(mu.device))  # (s, B, Z)
            params = self.net.decode(z.reshape(samples * size, -1))  # (s * B, P, C, H, W)
            targets = x.expand(samples, *x.shape).reshape(samples * size, *x.shape[1:])
            log_px = self.likelihood.log_prob(params, targets).view(samples, size)  # (s, B)
            log_w = log_px + standard_normal_log_prob(z) - diagonal_normal_log_prob(z, mu, logvar)  # (s, B)
            total = torch.logaddexp(total, torch.logsumexp(log_w.float(), dim=0))
        return total - math.log(k)

    def iwae_nll(
        self, x: Tensor, k: int | None = None, *, index: Tensor | None = None, generator=None
    ) -> Tensor:
        """``-IWAE_k(x)``, an upper bound on ``-log p(x)`` in nats per image ``(B,)``, in eval mode.

        Args:
            x: images ``(B, C, H, W)`` in the pixel convention.
            k: importance samples; default ``iwae_samples``.
            index: the items' indices: per-item noise (:func:`~lightning_seq.data.pixels.item_normals`).
            generator: else the noise's ``torch.Generator``.
        """
        k = k or self.hparams.iwae_samples
        with self.evaluating():
            return -self.iwae_log_likelihood(x, k, self._iwae_noise(x.shape[0], index, generator))

    # -------------------------------------------------------------------------------- noise
    def item_noise(self, index: Tensor, samples: int, stream: int) -> Tensor:
        """Standard normals ``(samples, B, Z)`` for the items ``index (B,)``, keyed on the seed and step."""
        shape = (samples, self.latent_size)
        eps = px.item_normals(index, shape, self.hparams.seed, self.global_step, stream)  # (B, S, Z)
        return eps.transpose(0, 1).to(self.device)  # (S, B, Z)

    def step_noise(self, batch: dict, samples: int, stage: str) -> Tensor:
        """The ELBO's noise ``(samples, B, Z)``: per item given ``batch["index"]``, else ``torch.randn``."""
        index = batch.get("index")
        if index is not None:
            return self.item_noise(index, samples, _STREAMS.get(stage, 0))
        return torch.randn(samples, batch["image"].shape[0], self.latent_size, device=self.device)

    def _iwae_noise(self, size: int, index: Tensor | None, generator: torch.Generator | None):
        if index is not None:
            return lambda number, samples: self.item_noise(index, samples, _IWAE_STREAM + number)
        if generator is not None:
            return lambda _, samples: self.noise(samples, size, self.latent_size, generator=generator)
        return None

    # -------------------------------------------------------------------------------- steps
    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        x = batch["image"]  # (B, C, H, W) in the pixel convention
        size, dims = x.shape[0], x[0].numel()
        samples = self.hparams.train_samples if stage == "train" else 1
        terms = self.elbo_terms(x, self.step_noise(batch, samples, stage))
        loss = self.compute_loss(terms["recon"], terms["kl_per_dim"], self.kl_weight())
        self.log_loss(stage, loss, size)
        if stage == "test":
            noise = self._iwae_noise(size, batch.get("index"), None)
            nll = -self.iwae_log_likelihood(x, self.hparams.iwae_samples, noise)
        else:
            nll = -terms["elbo"]
        self.log_likelihood(stage, nll, dims, size)
        out = {name: terms[name].detach() for name in ("elbo", "recon", "kl", "kl_per_dim", "mu")}
        out["reconstructions"] = self._show(terms["params"].detach())
        return {"loss": loss, **out, "inputs": x}

    # -------------------------------------------------------------------------------- generation
    def _show(self, params: Tensor, generator: torch.Generator | None = None, draw: bool = False) -> Tensor:
        """The likelihood's mean (or with ``draw`` a sample) of ``params (N, P, C, H, W)`` in the pixel
        convention (uint8 rounded to int64; binary means are probabilities)."""
        if draw:
            return self.likelihood.sample(params, generator)
        mean = self.likelihood.mean(params)  # (N, C, H, W)
        return mean.round().long() if self.pixels == "uint8" else mean

    def _sample(self, n: int, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        z = self.noise(n, self.latent_size, generator=generator)  # (n, Z) from the prior
        return self._show(self.net.decode(z), generator, draw=self.hparams.sample_mode == "sample")

    def reconstruct(self, x: Tensor) -> Tensor:
        """Images ``(B, C, H, W)`` decoded from their posterior means, in the pixel convention."""
        with self.evaluating():
            mu, _ = self.net.encode(px.to_unit(x.to(self.device), self.pixels))
            return self._show(self.net.decode(mu))

    def interpolate(self, x1: Tensor, x2: Tensor, steps: int = 8) -> Tensor:
        """Decodes of ``(1 - t) mu(x1) + t mu(x2)`` for ``steps`` values of ``t`` from 0 to 1.

        Args:
            x1: an image ``(C, H, W)`` or a batch ``(B, C, H, W)`` in the pixel convention.
            x2: the same shape.
            steps: points on the line, ends included.

        Returns:
            ``(steps, C, H, W)``, or ``(B, steps, C, H, W)`` for batches.
        """
        if steps < 2:
            raise InputError(f"VariationalAutoencoder.interpolate: expected steps >= 2, got {steps}.")
        single = x1.dim() == 3
        x1, x2 = (x.unsqueeze(0) if single else x for x in (x1, x2))
        with self.evaluating():
            both = px.to_unit(torch.cat([x1, x2]).to(self.device), self.pixels)
            mu1, mu2 = self.net.encode(both)[0].chunk(2)  # (B, Z) each
            t = torch.linspace(0, 1, steps, device=self.device).view(1, steps, 1)
            z = torch.lerp(mu1[:, None], mu2[:, None], t)  # (B, steps, Z)
            images = self._show(self.net.decode(z.reshape(-1, self.latent_size)))  # (B * steps, C, H, W)
        images = images.view(x1.shape[0], steps, *images.shape[1:])  # (B, steps, C, H, W)
        return images[0] if single else images


def _check_settings(beta, warmup, free_bits, train_samples, iwae_samples, iwae_batch, sample_mode) -> None:
    """An :class:`InputError` naming the field of a setting the VAE cannot train with."""
    for name, value in (("beta", beta), ("free_bits", free_bits), ("kl_warmup_steps", warmup)):
        if not value >= 0:
            raise InputError(f"model.init_args.{name}: expected a value >= 0, got {value}.")
    counts = (("train_samples", train_samples), ("iwae_samples", iwae_samples), ("iwae_batch", iwae_batch))
    for name, value in counts:
        if not isinstance(value, int) or value < 1:
            raise InputError(f"model.init_args.{name}: expected a positive integer, got {value!r}.")
    if sample_mode not in ("mean", "sample"):
        raise InputError(f"model.init_args.sample_mode: expected mean or sample, got {sample_mode!r}.")

"""Per-pixel likelihoods p(x | params) of image batches, always of the pixels as the data holds them.

A network (a VAE's decoder, a PixelCNN) outputs ``params (B, P, C, H, W)``: ``P`` numbers for every
channel value; a :class:`PixelLikelihood` turns them into the log-probability of a batch
``x (B, C, H, W)`` in its pixel convention (:mod:`lightning_seq.data.pixels`), summed over the
``D = C * H * W`` values of each image, in nats. Every one is a probability of discrete data, so
``-log p(x)`` is a code length and ``bits/dim = -log p(x) / (D ln 2)`` compares across models:

================ ========== === ===================================================================
name             pixels     P   p(x | params)
================ ========== === ===================================================================
bernoulli        binary     1   ``x ~ Bernoulli(sigmoid(l))``
categorical      uint8      256 ``x ~ Categorical(softmax(l_0..l_255))``
logistic         uint8      2   a logistic of mean ``m`` and scale ``e^s`` on ``[-1, 1]``, integrated
                                over each value's bin of width ``2/255`` (the edge bins open)
gaussian         unit       2   a Gaussian of mean ``m`` and std ``e^s`` on ``[0, 1]``, integrated over
                                each value's bin of width ``1/255`` (the edge bins open)
gaussian_fixed   unit       1   the same with a fixed std ``sigma``
================ ========== === ===================================================================

(the ``unit`` pixels are the 8-bit values ``k / 255``, so the Gaussians are discretised like the
logistic of PixelCNN++ (Salimans et al., 2017), never reported as a continuous density.) Pure torch.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError

LIKELIHOODS = ("bernoulli", "categorical", "logistic", "gaussian", "gaussian_fixed")

#: Where a bin's probability is below this, its log is taken from the density at the bin's centre.
_TINY = 1e-5
_MIN_LOG_SCALE = -7.0


class PixelLikelihood(nn.Module):
    """A distribution of every channel value of an image, given ``params (B, P, C, H, W)``.

    Attributes:
        name: its name in :data:`LIKELIHOODS`.
        pixels: the pixel conventions it is a distribution of.
        params: parameters per channel value, ``P``.
    """

    name: str = ""
    pixels: tuple[str, ...] = ()
    params: int = 1

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``log p(x | params)`` per image ``(B,)`` in nats (summed over ``C, H, W``).

        Args:
            params: ``(B, P, C, H, W)`` from the network.
            x: ``(B, C, H, W)`` images in the convention (:attr:`pixels`).
        """
        return self.log_prob_values(params, x).flatten(1).sum(1)

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        """``log p(x_i | params_i)`` of every channel value ``(B, C, H, W)``."""
        raise NotImplementedError

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw ``(B, C, H, W)`` in the convention (uint8 values as int64 ``0..255``)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """The expected image ``(B, C, H, W)`` as floats on the convention's scale (binary: ``p(x=1)``)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"pixels={'|'.join(self.pixels)}, params={self.params}"


class Bernoulli(PixelLikelihood):
    """``log p(x) = x log sigmoid(l) + (1 - x) log sigmoid(-l)`` for binary pixels; ``params`` are ``l``."""

    name, pixels, params = "bernoulli", ("binary",), 1

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.binary_cross_entropy_with_logits(params[:, 0].float(), x.float(), reduction="none")

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        probs = torch.sigmoid(params[:, 0].float())
        return (uniform_like(probs, generator) < probs).to(probs.dtype)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params[:, 0].float())


class Categorical(PixelLikelihood):
    """``log p(x = k) = log softmax(l)_k`` over the 256 values of uint8 pixels; ``params`` are ``l``."""

    name, pixels, params = "categorical", ("uint8",), 256

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        return -F.cross_entropy(params.float(), x.long(), reduction="none")  # (B, C, H, W)

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        logits = params.float().movedim(1, -1)  # (B, C, H, W, 256)
        gumbel = -torch.log(-torch.log(uniform_like(logits, generator).clamp_min(1e-20)))
        return (logits + gumbel).argmax(-1)  # (B, C, H, W)

    def mean(self, params: Tensor) -> Tensor:
        values = torch.arange(256, device=params.device, dtype=torch.float32).view(1, 256, 1, 1, 1)
        return (params.float().softmax(1) * values).sum(1)


class DiscretizedLogistic(PixelLikelihood):
    """A logistic on ``[-1, 1]`` integrated over each uint8 value's bin (PixelCNN++'s, one component).

    With ``y = x / 127.5 - 1`` and ``h = 1 / 255``:
    ``p(x) = sigmoid((y + h - m) / s) - sigmoid((y - h - m) / s)``, the first bin from ``-inf`` and the
    last to ``+inf``; ``params`` are ``m`` and ``log s``.
    """

    name, pixels, params = "logistic", ("uint8",), 2

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_scale = params[:, 0].float(), params[:, 1].float().clamp_min(_MIN_LOG_SCALE)
        centred = x.float() / 127.5 - 1.0 - mean
        inv_scale = torch.exp(-log_scale)
        upper, lower = inv_scale * (centred + 1 / 255), inv_scale * (centred - 1 / 255)
        log_cdf_upper = F.logsigmoid(upper)  # log P(y < upper), the first bin
        log_survival_lower = -F.softplus(lower)  # log P(y > lower), the last bin
        mass = torch.sigmoid(upper) - torch.sigmoid(lower)
        mid = inv_scale * centred
        log_density_mid = mid - log_scale - 2.0 * F.softplus(mid) + math.log(2 / 255)  # log(pdf x width)
        inner = torch.where(mass > _TINY, torch.log(mass.clamp_min(1e-12)), log_density_mid)
        value = x.long()
        return torch.where(value == 0, log_cdf_upper, torch.where(value == 255, log_survival_lower, inner))

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_scale = params[:, 0].float(), params[:, 1].float().clamp_min(_MIN_LOG_SCALE)
        u = uniform_like(mean, generator).clamp(1e-5, 1 - 1e-5)
        y = mean + log_scale.exp() * (torch.log(u) - torch.log1p(-u))
        return ((y + 1.0) * 127.5).round().clamp(0, 255).long()

    def mean(self, params: Tensor) -> Tensor:
        return ((params[:, 0].float() + 1.0) * 127.5).clamp(0, 255)


class DiscretizedGaussian(PixelLikelihood):
    """A Gaussian on ``[0, 1]`` integrated over each value's bin, for ``unit`` pixels ``k / 255``.

    ``p(x) = Phi((x + h - m) / sigma) - Phi((x - h - m) / sigma)`` with ``h = 1 / 510``, the first bin from
    ``-inf`` and the last to ``+inf``. ``params`` are ``m`` and ``log sigma`` (``learn_sigma``), or ``m``
    alone with a fixed ``sigma``.

    Args:
        learn_sigma: the network predicts ``log sigma`` per value (``P = 2``), else ``sigma`` is fixed.
        sigma: the fixed standard deviation.
    """

    pixels = ("unit",)

    def __init__(self, learn_sigma: bool = True, sigma: float = 0.1):
        super().__init__()
        if not learn_sigma and not sigma > 0:
            raise InputError(f"likelihood sigma: expected a positive standard deviation, got {sigma}.")
        self.learn_sigma, self.sigma = learn_sigma, float(sigma)
        self.name = "gaussian" if learn_sigma else "gaussian_fixed"
        self.params = 2 if learn_sigma else 1

    def _mean_and_log_sigma(self, params: Tensor) -> tuple[Tensor, Tensor]:
        mean = params[:, 0].float()
        if self.learn_sigma:
            return mean, params[:, 1].float().clamp_min(_MIN_LOG_SCALE)
        return mean, torch.full_like(mean, math.log(self.sigma))

    def log_prob_values(self, params: Tensor, x: Tensor) -> Tensor:
        mean, log_sigma = self._mean_and_log_sigma(params)
        inv_sigma = torch.exp(-log_sigma)
        centred = x.float() - mean
        upper, lower = inv_sigma * (centred + 1 / 510), inv_sigma * (centred - 1 / 510)
        log_cdf_upper = torch.special.log_ndtr(upper)
        log_survival_lower = torch.special.log_ndtr(-lower)
        mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
        mid = inv_sigma * centred
        log_density_mid = -0.5 * mid.square() - log_sigma - 0.5 * math.log(2 * math.pi) + math.log(1 / 255)
        inner = torch.where(mass > _TINY, torch.log(mass.clamp_min(1e-12)), log_density_mid)
        value = (x.float() * 255).round()
        return torch.where(value <= 0, log_cdf_upper, torch.where(value >= 255, log_survival_lower, inner))

    def sample(self, params: Tensor, generator: torch.Generator | None = None) -> Tensor:
        mean, log_sigma = self._mean_and_log_sigma(params)
        noise = normal_like(mean, generator)
        return (mean + log_sigma.exp() * noise).mul(255).round().clamp(0, 255).div(255)

    def mean(self, params: Tensor) -> Tensor:
        return params[:, 0].float().clamp(0, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.learn_sigma else f", sigma={self.sigma}")


def make_likelihood(name: str, sigma: float = 0.1, field: str = "likelihood") -> PixelLikelihood:
    """The likelihood called ``name`` (see :data:`LIKELIHOODS`); ``sigma`` for ``gaussian_fixed``."""
    if name == "bernoulli":
        return Bernoulli()
    if name == "categorical":
        return Categorical()
    if name == "logistic":
        return DiscretizedLogistic()
    if name in ("gaussian", "gaussian_fixed"):
        return DiscretizedGaussian(learn_sigma=name == "gaussian", sigma=sigma)
    raise InputError(f"{field}: expected one of {', '.join(LIKELIHOODS)}, got {name!r}.")


def check_pixels(likelihood: PixelLikelihood, pixels: str, field: str) -> None:
    """Refuse a likelihood of other pixels than the data's (``pixels: uint8`` with ``bernoulli``)."""
    if pixels in likelihood.pixels:
        return
    fitting = [name for name in LIKELIHOODS if pixels in make_likelihood(name).pixels]
    instead = f"choose a likelihood of {pixels} pixels ({', '.join(fitting)})" if fitting else ""
    wanted = likelihood.pixels[0]
    raise InputError(
        f"{field}: a {likelihood.name} likelihood is a distribution of {wanted} pixels, but the data gives "
        f"'{pixels}' pixels. Fix: set data.init_args.pixels={wanted}"
        + (f", or {instead}." if instead else ".")
    )


def bits_per_dim(nll: Tensor, dims: int) -> Tensor:
    """Nats per image -> bits per dimension: ``nll / (dims ln 2)``."""
    return nll / (dims * math.log(2.0))


def uniform_like(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniforms in ``[0, 1)`` of ``like``'s shape, drawn on the generator's device, on ``like``'s device."""
    where = generator.device if generator is not None else like.device
    return torch.rand(like.shape, generator=generator, device=where).to(like.device)


def standard_normal(
    shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Standard normals of ``shape`` on ``device``, drawn on the generator's device (so one generator state
    gives the same numbers on the CPU and on a GPU)."""
    where = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=where).to(device)


def normal_like(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normals of ``like``'s shape, drawn on the generator's device, on ``like``'s device."""
    return standard_normal(tuple(like.shape), generator, like.device)

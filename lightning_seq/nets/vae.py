"""Variational autoencoder networks (Kingma & Welling, 2014): a Gaussian encoder and a pixel decoder.

The encoder maps an image in ``[0, 1]`` to the parameters of ``q(z|x) = N(mu, diag(exp(logvar)))``;
the decoder maps a latent ``z`` to the parameters of ``p(x|z)``, a per-pixel likelihood of the data's
pixels (:mod:`lightning_seq.layers.likelihoods`: Bernoulli for ``binary``, a discretised Gaussian with
learned or fixed variance for ``unit``, a discretised logistic or a 256-way categorical for ``uint8``).
Two layouts:

* ``mlp``: fully connected, ``C*H*W -> hidden... -> 2Z`` and ``Z -> ...hidden -> P*C*H*W``; the
  ``classic`` preset is the 784-400-20 network of Kingma & Welling's MNIST experiments (ReLU, as in
  the PyTorch examples; ``activation: tanh`` for the paper's);
* ``conv``: strided 4 x 4 convolutions halving the side per width, then a linear layer to ``2Z``;
  the decoder mirrors it with transposed convolutions (``conv_small``).

Net contract for :class:`~lightning_seq.modules.VariationalAutoencoder`: :meth:`VAE.encode`,
:meth:`VAE.decode` and the attribute ``likelihood`` (a ``PixelLikelihood``). Pure torch: no Lightning.
"""

from __future__ import annotations

import itertools
from typing import Any, ClassVar, Literal, NamedTuple

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.gaussian import reparameterize
from lightning_seq.layers.likelihoods import LIKELIHOODS, make_likelihood
from lightning_seq.nets._presets import Presets

__all__ = ["VAE", "VAEOutput"]

_FIELD = "model.init_args.net.init_args"
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


class VAEOutput(NamedTuple):
    """What :meth:`VAE.forward` gives: decoder parameters ``(B, P, C, H, W)`` and the posterior
    ``mu``, ``logvar`` and sample ``z``, each ``(B, Z)`` (``(S, B, Z)`` with ``S`` draws per image)."""

    params: Tensor
    mu: Tensor
    logvar: Tensor
    z: Tensor


class VAE(Presets, nn.Module):
    """Gaussian encoder ``q(z|x)`` and decoder ``p(x|z)`` of a one-stochastic-layer VAE.

    .. math::
        (\\mu, \\log\\sigma^2) = \\mathrm{enc}(x), \\quad z = \\mu + \\sigma \\odot \\epsilon, \\quad
        \\theta = \\mathrm{dec}(z), \\quad p(x|z) = \\prod_{c,h,w} p(x_{chw} \\mid \\theta_{:,chw})

    Args:
        image_size: side of the square images (linked from the data).
        in_channels: image channels (linked from the data).
        latent_size: dimensions ``Z`` of the latent.
        encoder: ``mlp`` (fully connected) or ``conv`` (strided convolutions; the decoder mirrors
            the encoder in both).
        hidden: widths of the MLP's hidden layers (the decoder uses them reversed).
        widths: channels of the conv layout's stages; each halves the image side, so ``image_size``
            must be divisible by ``2 ** len(widths)``.
        activation: ``relu`` or ``tanh`` between layers.
        likelihood: ``bernoulli`` (binary pixels), ``gaussian`` (learned variance) or
            ``gaussian_fixed`` (unit pixels), ``logistic`` or ``categorical`` (uint8 pixels).
        sigma: the standard deviation of ``gaussian_fixed``, on the [0, 1] scale.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"latent_size": 4, "encoder": "mlp", "hidden": (32,)},
        "classic": {"latent_size": 20, "encoder": "mlp", "hidden": (400,), "activation": "relu"},
        "conv_small": {"latent_size": 16, "encoder": "conv", "widths": (32, 64), "hidden": (256,)},
    }

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        latent_size: int = 20,
        encoder: Literal["mlp", "conv"] = "mlp",
        hidden: tuple[int, ...] = (400,),
        widths: tuple[int, ...] = (32, 64),
        activation: Literal["relu", "tanh"] = "relu",
        likelihood: str = "bernoulli",
        sigma: float = 0.1,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(
            image_size, in_channels, latent_size, encoder, hidden, widths, activation, likelihood, sigma
        )
        self.image_size, self.in_channels, self.latent_size = image_size, in_channels, latent_size
        self.likelihood = make_likelihood(likelihood, sigma, field=f"{_FIELD}.likelihood")
        shape = (in_channels, image_size, image_size)
        act = _ACTIVATIONS[activation]
        if encoder == "mlp":
            self.encoder: nn.Module = _MLPEncoder(shape, hidden, latent_size, act)
            self.decoder: nn.Module = _MLPDecoder(shape, hidden, latent_size, self.likelihood.params, act)
        else:
            self.encoder = _ConvEncoder(shape, widths, hidden, latent_size, act)
            self.decoder = _ConvDecoder(shape, widths, hidden, latent_size, self.likelihood.params, act)

    def encode(self, x_unit: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's ``(mu, logvar)``, each ``(B, Z)``, of images ``(B, C, H, W)`` in [0, 1]."""
        stats = self.encoder(x_unit.float())  # (B, 2Z)
        mu, logvar = stats.chunk(2, dim=-1)  # (B, Z) each
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameters ``(N, P, C, H, W)`` of latents ``z`` ``(N, Z)``."""
        return self.decoder(z)

    def forward(self, x_unit: Tensor, eps: Tensor) -> VAEOutput:
        """Encode, draw ``z = mu + sigma * eps`` and decode.

        Args:
            x_unit: images ``(B, C, H, W)`` in [0, 1].
            eps: standard normal draws ``(B, Z)``, or ``(S, B, Z)`` for ``S`` samples per image (then
                ``params`` is ``(S * B, P, C, H, W)``, sample-major).
        """
        mu, logvar = self.encode(x_unit)
        z = reparameterize(mu, logvar, eps)  # (B, Z) or (S, B, Z)
        params = self.decode(z.reshape(-1, self.latent_size))  # (S * B, P, C, H, W)
        return VAEOutput(params, mu, logvar, z)


# ---------------------------------------------------------------------------------------- MLP
def _mlp(sizes: list[int], act: type[nn.Module]) -> nn.Sequential:
    """Linear layers ``sizes[0] -> ... -> sizes[-1]``, ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, int, int], hidden, latent: int, act: type[nn.Module]) -> None:
        super().__init__()
        c, h, w = shape
        self.net = _mlp([c * h * w, *hidden, 2 * latent], act)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))  # (B, C*H*W) -> (B, 2Z)


class _MLPDecoder(nn.Module):
    def __init__(self, shape, hidden, latent: int, params: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.shape, self.params = shape, params
        c, h, w = shape
        self.net = _mlp([latent, *reversed(hidden), params * c * h * w], act)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(z.shape[0], self.params, *self.shape)  # (N, P, C, H, W)


# ---------------------------------------------------------------------------------------- conv
class _ConvEncoder(nn.Module):
    def __init__(self, shape, widths, hidden, latent: int, act: type[nn.Module]) -> None:
        super().__init__()
        c, h, _ = shape
        layers: list[nn.Module] = []
        for width in widths:  # each 4 x 4 stride-2 convolution halves the side
            layers += [nn.Conv2d(c, width, kernel_size=4, stride=2, padding=1), act()]
            c = width
        self.convs = nn.Sequential(*layers)
        side = h // 2 ** len(widths)
        self.head = _mlp([widths[-1] * side * side, *hidden, 2 * latent], act)

    def forward(self, x: Tensor) -> Tensor:
        features = self.convs(x).flatten(1)  # (B, widths[-1] * s * s)
        return self.head(features)  # (B, 2Z)


class _ConvDecoder(nn.Module):
    def __init__(self, shape, widths, hidden, latent: int, params: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.shape, self.params = shape, params
        c, h, _ = shape
        self.side, self.width = h // 2 ** len(widths), widths[-1]
        self.fc = nn.Sequential(_mlp([latent, *reversed(hidden), self.width * self.side**2], act), act())
        layers: list[nn.Module] = []
        outs = [*reversed(widths[:-1]), params * c]
        for i, (a, b) in enumerate(zip(reversed(widths), outs, strict=True)):  # each doubles the side
            layers.append(nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1))
            if i < len(outs) - 1:
                layers.append(act())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        features = self.fc(z).view(z.shape[0], self.width, self.side, self.side)  # (N, W, s, s)
        out = self.deconvs(features)  # (N, P * C, H, W)
        return out.view(z.shape[0], self.params, *self.shape)  # (N, P, C, H, W)


# ---------------------------------------------------------------------------------------- checks
def _check_sizes(
    image_size, in_channels, latent_size, encoder, hidden, widths, activation, likelihood, sigma
) -> None:
    """An :class:`InputError` naming the net's field for sizes it cannot be built with."""
    for name, value in (("image_size", image_size), ("in_channels", in_channels)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{_FIELD}.{name}: expected a positive integer, got {value!r}.")
    if not isinstance(latent_size, int) or latent_size < 1:
        raise InputError(
            f"{_FIELD}.latent_size: expected a positive integer, got {latent_size!r}. "
            "Fix: set it to the latent dimensions wanted, e.g. 20."
        )
    if any(int(h) < 1 for h in hidden):
        raise InputError(f"{_FIELD}.hidden: expected positive layer widths, got {list(hidden)}.")
    if encoder not in ("mlp", "conv"):
        raise InputError(f"{_FIELD}.encoder: expected mlp or conv, got {encoder!r}.")
    if activation not in _ACTIVATIONS:
        raise InputError(
            f"{_FIELD}.activation: expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}."
        )
    if likelihood not in LIKELIHOODS:
        raise InputError(
            f"{_FIELD}.likelihood: expected one of {', '.join(LIKELIHOODS)}, got {likelihood!r}."
        )
    if likelihood == "gaussian_fixed" and not sigma > 0:
        raise InputError(f"{_FIELD}.sigma: expected a positive standard deviation, got {sigma}.")
    if encoder == "conv":
        _check_conv(image_size, widths)


def _check_conv(image_size: int, widths) -> None:
    if not widths or any(int(w) < 1 for w in widths):
        raise InputError(f"{_FIELD}.widths: expected one or more positive widths, got {list(widths)}.")
    factor = 2 ** len(widths)
    if image_size % factor:
        raise InputError(
            f"{_FIELD}.image_size: the conv layout with {len(widths)} stages halves the side {len(widths)} "
            f"times, so it needs a multiple of {factor}, got {image_size}. Fix: use fewer widths "
            f"(model.init_args.net.init_args.widths) or resize the data (data.image_size)."
        )

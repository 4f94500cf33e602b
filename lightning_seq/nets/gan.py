"""Deep convolutional GANs (Radford et al., 2016), class-conditional and spectrally normalised if asked.

A generator ``G`` maps noise ``z ~ N(0, I)`` (and a class ``y``) to an image in ``[-1, 1]``; a
discriminator ``D`` maps an image (and its class) to one logit, "real" when positive::

    G: z (B, Z) -> 4x4 map -> doubled k times -> tanh -> x (B, C, S, S),   S = 4 * 2**k
    D: x (B, C, S, S) -> halved k - 1 times to phi(x) (B, F, 4, 4) -> 4x4 valid conv -> logit (B,)

The layers are the paper's: transposed 4x4 convolutions with batch norm and ReLU in ``G`` (none on its
output layer, which ends in tanh), strided 4x4 convolutions with batch norm and LeakyReLU(0.2) in ``D``
(none on its input layer), no pooling and no fully connected hidden layers; every weight starts from
``N(0, 0.02)`` and every batch-norm scale from ``N(1, 0.02)``.

With ``num_classes`` set both nets take labels ``(B,)``. ``G`` sees the class in one of two ways
(``generator_conditioning``):

* ``concat``: a learned class embedding concatenated to ``z``, so the class enters at the input only;
* ``batch_norm``: class-conditional batch norm (de Vries et al., 2017; the generator of Miyato & Koyama,
  2018): every batch norm of ``G`` scales and shifts by the class, ``gamma_y * BN(h) + beta_y``, so the
  class reaches every resolution.

``D`` sees the class in one of two ways (``conditioning``):

* ``concat``: the label as ``K`` one-hot maps concatenated to the image's channels;
* ``projection`` (Miyato & Koyama, 2018): the logit gains the inner product of a class embedding
  with the pooled features, ``D(x, y) = psi(phi(x)) + <V_y, sum_{h,w} phi(x)>``.

``aux_classifier: true`` adds the auxiliary classifier of AC-GAN (Odena et al., 2017): ``D`` also
predicts the class, ``c(x) = W mean_{h,w} phi(x)`` (``K`` logits; see
:meth:`DCGANDiscriminator.scores_and_classes`), which the GAN module trains on real images and asks
the generator to satisfy (``aux_weight``).

``spectral_norm: true`` (Miyato et al., 2018) divides every discriminator weight by its largest singular
value, ``W / sigma(W)`` (estimated by one power iteration per training step), which makes ``D``
1-Lipschitz per layer; the discriminator then has no batch norm.

Net contract for the GAN module: ``net.generator(z, labels)`` and ``net.discriminator(x, labels)``, two
nets with their own parameters (one optimiser each), and the attributes ``latent_size``,
``image_size``, ``in_channels`` and ``num_classes``. Pure torch: no Lightning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.functional import one_hot
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from lightning_seq.errors import InputError
from lightning_seq.layers.batch_norm import ClassConditionalBatchNorm
from lightning_seq.nets._presets import Presets

__all__ = ["DCGAN", "DCGANDiscriminator", "DCGANGenerator"]

Conditioning = Literal["concat", "projection"]
GeneratorConditioning = Literal["concat", "batch_norm"]
_FIELD = "model.init_args.net.init_args"
# The ways to condition each net, with the fix an error names: {field: (choices, fix)}.
_CONDITIONINGS = {
    "generator_conditioning": (
        get_args(GeneratorConditioning),
        "batch_norm (class-conditional batch norm in every generator layer) or concat (an embedding joins z)",
    ),
    "conditioning": (
        get_args(Conditioning),
        "projection (Miyato & Koyama's projection discriminator) or concat",
    ),
}


class DCGANGenerator(nn.Module):
    """``G(z, y)``: noise (and a class) to an image in ``[-1, 1]`` by transposed convolutions.

    .. math::
        h_0 = \\mathrm{ReLU}(\\mathrm{BN}(\\mathrm{ConvT}_{4 \\times 4}([z; E_y]))) \\in
        \\mathbb{R}^{W 2^{k-1} \\times 4 \\times 4}, \\quad
        h_{i} = \\mathrm{ReLU}(\\mathrm{BN}(\\mathrm{ConvT}^{\\uparrow 2}(h_{i-1}))), \\quad
        x = \\tanh(\\mathrm{ConvT}^{\\uparrow 2}(h_{k-1}))

    Each doubling halves the channels, from ``width * 2**(k-1)`` at 4 x 4 to ``width`` at ``S / 2``.
    With ``conditioning: batch_norm`` the input is ``z`` alone and every ``BN`` is
    ``gamma_y * BN(h) + beta_y`` (:class:`~lightning_seq.layers.ClassConditionalBatchNorm`).

    Args:
        image_size: side ``S = 4 * 2**k`` of the square images, ``k >= 1``.
        in_channels: image channels ``C``.
        latent_size: dimensions ``Z`` of the noise.
        width: channels ``W`` of the last hidden map (the widest has ``W * 2**(k-1)``).
        num_classes: classes ``K`` to condition on; ``None`` for an unconditional generator.
        embedding_size: dimensions ``E`` of the class embedding concatenated to ``z`` (default ``Z``;
            ``concat`` only).
        conditioning: how the class enters, ``concat`` (to ``z``) or ``batch_norm`` (every batch norm).
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        latent_size: int = 100,
        width: int = 64,
        num_classes: int | None = None,
        embedding_size: int | None = None,
        conditioning: GeneratorConditioning = "concat",
    ) -> None:
        super().__init__()
        _check(image_size=image_size, in_channels=in_channels, latent_size=latent_size, width=width,
               num_classes=num_classes, embedding_size=embedding_size,
               generator_conditioning=conditioning)  # fmt: skip
        self.latent_size, self.num_classes = latent_size, num_classes
        doublings = _doublings(image_size)  # k: 4 -> S
        concat = num_classes is not None and conditioning == "concat"
        embedding = latent_size if embedding_size is None else embedding_size
        self.embed = nn.Embedding(num_classes, embedding) if concat else None
        in_size = latent_size + (embedding if concat else 0)

        def norm(features: int) -> nn.Module:
            if num_classes is None or concat:
                return nn.BatchNorm2d(features)
            return ClassConditionalBatchNorm(features, num_classes)

        channels = width * 2 ** (doublings - 1)
        layers: list[nn.Module] = [  # (B, Z [+ E], 1, 1) -> (B, W * 2**(k-1), 4, 4)
            nn.ConvTranspose2d(in_size, channels, kernel_size=4, stride=1, padding=0, bias=False),
            norm(channels),
            nn.ReLU(inplace=True),
        ]
        for _ in range(doublings - 1):  # each doubles the side and halves the channels
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, kernel_size=4, stride=2, padding=1, bias=False),
                norm(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels //= 2
        layers += [  # the output layer: no batch norm, tanh to [-1, 1]
            nn.ConvTranspose2d(channels, in_channels, kernel_size=4, stride=2, padding=1, bias=False),
            nn.Tanh(),
        ]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Images ``(B, C, S, S)`` in ``[-1, 1]`` from noise ``z (B, Z)`` (and, if conditional, labels
        ``(B,)``)."""
        _check_labels(self, self.num_classes, labels, z.shape[0])
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (B, Z + E)
        h = z[:, :, None, None]  # (B, Z [+ E], 1, 1) -> ... -> (B, C, S, S)
        for layer in self.net:
            h = layer(h, labels) if isinstance(layer, ClassConditionalBatchNorm) else layer(h)
        return h


class DCGANDiscriminator(nn.Module):
    """``D(x, y)``: an image in ``[-1, 1]`` (and its class) to a logit, by strided convolutions.

    .. math::
        h_1 = \\mathrm{LReLU}(\\mathrm{Conv}^{\\downarrow 2}(x)), \\quad
        h_i = \\mathrm{LReLU}(\\mathrm{BN}(\\mathrm{Conv}^{\\downarrow 2}(h_{i-1}))), \\quad
        \\phi(x) = h_k \\in \\mathbb{R}^{F \\times 4 \\times 4}, \\quad
        D(x, y) = \\psi(\\phi(x)) \\; [+ \\langle V_y, \\textstyle\\sum_{h,w} \\phi(x) \\rangle]

    ``psi`` is a 4 x 4 valid convolution to one channel, ``F = disc_width * 2**(k-1)`` and the bracket
    is the projection term; LReLU has slope 0.2.

    Args:
        image_size: side ``S = 4 * 2**k`` of the square images, ``k >= 1``.
        in_channels: image channels ``C``.
        width: channels of the first layer (each halving of the side doubles them).
        num_classes: classes ``K`` to condition on; ``None`` for an unconditional discriminator.
        conditioning: ``concat`` (one-hot label maps as extra input channels) or ``projection``
            (a class embedding ``V (K, F)`` projected on the pooled features).
        spectral_norm: divide every convolution's (and the projection embedding's) weight by its
            largest singular value, and leave out batch norm.
        aux_classifier: add AC-GAN's class head ``c(x) = W mean_{h,w} phi(x)`` (needs ``num_classes``).
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        width: int = 64,
        num_classes: int | None = None,
        conditioning: Conditioning = "projection",
        spectral_norm: bool = False,
        aux_classifier: bool = False,
    ) -> None:
        super().__init__()
        _check(image_size=image_size, in_channels=in_channels, disc_width=width, num_classes=num_classes,
               conditioning=conditioning)  # fmt: skip
        self.image_size, self.num_classes = image_size, num_classes
        self.concat = num_classes is not None and conditioning == "concat"
        self.project = num_classes is not None and conditioning == "projection"
        bias = spectral_norm  # as the paper's: no bias on any conv unless no batch norm is left (SN-GAN)
        first_in = in_channels + (num_classes if self.concat else 0)
        layers: list[nn.Module] = [  # the input layer: no batch norm; (B, C [+ K], S, S) -> (B, W, S/2, S/2)
            nn.Conv2d(first_in, width, kernel_size=4, stride=2, padding=1, bias=bias),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for _ in range(_doublings(image_size) - 1):  # halve the side to 4 x 4, doubling the channels
            layers.append(nn.Conv2d(channels, 2 * channels, kernel_size=4, stride=2, padding=1, bias=bias))
            if not spectral_norm:
                layers.append(nn.BatchNorm2d(2 * channels))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels *= 2
        self.features_size = channels  # F
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, kernel_size=4, stride=1, padding=0, bias=bias)  # psi
        self.embed = nn.Embedding(num_classes, channels) if self.project else None  # V (K, F)
        if aux_classifier and num_classes is None:
            raise InputError(
                f"{_FIELD}.aux_classifier: the auxiliary classifier predicts the class, but the net has no "
                "classes (unlabelled data link none into it). Fix: train on labelled data "
                "(data.init_args.labels=class) with model.init_args.conditional=true, or set it to false."
            )
        self.classifier = nn.Linear(channels, num_classes) if aux_classifier else None  # W (K, F)
        self.apply(_dcgan_init)  # before the parametrisation, which then normalises these weights
        if spectral_norm:
            for module in self.modules():
                if isinstance(module, nn.Conv2d | nn.Embedding | nn.Linear):
                    _spectral_norm(module)

    def features(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """The features ``phi(x) (B, F, 4, 4)`` of images ``(B, C, S, S)`` (with ``concat``, of the
        image and its label maps)."""
        if self.concat:
            b, _, h, w = x.shape
            maps = one_hot(labels, self.num_classes).to(x.dtype)  # (B, K)
            x = torch.cat([x, maps[:, :, None, None].expand(b, -1, h, w)], dim=1)  # (B, C + K, S, S)
        return self.blocks(x)  # (B, F, 4, 4)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits ``(B,)`` of images ``(B, C, S, S)`` in ``[-1, 1]`` and, if conditional, labels ``(B,)``."""
        return self.scores_and_classes(x, labels)[0]

    def scores_and_classes(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """The real/fake logits ``(B,)`` and, with ``aux_classifier``, the class logits ``(B, K)`` (else
        None), from one pass over the images."""
        _check_labels(self, self.num_classes, labels, x.shape[0])
        phi = self.features(x, labels)  # (B, F, 4, 4)
        logits = self.head(phi).view(x.shape[0])  # (B, 1, 1, 1) -> (B,)
        if self.embed is not None:
            logits = logits + (self.embed(labels) * phi.sum((2, 3))).sum(-1)  # <V_y, sum_hw phi>: (B,)
        classes = self.classifier(phi.mean((2, 3))) if self.classifier is not None else None  # (B, K)
        return logits, classes


class DCGAN(Presets, nn.Module):
    """A DCGAN generator and discriminator pair (see the module docstring).

    ``net(z, labels)`` is the generator's sample; training reaches the two halves through
    ``net.generator`` and ``net.discriminator``.

    Presets: ``nano`` (width 8, latent 16) is the tests' size; ``small`` (width 32, latent 64) trains on
    a CPU; ``dcgan64`` is the paper's network, ``100 -> 512x4x4 -> 256x8x8 -> 128x16x16 -> 64x32x32 ->
    3x64x64``, when the data are 64 x 64 (``image_size`` always comes from the data). Unconditional on
    3 channels it has 3,576,704 generator and 2,765,568 discriminator parameters, as the PyTorch
    examples' DCGAN (``nz=100, ngf=ndf=64``).

    Args:
        image_size: side of the square images, ``4 * 2**k`` (8, 16, 32, 64, ...; linked from the data).
        in_channels: image channels (linked from the data).
        latent_size: dimensions ``Z`` of the generator's noise.
        num_classes: classes to condition both nets on (linked from the data); ``None`` is unconditional.
        width: the generator's last hidden width (the paper's ``ngf``).
        disc_width: the discriminator's first width (the paper's ``ndf``; default ``width``).
        embedding_size: the generator's class embedding size (default ``latent_size``; ``concat`` only).
        generator_conditioning: how the generator sees the class, ``concat`` (an embedding joins ``z``)
            or ``batch_norm`` (class-conditional batch norm in every layer).
        conditioning: how the discriminator sees the class, ``concat`` or ``projection``.
        spectral_norm: spectrally normalise the discriminator (and drop its batch norm).
        aux_classifier: give the discriminator AC-GAN's class head (conditional nets only).
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"width": 8, "latent_size": 16},
        "small": {"width": 32, "latent_size": 64},
        "dcgan64": {"width": 64, "latent_size": 100},
    }

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        latent_size: int = 100,
        num_classes: int | None = None,
        width: int = 64,
        disc_width: int | None = None,
        embedding_size: int | None = None,
        generator_conditioning: GeneratorConditioning = "concat",
        conditioning: Conditioning = "projection",
        spectral_norm: bool = False,
        aux_classifier: bool = False,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        _check(image_size=image_size, in_channels=in_channels, latent_size=latent_size,
               num_classes=num_classes, width=width, disc_width=disc_width, embedding_size=embedding_size,
               generator_conditioning=generator_conditioning, conditioning=conditioning)  # fmt: skip
        self.image_size, self.in_channels = image_size, in_channels
        self.latent_size, self.num_classes = latent_size, num_classes
        self.generator = DCGANGenerator(
            image_size, in_channels, latent_size, width, num_classes, embedding_size, generator_conditioning
        )
        self.discriminator = DCGANDiscriminator(
            image_size, in_channels, width if disc_width is None else disc_width, num_classes,
            conditioning, spectral_norm, aux_classifier,
        )  # fmt: skip

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """The generator's images ``(B, C, S, S)`` in ``[-1, 1]`` for noise ``z (B, Z)`` (and labels
        ``(B,)``)."""
        return self.generator(z, labels)


# ---------------------------------------------------------------------------------------- helpers
def _dcgan_init(module: nn.Module) -> None:
    """The paper's initialisation: weights ``N(0, 0.02)``, batch-norm scales ``N(1, 0.02)``, biases 0."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, ClassConditionalBatchNorm):  # after its embeddings (apply visits them first)
        nn.init.normal_(module.gain.weight, 1.0, 0.02)
        nn.init.zeros_(module.shift.weight)


def _doublings(image_size: int) -> int:
    """``k`` with ``image_size = 4 * 2**k``."""
    return (image_size // 4).bit_length() - 1


def _valid_side(image_size: Any) -> bool:
    """Whether ``image_size`` is ``4 * 2**k`` with ``k >= 1``."""
    if not _positive(image_size) or image_size < 8 or image_size % 4:
        return False
    quarter = image_size // 4
    return quarter & (quarter - 1) == 0  # a power of two


def _nearest_side(image_size: Any) -> int:
    """The valid side ``4 * 2**k`` nearest to ``image_size`` (the larger one on a tie)."""
    size = image_size if isinstance(image_size, int | float) else 32
    side = 8
    while side * 2 - size <= size - side:  # the next side up is at least as near
        side *= 2
    return side


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check(**sizes: Any) -> None:
    """An :class:`InputError` naming the net's field for the first of ``sizes`` it cannot be built with."""
    if "latent_size" in sizes and not _positive(sizes["latent_size"]):
        raise InputError(
            f"{_FIELD}.latent_size: a latent size of {sizes['latent_size']!r} leaves the generator no noise "
            "to map; expected a positive integer. Fix: set it to e.g. 100 (the paper's)."
        )
    for name in ("width", "disc_width"):
        if sizes.get(name) is not None and not _positive(sizes[name]):
            raise InputError(
                f"{_FIELD}.{name}: expected a positive number of channels, got {sizes[name]!r}. "
                "Fix: set it to e.g. 64 (the paper's)."
            )
    if "image_size" in sizes and not _valid_side(sizes["image_size"]):
        raise InputError(
            f"{_FIELD}.image_size: the generator doubles a 4x4 map, so the side must be 4 * 2**k "
            f"(8, 16, 32, 64...), got {sizes['image_size']!r}. "
            f"Fix: set data.init_args.image_size={_nearest_side(sizes['image_size'])}."
        )
    if "in_channels" in sizes and not _positive(sizes["in_channels"]):
        raise InputError(
            f"{_FIELD}.in_channels: expected at least 1 channel, got {sizes['in_channels']!r}. "
            "Fix: set data.init_args.channels (1 for grey, 3 for colour)."
        )
    if sizes.get("num_classes") is not None and not _positive(sizes["num_classes"]):
        raise InputError(
            f"{_FIELD}.num_classes: expected None (unconditional) or at least 1 class, "
            f"got {sizes['num_classes']!r}. Fix: leave it to the data's link, or set it to null."
        )
    if sizes.get("embedding_size") is not None and not _positive(sizes["embedding_size"]):
        raise InputError(
            f"{_FIELD}.embedding_size: expected a positive class embedding size, "
            f"got {sizes['embedding_size']!r}. Fix: leave it unset (it is then latent_size)."
        )
    for name, (choices, fix) in _CONDITIONINGS.items():
        if name in sizes and sizes[name] not in choices:
            raise InputError(
                f"{_FIELD}.{name}: expected {' or '.join(choices)}, got {sizes[name]!r}. "
                f"Fix: set it to {fix}."
            )


def _check_labels(net: nn.Module, num_classes: int | None, labels: Tensor | None, batch: int) -> None:
    """Labels exactly when the net is conditional, one per example (shape checks only: no host sync)."""
    name = type(net).__name__
    if num_classes is None and labels is not None:
        raise InputError(
            f"{name}: labels were given, but the net is unconditional (num_classes=None). "
            f"Fix: set {_FIELD}.num_classes (linked from labelled data), or pass no labels."
        )
    if num_classes is not None and labels is None:
        raise InputError(
            f"{name}: the net is conditional (num_classes={num_classes}) and needs labels (B,), got none. "
            f"Fix: pass the batch's labels, or set {_FIELD}.num_classes=null for an unconditional GAN."
        )
    if labels is not None and tuple(labels.shape) != (batch,):
        raise InputError(
            f"{name}: expected labels of shape ({batch},), one class index per example, "
            f"got {tuple(labels.shape)}. Fix: pass labels (B,) as integers."
        )

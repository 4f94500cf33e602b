"""The contract every generative image module keeps: ``sample(n, *, labels=None, generator=None)``."""

import torch
from torch import nn

from lightning_seq.data import pixels as px
from lightning_seq.data.pixels import PIXELS, Pixels
from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import bits_per_dim, standard_normal
from lightning_seq.modules._base import NetModule


class GenerativeModule(NetModule):
    """Base of the modules that generate images (VAE, PixelCNN, GAN, diffusion).

    :meth:`sample` returns ``(n, C, H, W)`` images in the pixel convention of the data the model
    trains on (``pixels``, linked from the DataModule: ``unit`` [0, 1], ``symmetric`` [-1, 1],
    ``uint8`` 0..255 or ``binary`` 0/1), on the module's device, in eval mode and without gradients.
    The same ``torch.Generator`` state gives the same images on any device: randomness is drawn on the
    generator's device (the CPU for ``torch.Generator()``) and then moved (:meth:`noise`).

    A class-conditional model (``conditional: true``) samples the classes it is given, or by default
    ``0, 1, ..., K-1, 0, 1, ...`` (so that a grid of ``n = K * m`` has one class per column); an
    unconditional one refuses labels. A subclass implements :meth:`_sample`.

    Args:
        net: the network.
        pixels: what the data's images hold (linked from the DataModule).
        conditional: condition on the data's class labels.
        num_classes: classes to condition on (linked from the DataModule); used when ``conditional``.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        pixels: Pixels = "unit",
        conditional: bool = False,
        num_classes: int | None = None,
        **kwargs,
    ):
        if pixels not in PIXELS:
            raise InputError(f"model.pixels: expected one of {', '.join(PIXELS)}, got '{pixels}'.")
        if conditional and not num_classes:
            raise InputError(
                "model.conditional: a class-conditional model needs the number of classes. Fix: train on "
                "labelled data (the CLI links data.num_classes), or set model.num_classes."
            )
        super().__init__(net, **kwargs)
        self.pixels = pixels
        self.num_classes = int(num_classes) if conditional else None

    def sample(
        self,
        n: int,
        *,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **options,
    ) -> torch.Tensor:
        """``n`` images ``(n, C, H, W)`` in the data's pixel convention, on this module's device.

        Args:
            n: how many.
            labels: ``(n,)`` class ids for a conditional model; default ``arange(n) % num_classes``.
            generator: the source of randomness; the same state gives the same images.
            **options: a family's own sampling settings (a diffusion model's sampler and steps), handed to
                :meth:`_sample`.
        """
        if n < 1:
            raise InputError(f"{type(self).__name__}.sample: expected n >= 1, got {n}.")
        labels = self._sample_labels(n, labels)
        with self.evaluating():
            return self._sample(n, labels, generator, **options)

    def _sample(
        self, n: int, labels: torch.Tensor | None, generator: torch.Generator | None, **options
    ) -> torch.Tensor:
        raise NotImplementedError

    def symmetric(self, images: torch.Tensor) -> torch.Tensor:
        """Images in the data's convention -> ``[-1, 1]`` (the range of a GAN's ``tanh``, of diffusion)."""
        return images if self.pixels == "symmetric" else px.to_unit(images, self.pixels) * 2.0 - 1.0

    def from_symmetric(self, images: torch.Tensor) -> torch.Tensor:
        """Images in ``[-1, 1]`` -> the data's convention (the inverse of :meth:`symmetric`)."""
        return images if self.pixels == "symmetric" else px.from_unit((images + 1.0) * 0.5, self.pixels)

    def _sample_labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor | None:
        name = type(self).__name__
        if self.num_classes is None:
            if labels is not None:
                raise InputError(f"{name}.sample: labels given, but the model is not class-conditional.")
            return None
        if labels is None:
            return torch.arange(n, device=self.device) % self.num_classes
        labels = torch.as_tensor(labels, device=self.device).long()
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise InputError(
                f"{name}.sample: expected labels of shape ({n},) in 0..{self.num_classes - 1}, got "
                f"shape {tuple(labels.shape)} with values {labels.min().item()}..{labels.max().item()}."
            )
        return labels

    def check_net_conditioning(self) -> None:
        """Refuse a net whose ``num_classes`` disagrees with the module's: an unconditional model whose net
        got the data's classes through the CLI's link (labelled data), or a conditional one whose net has
        another number of classes."""
        classes, conditional = getattr(self.net, "num_classes", None), self.num_classes is not None
        if not conditional and classes:
            raise InputError(
                f"model.init_args.conditional: false, but the net is conditioned on {classes} classes (the "
                "data is labelled, and the CLI links data.num_classes into the net). Fix: set "
                "data.init_args.labels=none for an unconditional model, or model.init_args.conditional=true."
            )
        if conditional and classes != self.num_classes:
            raise InputError(
                f"model.init_args.net.init_args.num_classes: a conditional model of {self.num_classes} "
                f"classes needs a net conditioned on as many, got {classes}. Fix: leave it to the data (the "
                "CLI links data.num_classes), or set model.init_args.conditional=false."
            )

    def batch_labels(self, batch: dict) -> torch.Tensor | None:
        """The batch's ``"label"`` for a conditional model (None for an unconditional one)."""
        if self.num_classes is None:
            return None
        if "label" not in batch:
            raise InputError(
                "model.init_args.conditional: a class-conditional model needs labelled batches, but the data "
                "has no labels. Fix: set data.init_args.labels=class, or model.init_args.conditional=false."
            )
        return batch["label"]

    def log_likelihood(self, stage: str, nll: torch.Tensor, dims: int, batch_size: int) -> None:
        """Log ``stage/nll`` (nats per image) and ``stage/bpd`` (bits per dimension) of ``nll (B,)``: every
        step in training; in validation and test the epoch's mean over images and ranks.

        Args:
            stage: ``train``, ``val`` or ``test``.
            nll: ``-log p(x)`` (or a bound on it) of each image of the batch, in nats.
            dims: values per image, ``C * H * W``.
            batch_size: images in the batch.
        """
        train = stage == "train"
        nll = nll.detach().float().mean()
        values = {f"{stage}/nll": nll, f"{stage}/bpd": bits_per_dim(nll, dims)}
        self.log_dict(values, on_step=train, on_epoch=not train, sync_dist=not train, batch_size=batch_size)

    def noise(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise of ``shape`` on this module's device, drawn on the generator's device
        (so one generator state gives the same noise on the CPU and on a GPU)."""
        return standard_normal(shape, generator, self.device)


@torch.no_grad()
def update_average(average: nn.Module, current: nn.Module, decay: float, step: int) -> None:
    """Move the moving average ``average`` of a network's weights toward ``current`` (its twin) after
    optimizer step ``step`` (1 for the first), and copy ``current``'s buffers (batch-norm statistics).

    .. math::
        \\bar\\theta \\leftarrow d_t \\bar\\theta + (1 - d_t)\\,\\theta, \\qquad
        d_t = \\min\\big(d, (1 + t) / (10 + t)\\big)

    The warm-up of ``d_t`` keeps a short run's average from being dominated by the initial weights
    (with ``d = 0.999`` it reaches 0.99 at step 890).
    """
    decay = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(average.parameters()), list(current.parameters()), 1.0 - decay)
    for mine, theirs in zip(average.buffers(), current.buffers(), strict=True):
        mine.copy_(theirs)

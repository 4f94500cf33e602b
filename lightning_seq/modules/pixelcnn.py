"""PixelCNNModel: trains an autoregressive image model by exact maximum likelihood, and samples it.

Any net with the contract of :mod:`lightning_seq.nets.pixelcnn` plugs in (PixelCNN, Gated PixelCNN,
Row LSTM): ``net(x, labels) -> params (B, P, C, H, W)`` with ``x = 2 * to_unit(images) - 1``, causal in
raster order, and ``net.likelihood`` scoring the images as the data holds them. The loss is the exact
negative log-likelihood, in nats per image::

    -log p(x) = -sum_{i, j, c} log p(x_{c,i,j} | x_{<})           (one forward pass: teacher forcing)
    bits/dim  = -log p(x) / (C H W ln 2)

so ``stage/nll`` and ``stage/bpd`` are exact (no bound). Sampling draws value by value with
:func:`~lightning_seq.decoding.pixels.sample_pixels` (temperature, top-k, top-p as for text).
"""

import torch
from torch import Tensor, nn

from lightning_seq.data import pixels as px
from lightning_seq.data.pixels import Pixels
from lightning_seq.decoding.pixels import sample_pixels
from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import PixelLikelihood, check_pixels
from lightning_seq.modules._generative import GenerativeModule

__all__ = ["PixelCNNModel"]


class PixelCNNModel(GenerativeModule):
    """Trains a PixelCNN-family net on images; logs ``stage/loss``, ``stage/nll`` (nats per image) and
    ``stage/bpd``; :meth:`sample` draws images pixel by pixel.

    Args:
        net: the network, e.g. :class:`~lightning_seq.nets.GatedPixelCNN`.
        pixels: what the data's images hold (linked from the DataModule): ``binary`` for a Bernoulli
            net, ``uint8`` for a categorical one.
        temperature: sampling temperature, > 0.
        top_k: sample among the ``k`` most likely values of each channel only.
        top_p: sample from the nucleus of mass ``top_p`` only.
        **kwargs: ``conditional`` and ``num_classes`` (the net needs the same ``num_classes``): see
            :class:`~lightning_seq.modules.GenerativeModule`; optimizer, schedule and ``compile``: see
            :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        pixels: Pixels = "binary",
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        **kwargs,
    ):
        _check_sampling(temperature, top_k, top_p)
        super().__init__(net, pixels=pixels, **kwargs)
        likelihood = getattr(net, "likelihood", None)
        if not isinstance(likelihood, PixelLikelihood):
            raise InputError(
                "model.init_args.net: a PixelCNNModel needs a net with a `likelihood` (a PixelLikelihood), "
                f"got {type(net).__name__}. Fix: use lightning_seq.nets.PixelCNN, GatedPixelCNN or RowLSTM."
            )
        check_pixels(likelihood, pixels, "model.init_args.net.init_args.likelihood")
        self.check_net_conditioning()

    @property
    def likelihood(self) -> PixelLikelihood:
        """The net's distribution of a value given its parameters."""
        return self.net.likelihood

    # -------------------------------------------------------------------------------- scoring
    def net_input(self, images: Tensor) -> Tensor:
        """Images in the data's convention -> the net's input in ``[-1, 1]``: ``2 * to_unit(x) - 1``."""
        return px.to_unit(images, self.pixels) * 2.0 - 1.0  # (B, C, H, W)

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """The likelihood's parameters ``(B, P, C, H, W)`` of every value of ``images (B, C, H, W)``."""
        return self.net(self.net_input(images), labels)

    def log_prob(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact ``log p(x)`` of each image ``(B,)``, in nats."""
        return self.likelihood.log_prob(self(images, labels), images)

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        images = batch["image"]  # (B, C, H, W) in the data's convention
        nll = -self.log_prob(images, self.batch_labels(batch))  # (B,)
        loss = nll.mean()
        size = images.size(0)
        self.log_loss(stage, loss, size)
        self.log_likelihood(stage, nll, images[0].numel(), size)
        return {"loss": loss, "nll": nll.detach()}

    # -------------------------------------------------------------------------------- sampling
    def _sample(self, n: int, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        return self.sample_with_log_probs(n, labels, generator)[0]

    def sample_with_log_probs(
        self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` images ``(n, C, H, W)`` and the model's log-probability of each drawn value ``(n, C, H, W)``
        (their sum over ``C, H, W`` is the image's ``log p(x)``), with the module's sampling settings."""
        net, hp = self.net, self.hparams
        shape = (n, net.in_channels, net.image_size, net.image_size)
        with self.evaluating():
            return sample_pixels(
                lambda x, y: net(self.net_input(x), y), shape, self.likelihood,
                temperature=hp.temperature, top_k=hp.top_k, top_p=hp.top_p, generator=generator,
                labels=labels, record=True, device=self.device,
            )  # fmt: skip


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature > 0:
        raise InputError(f"model.init_args.temperature: expected a positive temperature, got {temperature}.")
    if top_k is not None and top_k < 1:
        raise InputError(f"model.init_args.top_k: expected at least 1 (or null for all values), got {top_k}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InputError(f"model.init_args.top_p: expected a mass in (0, 1] (or null), got {top_p}.")

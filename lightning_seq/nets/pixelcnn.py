"""Autoregressive image models: PixelCNN, Gated PixelCNN and the Row LSTM PixelRNN.

Each factorises an image's distribution in raster order, colour channels R -> G -> B inside a pixel::

    p(x) = prod_{i, j} prod_c p(x_{c,i,j} | x_{<(i,j)}, x_{<c,(i,j)})

Contract, shared by the three nets (so one module, :class:`~lightning_seq.modules.PixelCNNModel`,
trains and samples any of them):

* the constructor takes ``image_size`` and ``in_channels`` (linked from the data), ``num_classes``
  (class conditioning, optional), ``likelihood`` (``"bernoulli"`` for binary pixels, ``"categorical"``
  for uint8 pixels: a 256-way softmax) and its sizes, or a ``preset``;
* ``net(x, labels=None)`` maps ``x (B, C, H, W)``, the image scaled to ``[-1, 1]``
  (``2 * to_unit(pixels) - 1``: binary 0/1 -> -1/+1, uint8 ``k`` -> ``k / 127.5 - 1``), to the
  likelihood's parameters ``(B, P, C, H, W)`` (``P`` = 1 or 256), and the parameters at ``(c, i, j)``
  depend only on pixels before ``(i, j)`` and on the channels before ``c`` of pixel ``(i, j)``;
* ``net.likelihood`` is the :class:`~lightning_seq.layers.likelihoods.PixelLikelihood` that scores
  a batch in its pixel convention with those parameters.

With ``num_classes`` set, ``labels (B,)`` add a learned class bias; ``labels=None`` runs the net
unconditionally (the class embedding is then unused).

Presets: ``nano`` is the tests' size; ``scenes`` trains on the embedded 28 x 28 binary scenes in minutes
on two CPU cores, with (about) 119k effective parameters in each of the three nets
(:func:`effective_parameters`: the kernel entries that masks zero are not counted), so that they compare
at equal parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import PixelLikelihood, make_likelihood
from lightning_seq.layers.masked_conv import GatedBlock, MaskedConv2d
from lightning_seq.nets._presets import Presets

__all__ = ["GatedPixelCNN", "PixelCNN", "RowLSTM", "RowLSTMLayer", "effective_parameters"]

PixelLikelihoodName = Literal["bernoulli", "categorical"]
_FIELD = "model.init_args.net.init_args"


def _multiple(value: int, of: int) -> int:
    """The nearest positive multiple of ``of`` to ``value``."""
    return of * max(1, round(value / of))


def effective_parameters(net: nn.Module) -> int:
    """Parameters that can affect the output: every parameter, less the kernel entries masks zero."""
    total = sum(p.numel() for p in net.parameters())
    for module in net.modules():
        if isinstance(module, MaskedConv2d):
            total -= int((module.mask == 0).sum().item())
    return total


class _PixelNet(nn.Module):
    """What the three nets share: argument checks, the likelihood, the class bias and the output head.

    The head maps ``width`` features to ``P * C`` channels through ``ReLU -> 1x1 -> ReLU -> 1x1``
    (masked B, so colour groups stay apart); channel ``p * C + c`` is parameter ``p`` of colour ``c``,
    which is the interleaved colour grouping of :mod:`~lightning_seq.layers.masked_conv`, so the
    output is a plain reshape to ``(B, P, C, H, W)``.
    """

    def _setup(
        self,
        image_size: int,
        in_channels: int,
        num_classes: int | None,
        likelihood: str,
        widths: dict[str, int],
    ) -> None:
        if image_size < 1:
            raise InputError(f"{_FIELD}.image_size: expected a positive image side, got {image_size}.")
        if in_channels < 1:
            raise InputError(f"{_FIELD}.in_channels: expected at least 1 channel, got {in_channels}.")
        if num_classes is not None and num_classes < 1:
            raise InputError(f"{_FIELD}.num_classes: expected None or at least 1 class, got {num_classes}.")
        if likelihood not in ("bernoulli", "categorical"):
            raise InputError(
                f"{_FIELD}.likelihood: expected bernoulli (binary pixels) or categorical (uint8 pixels), "
                f"got {likelihood!r}."
            )
        for name, value in widths.items():
            if value < 1 or value % in_channels:
                raise InputError(
                    f"{_FIELD}.{name}: expected a positive multiple of in_channels={in_channels} (one group "
                    f"of channels per colour), got {value}. Fix: e.g. {name}={_multiple(value, in_channels)}."
                )
        self.image_size, self.in_channels = image_size, in_channels
        self.num_classes = num_classes
        self.likelihood: PixelLikelihood = make_likelihood(likelihood, field=f"{_FIELD}.likelihood")

    def _head(self, width: int, hidden: int) -> nn.Sequential:
        out = self.likelihood.params * self.in_channels
        groups = self.in_channels
        return nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(width, hidden, 1, "B", groups),
            nn.ReLU(),
            MaskedConv2d(hidden, out, 1, "B", groups),
        )

    def _class_bias(self, width: int) -> nn.Embedding | None:
        return nn.Embedding(self.num_classes, width) if self.num_classes else None

    def _check_labels(self, labels: Tensor | None) -> None:
        if labels is not None and self.num_classes is None:
            raise InputError(f"{type(self).__name__}: labels given, but the net has no num_classes.")

    def _params(self, out: Tensor) -> Tensor:
        b, _, h, w = out.shape
        return out.view(b, self.likelihood.params, self.in_channels, h, w)  # (B, P, C, H, W)


class PixelCNN(Presets, _PixelNet):
    """PixelCNN (van den Oord et al., 2016, "Pixel Recurrent Neural Networks"): a type-A masked
    ``k x k`` convolution, residual blocks of type-B masked convolutions, and a 1 x 1 head.

    .. math::
        f_0 = W^A_{k \\times k} * x, \\qquad
        f_{l} = f_{l-1} + W_3\\, \\mathrm{ReLU}(W^B_{3 \\times 3}
            * \\mathrm{ReLU}(W_1\\, \\mathrm{ReLU}(f_{l-1})))

    with ``2h`` features between blocks and ``h`` inside them (``W_1``, ``W_3``: masked-B 1 x 1). Its
    receptive field has the masked convolutions' blind spot: pixels above and to the right of the
    diagonal that the stacked kernels never reach.

    Args:
        image_size: side of the square images (the net is fully convolutional; documents the input).
        in_channels: image channels (colour groups: 1 grey, 3 RGB).
        num_classes: classes of an optional class bias after the first layer; None: unconditional.
        likelihood: ``bernoulli`` (binary pixels) or ``categorical`` (uint8 pixels, 256-way softmax).
        width: ``h``, half of the features between blocks; a multiple of ``in_channels``.
        depth: residual blocks.
        first_kernel: side of the first, type-A convolution (7 in the paper).
        kernel_size: side of each block's type-B convolution (3 in the paper).
        head_width: features of the head's hidden 1 x 1 layer; a multiple of ``in_channels``.
        preset: a named size from ``PRESETS``; the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"width": 6, "depth": 2, "first_kernel": 5, "head_width": 24},
        "scenes": {"width": 48, "depth": 5, "head_width": 128},
    }

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int | None = None,
        likelihood: PixelLikelihoodName = "bernoulli",
        width: int = 32,
        depth: int = 5,
        first_kernel: int = 7,
        kernel_size: int = 3,
        head_width: int = 128,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            image_size, in_channels, num_classes, likelihood, {"width": width, "head_width": head_width}
        )
        groups, features = in_channels, 2 * width
        self.first = MaskedConv2d(in_channels, features, first_kernel, "A", groups)
        self.class_bias = self._class_bias(features)
        self.blocks = nn.ModuleList(
            _residual_block(features, width, kernel_size, groups) for _ in range(depth)
        )
        self.head = self._head(features, head_width)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)`` in [-1, 1] -> likelihood parameters ``(B, P, C, H, W)``."""
        self._check_labels(labels)
        f = self.first(x)  # (B, 2h, H, W)
        if self.class_bias is not None and labels is not None:
            f = f + self.class_bias(labels)[:, :, None, None]
        for block in self.blocks:
            f = f + block(f)
        return self._params(self.head(f))


def _residual_block(features: int, width: int, kernel_size: int, groups: int) -> nn.Sequential:
    """``ReLU -> 1x1 -> ReLU -> k x k (B) -> ReLU -> 1x1``, ``2h -> h -> h -> 2h`` (all masked B)."""
    return nn.Sequential(
        nn.ReLU(),
        MaskedConv2d(features, width, 1, "B", groups),
        nn.ReLU(),
        MaskedConv2d(width, width, kernel_size, "B", groups),
        nn.ReLU(),
        MaskedConv2d(width, features, 1, "B", groups),
    )


class GatedPixelCNN(Presets, _PixelNet):
    """Gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
    Decoders"): a stack of :class:`~lightning_seq.layers.masked_conv.GatedBlock` layers, vertical and
    horizontal stacks with ``tanh * sigmoid`` gates, and a 1 x 1 head on the horizontal stack.

    .. math::
        (v_1, h_1) = \\mathrm{Gated}^A_{k_1}(x, x), \\quad
        (v_l, h_l) = \\mathrm{Gated}^B_{k}(v_{l-1}, h_{l-1}), \\quad \\theta = \\mathrm{Head}(h_L)

    No blind spot: the output at ``(i, j)`` sees every pixel above it within the receptive field and
    every pixel to its left. With ``num_classes`` every block adds a class bias to its gates.

    Args:
        image_size: side of the square images (the net is fully convolutional; documents the input).
        in_channels: image channels (colour groups: 1 grey, 3 RGB).
        num_classes: classes of the class-conditional gate bias; None: unconditional.
        likelihood: ``bernoulli`` (binary pixels) or ``categorical`` (uint8 pixels, 256-way softmax).
        width: channels of each stack; a multiple of ``in_channels``.
        depth: gated blocks (the first one included).
        first_kernel: odd kernel side of the first block (7 in the paper).
        kernel_size: odd kernel side of the later blocks (3 here; the paper uses 3 and 5).
        head_width: features of the head's hidden 1 x 1 layer; a multiple of ``in_channels``.
        preset: a named size from ``PRESETS``; the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"width": 6, "depth": 3, "first_kernel": 5, "head_width": 24},
        "scenes": {"width": 32, "depth": 6, "head_width": 128},
    }

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int | None = None,
        likelihood: PixelLikelihoodName = "bernoulli",
        width: int = 32,
        depth: int = 5,
        first_kernel: int = 7,
        kernel_size: int = 3,
        head_width: int = 128,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            image_size, in_channels, num_classes, likelihood, {"width": width, "head_width": head_width}
        )
        if depth < 1:
            raise InputError(f"{_FIELD}.depth: expected at least 1 gated block, got {depth}.")
        blocks = [GatedBlock(in_channels, width, first_kernel, True, in_channels, num_classes)]
        blocks += [
            GatedBlock(width, width, kernel_size, False, in_channels, num_classes) for _ in range(depth - 1)
        ]
        self.blocks = nn.ModuleList(blocks)
        self.head = self._head(width, head_width)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)`` in [-1, 1] -> likelihood parameters ``(B, P, C, H, W)``."""
        self._check_labels(labels)
        v, h = x, x
        for block in self.blocks:
            v, h = block(v, h, labels)  # (B, width, H, W) each
        return self._params(self.head(h))


class RowLSTMLayer(nn.Module):
    """A Row LSTM layer (van den Oord et al., 2016, PixelRNN): the image's rows are the time steps.

    .. math::
        [o_i, f_i, \\iota_i, g_i] = \\sigma\\big(K^{ss} \\circledast h_{i-1}
            + K^{is} \\circledast x_i\\big), \\quad
        c_i = f_i \\odot c_{i-1} + \\iota_i \\odot g_i, \\quad h_i = o_i \\odot \\tanh(c_i)

    (``sigma`` is the logistic for ``o, f, iota`` and ``tanh`` for ``g``). ``K^{is}`` is a masked
    (type B) ``1 x k`` input-to-state convolution computed for all rows at once: row ``i``'s gates see
    ``x`` at columns ``<= j`` of that row. ``K^{ss}`` is a ``k``-wide 1-D state-to-state convolution along
    the previous row's state, applied row by row. The output adds a masked 1 x 1 map of ``h`` to the
    input (residual). The receptive field is a triangle above the pixel.

    Args:
        width: input and output channels (a multiple of ``channels``).
        hidden: LSTM state channels (a multiple of ``channels``).
        kernel_size: ``k`` of both convolutions (odd).
        channels: colour groups, 1 or 3.
    """

    def __init__(self, width: int, hidden: int, kernel_size: int = 3, channels: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InputError(f"{_FIELD}.kernel_size: expected an odd kernel side, got {kernel_size}.")
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(width, 4 * hidden, (1, kernel_size), "B", channels)
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, kernel_size, padding=kernel_size // 2)
        self.out = MaskedConv2d(hidden, width, 1, "B", channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, width, H, W) -> (B, width, H, W)``."""
        b, _, rows, cols = x.shape
        gates_in = self.input_to_state(x)  # (B, 4h, H, W)
        h = x.new_zeros(b, self.hidden, cols)  # (B, h, W)
        c = torch.zeros_like(h)
        states = []
        for i in range(rows):
            gates = gates_in[:, :, i] + self.state_to_state(h)  # (B, 4h, W)
            o, f, ig, g = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(ig) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            states.append(h)
        hs = torch.stack(states, dim=2)  # (B, h, H, W)
        return x + self.out(hs)


class RowLSTM(Presets, _PixelNet):
    """Row LSTM PixelRNN (van den Oord et al., 2016): a type-A ``k x k`` convolution, ``depth``
    :class:`RowLSTMLayer` layers (rows processed one after another), and a 1 x 1 head.

    .. math::
        f_0 = W^A_{k \\times k} * x, \\qquad f_l = \\mathrm{RowLSTM}_l(f_{l-1}), \\qquad
        \\theta = \\mathrm{Head}(f_L)

    Training costs ``H`` sequential steps per layer where a PixelCNN costs one convolution: the
    speed / quality trade that the PixelCNN was introduced for.

    Args:
        image_size: side of the square images (documents the input).
        in_channels: image channels (colour groups: 1 grey, 3 RGB).
        num_classes: classes of an optional class bias after the first layer; None: unconditional.
        likelihood: ``bernoulli`` (binary pixels) or ``categorical`` (uint8 pixels, 256-way softmax).
        width: features between layers; a multiple of ``in_channels``.
        hidden: LSTM state channels per layer; a multiple of ``in_channels``.
        depth: Row LSTM layers.
        first_kernel: side of the first, type-A convolution.
        kernel_size: ``k`` of the input-to-state and state-to-state convolutions.
        head_width: features of the head's hidden 1 x 1 layer; a multiple of ``in_channels``.
        preset: a named size from ``PRESETS``; the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"width": 6, "hidden": 6, "depth": 1, "first_kernel": 5, "head_width": 24},
        "scenes": {"width": 51, "hidden": 51, "depth": 2, "head_width": 128},
    }

    def __init__(
        self,
        image_size: int = 28,
        in_channels: int = 1,
        num_classes: int | None = None,
        likelihood: PixelLikelihoodName = "bernoulli",
        width: int = 32,
        hidden: int = 32,
        depth: int = 2,
        first_kernel: int = 7,
        kernel_size: int = 3,
        head_width: int = 128,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        sizes = {"width": width, "hidden": hidden, "head_width": head_width}
        self._setup(image_size, in_channels, num_classes, likelihood, sizes)
        self.first = MaskedConv2d(in_channels, width, first_kernel, "A", in_channels)
        self.class_bias = self._class_bias(width)
        self.layers = nn.ModuleList(
            RowLSTMLayer(width, hidden, kernel_size, in_channels) for _ in range(depth)
        )
        self.head = self._head(width, head_width)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``x (B, C, H, W)`` in [-1, 1] -> likelihood parameters ``(B, P, C, H, W)``."""
        self._check_labels(labels)
        f = self.first(x)  # (B, width, H, W)
        if self.class_bias is not None and labels is not None:
            f = f + self.class_bias(labels)[:, :, None, None]
        for layer in self.layers:
            f = layer(f)
        return self._params(self.head(f))

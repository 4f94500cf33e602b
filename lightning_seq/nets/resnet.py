"""Residual network (He et al., 2016) of basic blocks, optionally with Squeeze-and-Excitation.

Classifier contract (shared by every image classifier net): the constructor takes
``image_size``, ``in_channels`` and ``num_classes`` (filled in from the data by the CLI), and
``net(images)`` maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits.
:meth:`ResNet.forward_features` gives the spatial feature map, for models that attend over it.

Preset names follow the papers: ``resnet18`` is ResNet-18's layout (ImageNet stem, widths
64-512, two blocks per stage) with SE; ``cifar`` is the CIFAR ResNet-20 layout (3 x 3 stem,
widths 16-64, three blocks per stage) with SE; ``nano`` is a toy size for tests.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.channel_attention import SqueezeExcitation
from lightning_seq.nets._presets import Presets

__all__ = ["BasicBlock", "ResNet"]


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with a residual connection, SE before the addition when enabled.

    .. math::
        y = \\mathrm{ReLU}\\big(\\mathrm{SE}(\\mathrm{BN}_2(\\mathrm{conv}_2(
            \\mathrm{ReLU}(\\mathrm{BN}_1(\\mathrm{conv}_1(x)))))) + \\mathrm{shortcut}(x)\\big)

    The shortcut is the identity, or a strided 1 x 1 convolution and BN when the stride or the
    width changes. ``BN_2`` starts with zero scale, so the block starts as (ReLU of) its shortcut.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (2 to downsample).
        se: Add Squeeze-and-Excitation.
        se_reduction: SE bottleneck reduction.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, se: bool = False, se_reduction: int = 16
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)
        self.se = SqueezeExcitation(out_channels, se_reduction) if se else nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)``."""
        out = self.bn1(self.conv1(x)).relu()
        out = self.se(self.bn2(self.conv2(out)))
        return (out + self.shortcut(x)).relu()


def _stem(kind: str, in_channels: int, width: int) -> nn.Sequential:
    if kind == "cifar":
        return nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
    if kind == "imagenet":
        return nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    raise InputError(f"ResNet: stem={kind!r} is not supported; expected one of cifar, imagenet.")


class ResNet(Presets, nn.Module):
    """ResNet of :class:`BasicBlock` stages, global average pooling and a linear head.

    .. math::
        f = \\mathrm{Stage}_S \\circ \\dots \\circ \\mathrm{Stage}_1 \\circ \\mathrm{Stem}(x), \\quad
        y = W\\, \\mathrm{dropout}(\\mathrm{mean}_{h,w} f) + b

    Stage ``s`` has ``depths[s]`` blocks of width ``widths[s]``; every stage after the first
    halves the resolution in its first block. The ``"cifar"`` stem is a 3 x 3 convolution at
    stride 1; the ``"imagenet"`` stem a 7 x 7 convolution at stride 2 and a 3 x 3 max pool at
    stride 2.

    Args:
        image_size: Side of the square input images (the net is fully convolutional; this only
            documents the expected input and completes the classifier contract).
        in_channels: Image channels.
        num_classes: Number of classes.
        widths: Channels per stage.
        depths: Blocks per stage.
        se: Squeeze-and-Excitation in every block.
        se_reduction: SE bottleneck reduction.
        stem: ``"cifar"`` or ``"imagenet"``.
        dropout: Dropout before the linear head.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"widths": (8, 16), "depths": (1, 1), "se": True, "se_reduction": 4},
        "cifar": {"widths": (16, 32, 64), "depths": (3, 3, 3), "se": True, "stem": "cifar"},
        "resnet18": {"widths": (64, 128, 256, 512), "depths": (2, 2, 2, 2), "se": True, "stem": "imagenet"},
    }

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, ...] = (32, 64, 128),
        depths: tuple[int, ...] = (2, 2, 2),
        se: bool = True,
        se_reduction: int = 16,
        stem: Literal["cifar", "imagenet"] = "cifar",
        dropout: float = 0.0,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths):
            raise InputError(f"ResNet: widths={widths} and depths={depths} must have one entry per stage.")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.stem = _stem(stem, in_channels, widths[0])
        blocks: list[nn.Module] = []
        in_width = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_width, width, stride, se=se, se_reduction=se_reduction))
                in_width = width
        self.blocks = nn.Sequential(*blocks)
        self.num_features = widths[-1]
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He-normal convolutions (fan out); the last BN of each block keeps its zero scale."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, images: Tensor) -> Tensor:
        """The last stage's feature map.

        Args:
            images: ``(B, C, H, W)``.

        Returns:
            ``(B, widths[-1], h, w)`` with ``h = H / 2^(stages - 1)`` for the cifar stem and
            ``H / 2^(stages + 1)`` for the imagenet stem (rounded up at each stride).
        """
        return self.blocks(self.stem(images))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        pooled = self.forward_features(images).mean(dim=(2, 3))  # (B, C)
        return self.head(self.drop(pooled))

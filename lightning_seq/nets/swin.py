"""Swin Transformer classifier (Liu et al., 2021): shifted-window attention over a feature pyramid.

Classifier contract (shared by every image classifier net): the constructor takes
``image_size``, ``in_channels`` and ``num_classes`` (filled in from the data by the CLI), and
``net(images)`` maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits.

Preset names follow the paper: ``tiny``, ``small`` and ``base`` are Swin-T/S/B (patch 4,
window 7, for 224-pixel images); ``nano`` is a toy size for tests. At other image sizes the
window must tile every stage: e.g. 32-pixel images take ``window_size=4``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.patches import PatchEmbedding, PatchKind, patch_grid
from lightning_seq.layers.transformer import drop_path_rates, init_linear_
from lightning_seq.layers.windows import PatchMerging, SwinBlock
from lightning_seq.nets._presets import Presets

__all__ = ["Swin"]


def _tiles(grid: int, stages: int, window_size: int) -> bool:
    """Whether ``window_size`` tiles the (halved each stage) grid at every stage."""
    sides = [grid >> i for i in range(stages)]
    return all(side <= window_size or side % window_size == 0 for side in sides)


def _check_grid(image_size: int, patch_size: int, window_size: int, stages: int) -> None:
    grid = patch_grid("Swin", image_size, patch_size)
    multiple = patch_size * 2 ** (stages - 1)
    if grid % 2 ** (stages - 1):
        raise InputError(
            f"Swin: image_size={image_size} with patch_size={patch_size} gives a {grid}x{grid} patch grid, "
            f"which {stages - 1} patch mergings cannot halve evenly; use an image_size that is a "
            f"multiple of patch_size * 2**(stages - 1) = {multiple}."
        )
    if not _tiles(grid, stages, window_size):
        fits = max(w for w in range(1, window_size + 1) if _tiles(grid, stages, w))
        raise InputError(
            f"Swin: window_size={window_size} does not tile the {grid}x{grid} patch grid of "
            f"image_size={image_size} / patch_size={patch_size} at every stage; use window_size={fits}, "
            f"or an image_size that is a multiple of {multiple * window_size} (patch_size * window_size "
            f"* 2**(stages - 1))."
        )


class Swin(Presets, nn.Module):
    """Swin Transformer: patch embedding, stages of Swin blocks with patch merging, pooled head.

    .. math::
        z_0 &= \\mathrm{LN}(\\mathrm{PatchEmbed}(x)) \\\\
        z_s &= \\mathrm{SwinBlocks}_s(\\mathrm{PatchMerging}(z_{s-1})) \\quad
            \\text{(no merging before stage 0; shift 0, ws/2, 0, ... inside a stage)} \\\\
        y &= W_{head}\\, \\mathrm{mean}_{h,w}\\, \\mathrm{LN}(z_S)

    Stage ``s`` works on a ``(H/p/2^s) x (W/p/2^s)`` map of width ``dim * 2^s``. Drop-path rates
    grow linearly from 0 to ``drop_path`` over all blocks.

    Args:
        image_size: Side of the square input images.
        in_channels: Image channels.
        num_classes: Number of classes.
        patch_size: Patch side ``p``; must divide ``image_size``.
        dim: Width of the first stage.
        depths: Blocks per stage.
        heads: Attention heads per stage.
        window_size: Window side; must divide every stage's map side or be no smaller than it.
        mlp_ratio: MLP inner width as a multiple of the stage width.
        dropout: Dropout after the patch embedding, on attention outputs and inside the MLPs.
        drop_path: Stochastic-depth rate of the last block.
        patch_embed: ``"conv"`` or ``"linear"`` (see :class:`PatchEmbedding`); same weights.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {
            "patch_size": 2,
            "dim": 16,
            "depths": (2, 2),
            "heads": (2, 4),
            "window_size": 4,
            "mlp_ratio": 2.0,
            "drop_path": 0.0,
        },
        "tiny": {"dim": 96, "depths": (2, 2, 6, 2), "heads": (3, 6, 12, 24), "drop_path": 0.2},
        "small": {"dim": 96, "depths": (2, 2, 18, 2), "heads": (3, 6, 12, 24), "drop_path": 0.3},
        "base": {"dim": 128, "depths": (2, 2, 18, 2), "heads": (4, 8, 16, 32), "drop_path": 0.5},
    }

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        patch_size: int = 4,
        dim: int = 96,
        depths: tuple[int, ...] = (2, 2, 6, 2),
        heads: tuple[int, ...] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        patch_embed: PatchKind = "conv",
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise InputError(f"Swin: depths={depths} and heads={heads} must have one entry per stage.")
        _check_grid(image_size, patch_size, window_size, len(depths))
        grid = image_size // patch_size
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size, kind=patch_embed)
        self.embed_norm = nn.LayerNorm(dim)
        self.pos_drop = nn.Dropout(dropout)
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        self.stages = nn.ModuleList()
        for i, (depth, stage_heads) in enumerate(zip(depths, heads, strict=True)):
            width, side = dim * 2**i, grid >> i
            merge = [PatchMerging(width // 2)] if i > 0 else []
            blocks = [
                SwinBlock(
                    width,
                    stage_heads,
                    (side, side),
                    window_size,
                    shift=(j % 2) * (window_size // 2),
                    mlp_ratio=mlp_ratio,
                    dropout=dropout,
                    drop_path=next(rates),
                )
                for j in range(depth)
            ]
            self.stages.append(nn.Sequential(*merge, *blocks))
        self.num_features = dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)
        init_linear_(self)  # truncated normal (std 0.02), zero biases, as the reference code

    def forward_stages(self, images: Tensor) -> list[Tensor]:
        """The feature map after every stage.

        Args:
            images: ``(B, C, H, W)``.

        Returns:
            One channels-last map per stage, ``(B, H / p / 2^s, W / p / 2^s, dim * 2^s)``.
        """
        tokens, (gh, gw) = self.patch_embed(images)  # (B, N, dim)
        x = self.pos_drop(self.embed_norm(tokens)).view(tokens.shape[0], gh, gw, -1)  # (B, gh, gw, dim)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        x = self.norm(self.forward_stages(images)[-1])  # (B, h, w, C)
        return self.head(x.mean(dim=(1, 2)))  # (B, num_classes)

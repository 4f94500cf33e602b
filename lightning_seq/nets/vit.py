"""Vision Transformer (Dosovitskiy et al., 2021) with the DeiT distillation token (Touvron et al., 2021).

Classifier contract (shared by every image classifier net): the constructor takes
``image_size``, ``in_channels`` and ``num_classes`` (filled in from the data by the CLI), and
``net(images)`` maps ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits.

Preset names follow the papers: ``tiny``, ``small`` and ``base`` are the published ViT-Ti/S/B
(DeiT) widths, depths and head counts; ``nano`` is a toy size for tests. The presets leave
``patch_size`` at 4, suited to 32-pixel images; the papers use 16 at 224 pixels
(``from_preset("base", patch_size=16, image_size=224)``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.layers.patches import PatchEmbedding, PatchKind, patch_grid
from lightning_seq.layers.transformer import TransformerBlock, drop_path_rates, init_linear_, trunc_normal_
from lightning_seq.nets._presets import Presets

__all__ = ["ViT"]


def resize_pos_embed(pos_embed: Tensor, num_extra: int, grid: int) -> Tensor:
    """Bicubically resample the patch rows of a position embedding to a ``grid x grid`` grid.

    Args:
        pos_embed: ``(1, num_extra + g * g, dim)``, the first ``num_extra`` rows (class and
            distillation tokens) followed by a square ``g x g`` grid in row-major order.
        num_extra: Rows that belong to no patch; kept as they are.
        grid: New grid side.

    Returns:
        ``(1, num_extra + grid * grid, dim)``.
    """
    extra, patches = pos_embed[:, :num_extra], pos_embed[:, num_extra:]
    old = math.isqrt(patches.shape[1])
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # (1, dim, g, g)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)  # (1, grid^2, dim)
    return torch.cat([extra, patches.to(pos_embed.dtype)], dim=1)


class ViT(Presets, nn.Module):
    """Vision Transformer classifier; DeiT when ``distillation=True``.

    .. math::
        z_0 &= [x_{cls};\\, (x_{dist};)\\, x_p^1 E; \\dots; x_p^N E] + E_{pos} \\\\
        z_\\ell &= \\mathrm{TransformerBlock}_\\ell(z_{\\ell-1}) \\quad \\text{(pre-norm)} \\\\
        y &= W_{head}\\, \\mathrm{LN}(z_L)^0 \\quad \\text{or, DeiT:} \\quad
            y = \\tfrac12 (W_{head}\\, \\mathrm{LN}(z_L)^0 + W_{dist}\\, \\mathrm{LN}(z_L)^1)

    Drop-path rates grow linearly from 0 to ``drop_path`` over the blocks. A ``state_dict``
    saved at another image size loads: its position embeddings are resized bicubically on the
    patch grid (the class/distillation rows are kept).

    Args:
        image_size: Side of the square input images.
        in_channels: Image channels.
        num_classes: Number of classes.
        patch_size: Patch side; must divide ``image_size``.
        dim: Token width.
        depth: Number of Transformer blocks.
        heads: Attention heads.
        mlp_ratio: MLP inner width as a multiple of ``dim``.
        dropout: Dropout on the embeddings, attention outputs and inside the MLPs.
        attn_dropout: Dropout on the attention weights.
        drop_path: Stochastic-depth rate of the last block.
        patch_embed: ``"conv"`` or ``"linear"`` (see :class:`PatchEmbedding`); same weights.
        distillation: Add the DeiT distillation token and head.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    no_weight_decay = ("cls_token", "dist_token", "pos_embed")  # read by the optimizer set-up

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0, "drop_path": 0.0},
        "tiny": {"dim": 192, "depth": 12, "heads": 3, "drop_path": 0.1},
        "small": {"dim": 384, "depth": 12, "heads": 6, "drop_path": 0.1},
        "base": {"dim": 768, "depth": 12, "heads": 12, "drop_path": 0.1},
    }

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        num_classes: int = 10,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.1,
        patch_embed: PatchKind = "conv",
        distillation: bool = False,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        grid = patch_grid("ViT", image_size, patch_size)
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.num_extra = 2 if distillation else 1
        self.patch_embed = PatchEmbedding(in_channels, dim, patch_size, kind=patch_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distillation else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_extra + grid * grid, dim))
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, mlp_ratio, dropout, attn_dropout, drop_path=rate)
            for rate in drop_path_rates(drop_path, depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distillation else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for tokens, position embeddings and linear weights; zero biases."""
        for token in (self.cls_token, self.dist_token, self.pos_embed):
            if token is not None:
                trunc_normal_(token)
        init_linear_(self)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        key = prefix + "pos_embed"
        saved = state_dict.get(key)
        if saved is not None and saved.shape != self.pos_embed.shape and self._resizable(saved):
            grid = math.isqrt(self.pos_embed.shape[1] - self.num_extra)
            state_dict[key] = resize_pos_embed(saved, self.num_extra, grid)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _resizable(self, saved: Tensor) -> bool:
        """A saved embedding of the same width over a square grid, with the same extra tokens."""
        patches = saved.shape[1] - self.num_extra
        return (
            saved.dim() == 3
            and saved.shape[2] == self.pos_embed.shape[2]
            and math.isqrt(patches) ** 2 == patches
        )

    def forward_features(self, images: Tensor) -> Tensor:
        """The normalised output tokens.

        Args:
            images: ``(B, C, H, W)``.

        Returns:
            ``(B, num_extra + N, dim)``: the class token, the distillation token (DeiT), then
            the ``N`` patch tokens in row-major order.
        """
        patches, _ = self.patch_embed(images)  # (B, N, dim)
        b = patches.shape[0]
        extra = [t.expand(b, -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat([*extra, patches], dim=1) + self.pos_embed  # (B, num_extra + N, dim)
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_heads(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """DeiT's two predictions, for training with a teacher.

        Args:
            images: ``(B, C, H, W)``.

        Returns:
            ``(cls_logits, dist_logits)``, each ``(B, num_classes)``. Without a distillation
            token both are the class-token logits (plain distillation through the one head).
        """
        tokens = self.forward_features(images)  # (B, num_extra + N, dim)
        cls_logits = self.head(tokens[:, 0])
        if self.head_dist is None:
            return cls_logits, cls_logits
        return cls_logits, self.head_dist(tokens[:, 1])

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``; with distillation, the mean of the two heads."""
        if self.head_dist is not None:
            cls_logits, dist_logits = self.forward_heads(images)
            return (cls_logits + dist_logits) / 2
        return self.head(self.forward_features(images)[:, 0])

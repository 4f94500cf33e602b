"""Split an image into non-overlapping patches and embed each one linearly (ViT, Swin)."""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError

PatchKind: TypeAlias = Literal["conv", "linear"]
_KINDS: tuple[str, ...] = ("conv", "linear")


def patch_grid(owner: str, image_size: int, patch_size: int) -> int:
    """Patches per side, ``image_size // patch_size``; raise if the patches do not tile the image."""
    if patch_size < 1 or image_size % patch_size != 0:
        raise InputError(
            f"{owner}: image_size={image_size} is not divisible by patch_size={patch_size}; "
            "choose a patch_size that divides the image size (or resize the images)."
        )
    return image_size // patch_size


class PatchEmbedding(nn.Module):
    """Linear embedding of ``p x p`` patches (Dosovitskiy et al., 2021).

    .. math:: z_n = W \\operatorname{vec}(x_{[n]}) + b, \\quad n = 1 \\dots (H/p)(W/p)

    where ``vec`` flattens a patch channel-major, then row, then column. The weight is stored
    as a convolution kernel ``proj.weight`` of shape ``(dim, C, p, p)``; ``kind="conv"`` applies
    it as a stride-``p`` convolution, ``kind="linear"`` unfolds the patches and multiplies by the
    flattened kernel. Both kinds share one ``state_dict`` and give the same tokens.

    Args:
        in_channels: Image channels ``C``.
        dim: Embedding width.
        patch_size: Patch side ``p``.
        kind: ``"conv"`` or ``"linear"``; can be changed after construction.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int, kind: PatchKind = "conv") -> None:
        super().__init__()
        if kind not in _KINDS:
            raise InputError(f"PatchEmbedding: kind={kind!r} is not supported; expected one of conv, linear.")
        self.patch_size = patch_size
        self.kind = kind
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Embed every patch.

        Args:
            images: ``(B, C, H, W)``, with ``H`` and ``W`` multiples of ``patch_size``.

        Returns:
            ``(tokens, (grid_h, grid_w))``: tokens ``(B, grid_h * grid_w, dim)`` in row-major
            patch order, and the patch grid.
        """
        p = self.patch_size
        h, w = images.shape[-2:]
        if h % p or w % p:
            raise InputError(f"PatchEmbedding: image size {h}x{w} is not divisible by patch_size={p}.")
        if self.kind == "conv":
            tokens = self.proj(images).flatten(2).transpose(1, 2)  # (B, dim, gh, gw) -> (B, N, dim)
        else:
            patches = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, N, C*p*p)
            tokens = F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)  # (B, N, dim)
        return tokens, (h // p, w // p)

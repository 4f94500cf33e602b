"""Channel attention: Squeeze-and-Excitation (Hu et al., 2018) and its query-conditioned form for
captioning decoders (the channel-wise attention of SCA-CNN, Chen et al., 2017)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError


class SqueezeExcitation(nn.Module):
    """Reweight channels by gates computed from their global averages.

    .. math::
        s = \\sigma(W_2\\, \\mathrm{ReLU}(W_1 \\bar{x} + b_1) + b_2), \\quad
        \\bar{x}_c = \\frac{1}{HW} \\sum_{h,w} x_{c,h,w}, \\quad y_{c,h,w} = s_c\\, x_{c,h,w}

    Args:
        channels: Channels ``C``.
        reduction: ``W_1`` maps ``C`` to ``max(C // reduction, min_hidden)`` features.
        min_hidden: Lower bound on that hidden width, so narrow layers keep a useful bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gates(self, x: Tensor) -> Tensor:
        """The channel gates ``s`` in (0, 1), ``(B, C, H, W) -> (B, C)``."""
        squeezed = x.mean(dim=(2, 3))  # (B, C)
        return self.fc2(self.fc1(squeezed).relu()).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``, each channel scaled by its gate."""
        return x * self.gates(x)[:, :, None, None]


class ConditionalChannelAttention(nn.Module):
    """Channel attention conditioned on a query (a decoder state): SCA-CNN's channel-wise step
    (Chen et al., 2017) in its sigmoid-gate form, a Squeeze-and-Excitation driven by the query.

    .. math::
        \\bar{a} = \\frac{1}{L} \\sum_{i=1}^{L} a_i, \\quad
        b = \\tanh(W_a \\bar{a} + W_h h + b_1), \\quad
        \\beta = \\sigma(W_o b + b_o) \\in (0, 1)^C, \\quad
        \\tilde{a}_i = \\beta \\odot a_i

    for features ``a_i`` (``L`` locations of ``C`` channels) and the query ``h``. The paper scores
    channels with a softmax over ``C``; the sigmoid gate is used here instead, as in SE, so that
    several channels can be fully on at once and the features keep their scale (a softmax over 128
    channels would shrink every feature about 128 times). ``W_a \\bar{a} + b_1`` does not depend on
    the query: a decoder computes it once per image (:meth:`project_features`) and reuses it per step.

    Args:
        query_dim: Width of the query ``h``.
        channels: Channels ``C`` of the features.
        attn_dim: Width of the hidden layer ``b``.

    Parameters: ``feature_proj`` (``W_a``, ``b_1``), ``query_proj`` (``W_h``, no bias) and ``gate``
    (``W_o``, ``b_o``).
    """

    def __init__(self, query_dim: int, channels: int, attn_dim: int) -> None:
        super().__init__()
        self.query_dim, self.channels, self.attn_dim = query_dim, channels, attn_dim
        self.feature_proj = nn.Linear(channels, attn_dim)  # W_a, b_1
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W_h
        self.gate = nn.Linear(attn_dim, channels)  # W_o, b_o

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, channels={self.channels}, attn_dim={self.attn_dim}"

    def project_features(self, features: Tensor) -> Tensor:
        """``W_a mean_i(a_i) + b_1``: ``(B, L, C) -> (B, attn_dim)``; compute once, reuse per step."""
        return self.feature_proj(features.mean(dim=1))

    def gates(self, query: Tensor, features: Tensor | None = None, projected: Tensor | None = None) -> Tensor:
        """The channel gates ``beta`` in (0, 1), ``(B, C)``.

        Args:
            query: ``h``, ``(B, query_dim)``.
            features: ``a``, ``(B, L, C)``; not needed when ``projected`` is given.
            projected: :meth:`project_features` of the features, ``(B, attn_dim)``.
        """
        if projected is None:
            if features is None:
                raise InputError("ConditionalChannelAttention.gates: give the features or their projection.")
            projected = self.project_features(features)
        hidden = torch.tanh(projected + self.query_proj(query))  # (B, attn_dim)
        return self.gate(hidden).sigmoid()  # (B, C)

    def forward(
        self, query: Tensor, features: Tensor, projected: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reweight the channels of ``features`` (channels last).

        Args:
            query: ``h``, ``(B, query_dim)``.
            features: ``a``, ``(B, L, C)``.
            projected: :meth:`project_features` of ``features`` computed beforehand, ``(B, attn_dim)``.

        Returns:
            ``(features * beta, beta)``: ``(B, L, C)`` and the gates ``(B, C)``.
        """
        beta = self.gates(query, features, projected)  # (B, C)
        return features * beta[:, None], beta

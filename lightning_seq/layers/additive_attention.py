"""Additive (Bahdanau) attention: an MLP scores every key against the query.

.. math::
    e_{ij} = v^\\top \\tanh(W s_i + U h_j), \\quad
    a_{ij} = \\frac{\\exp e_{ij}}{\\sum_{k \\in \\mathcal{M}_i} \\exp e_{ik}} \\; (j \\in \\mathcal{M}_i,
    \\text{ else } 0), \\quad
    c_i = \\sum_j a_{ij} h_j

(Bahdanau, Cho and Bengio, 2015) with the query ``s_i`` (a decoder state), the keys ``h_j`` (encoder
outputs, also the values) and ``M_i`` the positions a query may attend to (the real source tokens).
The key projection ``U h_j`` does not depend on the query, so a decoder computes it once per source
sentence (:meth:`AdditiveAttention.project_keys`) and passes it to every step.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError


class AdditiveAttention(nn.Module):
    """Additive attention over a sequence of keys, with a key padding mask.

    Args:
        query_dim: Width of a query ``s_i``.
        key_dim: Width of a key ``h_j`` (and of the returned context).
        attn_dim: Width of the hidden layer of the scoring MLP (rows of ``W`` and ``U``).

    Parameters: ``query_proj.weight`` (``W``, ``(attn_dim, query_dim)``), ``key_proj.weight``
    (``U``, ``(attn_dim, key_dim)``) and ``score.weight`` (``v^T``, ``(1, attn_dim)``), no biases.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        for field, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"AdditiveAttention: {field}={value!r} is invalid; expected a positive integer."
                )
        self.query_dim, self.key_dim, self.attn_dim = query_dim, key_dim, attn_dim
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)  # U
        self.score = nn.Linear(attn_dim, 1, bias=False)  # v^T

    def extra_repr(self) -> str:
        return f"query_dim={self.query_dim}, key_dim={self.key_dim}, attn_dim={self.attn_dim}"

    def project_keys(self, keys: Tensor) -> Tensor:
        """``U h_j`` for every key: ``(B, S, key_dim) -> (B, S, attn_dim)``; compute once, reuse per step."""
        return self.key_proj(keys)

    def forward(
        self,
        query: Tensor,
        keys: Tensor,
        key_mask: Tensor | None = None,
        projected_keys: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Attend from one query per row (``(B, query_dim)``) or several (``(B, T, query_dim)``).

        Args:
            query: Queries ``s``, ``(B, query_dim)`` or ``(B, T, query_dim)``.
            keys: Keys and values ``h``, ``(B, S, key_dim)``.
            key_mask: Boolean ``(B, S)``, True for keys that may be attended to (real tokens); None
                for all. Every row needs at least one True.
            projected_keys: ``project_keys(keys)`` computed beforehand, ``(B, S, attn_dim)``.

        Returns:
            ``(context, weights)``: ``c`` with the query's leading shape and ``key_dim`` features, and
            the attention weights ``a``, ``(B, S)`` or ``(B, T, S)``, zero at masked keys.
        """
        single = query.dim() == 2
        if single:
            query = query[:, None]  # (B, 1, query_dim)
        if projected_keys is None:
            projected_keys = self.project_keys(keys)
        hidden = torch.tanh(self.query_proj(query)[:, :, None] + projected_keys[:, None])  # (B, T, S, A)
        scores = self.score(hidden).squeeze(-1)  # (B, T, S)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None], float("-inf"))
        weights = scores.softmax(dim=-1)  # (B, T, S)
        context = weights @ keys  # (B, T, key_dim)
        if single:
            return context[:, 0], weights[:, 0]  # (B, key_dim), (B, S)
        return context, weights

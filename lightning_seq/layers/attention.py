"""Multi-head scaled dot-product attention, fused and from the textbook equation.

.. math::
    \\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\big(s\\, Q K^\\top + A + M\\big)\\, V

with scale ``s`` (``1/sqrt(head_dim)`` unless given), an additive float bias ``A`` (relative
position bias, ALiBi, ...) and ``M`` equal to ``0`` where a query may attend to a key and
``-inf`` where it may not (boolean ``mask`` with True = may attend, and/or ``causal``).

:func:`attention_fused` runs ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels); :func:`attention_reference` computes the same thing step by step. Both take
``q (B, heads, Tq, head_dim)``, ``k (B, heads, Tk, head_dim)``, ``v (B, heads, Tk, head_dim)``.

Causal masking is aligned bottom-right: query ``i`` of ``Tq`` may attend to keys
``j <= i + Tk - Tq``, so the last ``Tq`` positions of a ``Tk``-long sequence are causal among
themselves and see the whole prefix (what incremental decoding with a key/value cache needs).
With ``Tq == Tk`` this is the usual lower-triangular mask.

A row in which every key is masked out has no defined softmax; do not build such masks.

Incremental decoding: :class:`MultiHeadAttention` returns the keys and values it attended to
(``use_cache=True``) and takes them back as ``past_kv`` on the next call, so each new token
costs one projection of that token and one attention row instead of a whole recomputation.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError

Impl: TypeAlias = Literal["fused", "explicit"]
KV: TypeAlias = tuple[Tensor, Tensor]
"""Keys and values, each ``(B, heads, T, head_dim)``: a self-attention cache or a projected memory."""
_IMPLS: tuple[str, ...] = ("fused", "explicit")


def causal_mask(tq: int, tk: int, device: torch.device | None = None) -> Tensor:
    """Boolean ``(Tq, Tk)`` mask, True where query ``i`` may attend to key ``j <= i + Tk - Tq``."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def _allowed(mask: Tensor | None, causal: bool, tq: int, tk: int, device: torch.device) -> Tensor | None:
    """Combine the boolean mask and the causal constraint (True = may attend), or None for neither."""
    if not causal:
        return mask
    tri = causal_mask(tq, tk, device)  # (Tq, Tk)
    return tri if mask is None else mask & tri


def attention_fused(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention through ``F.scaled_dot_product_attention``.

    Args:
        q: Queries, ``(B, heads, Tq, head_dim)``.
        k: Keys, ``(B, heads, Tk, head_dim)``.
        v: Values, ``(B, heads, Tk, head_dim)``.
        mask: Boolean, broadcastable to ``(B, heads, Tq, Tk)``; True = may attend.
        bias: Additive float bias broadcastable to ``(B, heads, Tq, Tk)``.
        causal: Also forbid keys after the query (bottom-right aligned, see the module docstring).
        scale: Factor on ``Q K^T``; None means ``1/sqrt(head_dim)``.
        dropout_p: Dropout on the attention weights (pass 0 in evaluation).

    Returns:
        The attended values, ``(B, heads, Tq, head_dim)``.
    """
    tq, tk = q.shape[-2], k.shape[-2]
    fast_causal = causal and mask is None and bias is None and tq == tk
    allowed = None if fast_causal else _allowed(mask, causal, tq, tk, q.device)
    attn_mask = allowed
    if bias is not None:
        bias = bias.to(q.dtype)
        attn_mask = bias if allowed is None else torch.where(allowed, bias, float("-inf"))
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=fast_causal, scale=scale
    )


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """The same attention as :func:`attention_fused`, one equation at a time.

    .. math::
        S = s\\, Q K^\\top + A, \\quad S_{ij} = -\\infty \\text{ where masked}, \\quad
        P = \\mathrm{dropout}(\\mathrm{softmax}_j(S)), \\quad O = P V

    Args and returns as in :func:`attention_fused`.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, heads, Tq, Tk)
    if bias is not None:
        scores = scores + bias
    allowed = _allowed(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.softmax(dim=-1)  # (B, heads, Tq, Tk)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (B, heads, Tq, head_dim)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al., 2017), self- or cross-attention.

    .. math::
        \\mathrm{MHA}(x, c) = [\\mathrm{head}_1; \\dots; \\mathrm{head}_h]\\, W^O, \\quad
        \\mathrm{head}_i = \\mathrm{Attention}(x W^Q_i, c W^K_i, c W^V_i)

    with ``c = x`` for self-attention. Queries, keys and values have separate projections, so
    the context may come from another sequence of another width (``kdim``).

    Args:
        dim: Model width of the queries and the output; a multiple of ``heads``.
        heads: Number of heads; ``head_dim = dim // heads``.
        dropout: Dropout on the attention weights, in training only.
        bias: Use biases in the four projections.
        scale: Factor on ``Q K^T``; None means ``1/sqrt(head_dim)``.
        kdim: Width of the context (keys and values); None means ``dim``.
        impl: ``"fused"`` (:func:`attention_fused`, the default) or ``"explicit"``
            (:func:`attention_reference`); same parameters, can be changed after construction.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        scale: float | None = None,
        kdim: int | None = None,
        impl: Impl = "fused",
    ) -> None:
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise InputError(
                f"MultiHeadAttention: dim={dim} is not divisible by heads={heads}; "
                "choose a dim that is a multiple of heads."
            )
        kdim = dim if kdim is None else kdim
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.dropout = float(dropout)
        self.scale = self.head_dim**-0.5 if scale is None else float(scale)
        self.impl = impl
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(kdim, dim, bias=bias)
        self.v_proj = nn.Linear(kdim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    @property
    def impl(self) -> str:
        """``"fused"`` or ``"explicit"``; may be reassigned at any time."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in _IMPLS:
            raise InputError(
                f"MultiHeadAttention: impl={value!r} is not supported; expected one of {', '.join(_IMPLS)}."
            )
        self._impl = value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, scale={self.scale:.4g}, impl={self.impl!r}"

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def _merge_heads(self, x: Tensor) -> Tensor:
        b, _, t, _ = x.shape
        return x.transpose(1, 2).reshape(b, t, self.dim)  # (B, T, dim)

    def project_kv(self, context: Tensor) -> KV:
        """Keys and values of ``context (B, Tk, kdim)``, each ``(B, heads, Tk, head_dim)``.

        For cross-attention over a fixed memory: project it once and pass the result as ``kv``.
        """
        return self._split_heads(self.k_proj(context)), self._split_heads(self.v_proj(context))

    def _project_self(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values of ``x`` in one matrix product (self-attention, ``kdim == dim``)."""
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])  # (3 dim, dim)
        bias = self.q_proj.bias
        if bias is not None:
            bias = torch.cat([bias, self.k_proj.bias, self.v_proj.bias])  # (3 dim,)
        b, t, _ = x.shape
        qkv = F.linear(x, weight, bias).view(b, t, 3, self.heads, self.head_dim)  # (B, T, 3, heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, heads, T, head_dim)
        return q, k, v

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        bias: Tensor | None = None,
        past_kv: KV | None = None,
        use_cache: bool = False,
        kv: KV | None = None,
    ) -> Tensor | tuple[Tensor, KV]:
        """Attend from ``x`` to ``context`` (or to ``x`` itself).

        Args:
            x: Queries, ``(B, Tq, dim)``.
            context: Keys and values, ``(B, Tk, kdim)``; None for self-attention.
            mask: Boolean, broadcastable to ``(B, heads, Tq, Tk)``; True = may attend. With
                ``past_kv``, ``Tk`` counts the past keys too.
            causal: Forbid attending to later positions (bottom-right aligned, so the queries are
                the last ``Tq`` positions of the ``Tk`` keys).
            bias: Additive float bias broadcastable to ``(B, heads, Tq, Tk)``.
            past_kv: Keys and values of earlier positions (what a previous call returned with
                ``use_cache``), placed before the keys and values of this call.
            use_cache: Also return the full keys and values (past + new).
            kv: Precomputed keys and values (:meth:`project_kv` of a fixed memory); ``context``
                and ``past_kv`` are then ignored.

        Returns:
            ``(B, Tq, dim)``, or ``(out, (keys, values))`` with ``use_cache``.
        """
        if kv is not None:
            q = self._split_heads(self.q_proj(x))  # (B, heads, Tq, head_dim)
            k, v = kv  # (B, heads, Tk, head_dim) each
        elif context is None and self.k_proj.in_features == self.dim:
            q, k, v = self._project_self(x)  # (B, heads, T, head_dim) each
        else:
            q = self._split_heads(self.q_proj(x))  # (B, heads, Tq, head_dim)
            k, v = self.project_kv(x if context is None else context)  # (B, heads, Tk, head_dim) each
        if kv is None and past_kv is not None:
            k = torch.cat([past_kv[0], k], dim=2)  # (B, heads, Tpast + T, head_dim)
            v = torch.cat([past_kv[1], v], dim=2)
        if causal and x.shape[1] == 1:
            causal = False  # one query at the end of the sequence sees every key
        attend = attention_fused if self.impl == "fused" else attention_reference
        dropout_p = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask=mask, bias=bias, causal=causal, scale=self.scale, dropout_p=dropout_p)
        out = self.out_proj(self._merge_heads(out))  # (B, Tq, dim)
        return (out, (k, v)) if use_cache else out

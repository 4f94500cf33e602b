"""Linear attention (Katharopoulos et al., 2020): softmax replaced by a kernel feature map.

.. math::
    O_i = \\frac{\\phi(q_i)^\\top \\sum_{j} \\phi(k_j)\\, v_j^\\top}
               {\\phi(q_i)^\\top \\sum_{j} \\phi(k_j) + \\epsilon},
    \\qquad \\phi(x) = \\mathrm{elu}(x) + 1

with the sums over every key (non-causal) or over ``j <= i`` (causal). Computing
``\\phi(K)^\\top V`` first costs ``O(N d^2)`` instead of the ``O(N^2 d)`` of ``(\\phi(Q)\\phi(K)^\\top) V``.

Causal form, chunkwise: the sequence is cut into chunks of ``C`` positions; inside a chunk the
``C x C`` kernel matrix is masked lower-triangular (quadratic, but only ``C`` wide), and across
chunks the running state

.. math::
    S = \\sum_j \\phi(k_j)\\, v_j^\\top \\in \\mathbb{R}^{d \\times d_v}, \\qquad
    z = \\sum_j \\phi(k_j) \\in \\mathbb{R}^d

is prefix-summed over chunk boundaries only, so time is ``O(N C d + N d^2)`` and memory
``O(N d + (N / C) d^2)``, never one ``d x d_v`` matrix per position. The same ``(S, z)`` is the
recurrent state: decoding one token adds ``\\phi(k_t) v_t^\\top`` to ``S`` and ``\\phi(k_t)`` to
``z`` (``O(1)`` per token, whatever the length so far).

:func:`linear_attention_reference` builds the explicit ``N x N`` kernel matrix; tests prove the
two agree.
"""

from __future__ import annotations

from typing import TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError

LinearState: TypeAlias = tuple[Tensor, Tensor]
"""``(S, z)``: ``S = sum_j phi(k_j) v_j^T`` ``(B, heads, d, d_v)``; ``z = sum_j phi(k_j)`` ``(B, heads, d)``.
"""

CHUNK = 64


def elu_feature_map(x: Tensor) -> Tensor:
    """``phi(x) = elu(x) + 1``: ``x + 1`` for ``x > 0``, ``exp(x)`` otherwise; positive everywhere.

    Computed as ``exp(x)`` on the negative side rather than ``elu(x) + 1``, which is the same number
    but rounds to 0 in float32 below ``x = -17`` (and a zero normaliser would leave only ``eps``).
    """
    return torch.where(x > 0, x + 1.0, torch.exp(x.clamp(max=0.0)))


def _key_weights(key_mask: Tensor | None, k: Tensor) -> Tensor | None:
    """Key mask as a float ``(B, heads or 1, N, 1)`` multiplier of ``phi(K)``, or None.

    ``key_mask`` is boolean, True = real key, shaped ``(B, N)`` or broadcastable like
    ``(B, 1, 1, N)`` (only its last ``N`` entries are used, so a mask covering past keys works too).
    """
    if key_mask is None:
        return None
    n = k.shape[-2]
    if key_mask.dim() == 2:
        key_mask = key_mask[:, None, None, :]  # (B, 1, 1, Tk)
    if key_mask.dim() != 4 or key_mask.shape[-2] != 1:
        raise InputError(
            f"linear attention: mask of shape {tuple(key_mask.shape)} is not a key mask; expected "
            "(B, Tk) or (B, 1, 1, Tk) with True = real key (linear attention cannot take per-query masks)."
        )
    return key_mask[..., -n:].transpose(-2, -1).to(k.dtype)  # (B, 1, N, 1)


def _empty_state(k: Tensor, v: Tensor) -> LinearState:
    b, h, _, d = k.shape
    return k.new_zeros(b, h, d, v.shape[-1]), k.new_zeros(b, h, d)


def _noncausal(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, state: LinearState, eps: float
) -> tuple[Tensor, LinearState]:
    s = state[0] + phi_k.transpose(-2, -1) @ v  # (B, heads, d, d_v)
    z = state[1] + phi_k.sum(dim=-2)  # (B, heads, d)
    num = phi_q @ s  # (B, heads, Nq, d_v)
    den = (phi_q @ z.unsqueeze(-1)) + eps  # (B, heads, Nq, 1)
    return num / den, (s, z)


def _causal_chunked(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, state: LinearState, eps: float, chunk: int
) -> tuple[Tensor, LinearState]:
    b, h, n, d = phi_q.shape
    dv = v.shape[-1]
    c = min(chunk, n)
    pad = -n % c
    if pad:  # zero keys/values add nothing to any sum; padded queries are cut off at the end
        phi_q, phi_k, v = (F.pad(t, (0, 0, 0, pad)) for t in (phi_q, phi_k, v))
    m = (n + pad) // c
    qc = phi_q.view(b, h, m, c, d)  # (B, heads, chunks, C, d)
    kc = phi_k.view(b, h, m, c, d)  # (B, heads, chunks, C, d)
    vc = v.view(b, h, m, c, dv)  # (B, heads, chunks, C, d_v)
    # within a chunk: the explicit causal kernel matrix
    tri = torch.ones(c, c, dtype=torch.bool, device=v.device).tril()
    a = (qc @ kc.transpose(-2, -1)).masked_fill(~tri, 0.0)  # (B, heads, chunks, C, C)
    num = a @ vc  # (B, heads, chunks, C, d_v)
    den = a.sum(dim=-1, keepdim=True)  # (B, heads, chunks, C, 1)
    # across chunks: states summed over all earlier chunks (exclusive prefix sum) plus the past
    s_chunk = kc.transpose(-2, -1) @ vc  # (B, heads, chunks, d, d_v)
    z_chunk = kc.sum(dim=-2)  # (B, heads, chunks, d)
    s_incl = s_chunk.cumsum(dim=2) + state[0].unsqueeze(2)  # (B, heads, chunks, d, d_v)
    z_incl = z_chunk.cumsum(dim=2) + state[1].unsqueeze(2)  # (B, heads, chunks, d)
    s_prev, z_prev = s_incl - s_chunk, z_incl - z_chunk
    num = num + qc @ s_prev  # (B, heads, chunks, C, d_v)
    den = den + qc @ z_prev.unsqueeze(-1) + eps  # (B, heads, chunks, C, 1)
    out = (num / den).view(b, h, m * c, dv)[:, :, :n]  # (B, heads, N, d_v)
    return out, (s_incl[:, :, -1], z_incl[:, :, -1])


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    key_mask: Tensor | None = None,
    state: LinearState | None = None,
    eps: float = 1e-6,
    chunk: int = CHUNK,
) -> tuple[Tensor, LinearState]:
    """Linear attention with the ``elu + 1`` feature map, in ``O(N)`` time and memory.

    Args:
        q: Queries, ``(B, heads, N, d)``.
        k: Keys, ``(B, heads, N, d)`` (the same ``N``: self-attention; for non-causal attention
            the keys may have their own length).
        v: Values, ``(B, heads, N, d_v)``.
        causal: Query ``i`` sees keys ``j <= i`` only (and everything in ``state``).
        key_mask: Boolean, True = real key: ``(B, N)`` or broadcastable like ``(B, 1, 1, N)``;
            masked keys add nothing to either sum.
        state: ``(S, z)`` of earlier positions (what a previous call returned), or None for empty.
        eps: Added to the normaliser.
        chunk: Chunk length ``C`` of the causal form.

    Returns:
        ``(out, state)``: ``out`` ``(B, heads, N, d_v)`` and the state after the last key.
    """
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    weights = _key_weights(key_mask, k)
    if weights is not None:
        phi_k, v = phi_k * weights, v * weights  # (B, heads, N, d), (B, heads, N, d_v)
    state = _empty_state(k, v) if state is None else state
    if causal:
        return _causal_chunked(phi_q, phi_k, v, state, eps, chunk)
    return _noncausal(phi_q, phi_k, v, state, eps)


def linear_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, key_mask: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """The same attention as :func:`linear_attention`, from the explicit ``N x N`` kernel matrix.

    .. math::
        A_{ij} = \\phi(q_i)^\\top \\phi(k_j)\\, [j \\le i]\\, [k_j \\text{ real}], \\qquad
        O_i = \\frac{\\sum_j A_{ij} v_j}{\\sum_j A_{ij} + \\epsilon}

    Args and returns (the output only) as in :func:`linear_attention`, without a state.
    """
    a = elu_feature_map(q) @ elu_feature_map(k).transpose(-2, -1)  # (B, heads, Nq, Nk)
    if causal:
        a = a.masked_fill(~torch.ones(a.shape[-2:], dtype=torch.bool, device=a.device).tril(), 0.0)
    weights = _key_weights(key_mask, k)
    if weights is not None:
        a = a * weights.transpose(-2, -1)  # (B, heads, Nq, Nk)
    return (a @ v) / (a.sum(dim=-1, keepdim=True) + eps)  # (B, heads, Nq, d_v)


class LinearAttention(nn.Module):
    """Multi-head linear attention: the projections of :class:`MultiHeadAttention`, the kernel of
    :func:`linear_attention`.

    .. math::
        \\mathrm{LinMHA}(x, c) = [\\mathrm{head}_1; \\dots; \\mathrm{head}_h]\\, W^O, \\quad
        \\mathrm{head}_i = \\mathrm{LinAttn}(x W^Q_i, c W^K_i, c W^V_i)

    Called like :class:`MultiHeadAttention` so that a Transformer block can hold either; the
    cache (``past_kv`` / ``use_cache``) is the recurrent state ``(S, z)``, so decoding one token
    costs ``O(1)`` whatever the length so far.

    Args:
        dim: Model width; a multiple of ``heads``.
        heads: Number of heads.
        dropout: Accepted for the same constructor as :class:`MultiHeadAttention`; there is no
            attention matrix to drop from, so it is unused.
        bias: Use biases in the four projections.
        kdim: Width of the context (keys and values); None means ``dim``.
        eps: Added to the normaliser.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if heads < 1 or dim % heads != 0:
            raise InputError(
                f"LinearAttention: dim={dim} is not divisible by heads={heads}; "
                "choose a dim that is a multiple of heads."
            )
        kdim = dim if kdim is None else kdim
        self.dim, self.heads, self.head_dim, self.eps = dim, heads, dim // heads, eps
        self.dropout = float(dropout)
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.k_proj = nn.Linear(kdim, dim, bias=bias)
        self.v_proj = nn.Linear(kdim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, feature_map=elu+1"

    def _split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of ``context (B, Tk, kdim)``, each ``(B, heads, Tk, head_dim)``."""
        return self._split_heads(self.k_proj(context)), self._split_heads(self.v_proj(context))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        bias: Tensor | None = None,
        past_kv: LinearState | None = None,
        use_cache: bool = False,
        kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor | tuple[Tensor, LinearState]:
        """Attend from ``x`` to ``context`` (or to ``x`` itself).

        Args:
            x: Queries, ``(B, Tq, dim)``.
            context: Keys and values, ``(B, Tk, kdim)``; None for self-attention.
            mask: Key mask, True = real key, broadcastable like ``(B, 1, 1, Tk)`` (its last ``Tk``
                entries are used, so it may also cover the keys summed in ``past_kv``).
            causal: Query ``i`` sees keys ``j <= i`` only (and everything in ``past_kv``).
            bias: Not supported (a kernel has no score matrix to add it to); must be None.
            past_kv: Recurrent state ``(S, z)`` of earlier positions.
            use_cache: Also return the state after the last key.
            kv: Precomputed keys and values (:meth:`project_kv`); ``context`` is then ignored.

        Returns:
            ``(B, Tq, dim)``, or ``(out, (S, z))`` with ``use_cache``.
        """
        if bias is not None:
            raise InputError("LinearAttention: an additive attention bias is not supported; pass bias=None.")
        q = self._split_heads(self.q_proj(x))  # (B, heads, Tq, head_dim)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        out, state = linear_attention(q, k, v, causal=causal, key_mask=mask, state=past_kv, eps=self.eps)
        b, _, t, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, t, self.dim))  # (B, Tq, dim)
        return (out, state) if use_cache else out

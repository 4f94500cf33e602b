"""Transformer pieces: position-wise feed-forward, stochastic depth, the block and the stacks.

The stacks (:class:`TransformerEncoder`, :class:`TransformerDecoder`,
:class:`TransformerEncoderDecoder`) take a key padding mask ``key_mask (B, Tk)``, True = real
token, and hand ``key_mask[:, None, None, :]`` to attention. For incremental decoding they take
and return a cache: one dict per block, ``{"self": keys/values or linear state, "cross": memory
keys/values}``, every tensor batch first.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.attention import MultiHeadAttention
from lightning_seq.layers.linear_attention import LinearAttention

AttentionKind: TypeAlias = Literal["softmax", "linear"]
_KINDS: tuple[str, ...] = ("softmax", "linear")
BlockCache: TypeAlias = dict
"""``{"self": KV | LinearState, "cross": KV}`` (either key may be missing)."""


class FeedForward(nn.Module):
    """Position-wise feed-forward network.

    .. math:: \\mathrm{FFN}(x) = \\mathrm{dropout}(W_2\\, \\mathrm{dropout}(\\phi(W_1 x + b_1)) + b_2)

    Args:
        dim: Input and output width.
        hidden: Inner width (usually ``4 * dim``).
        dropout: Dropout after the activation and after the output projection.
        activation: The nonlinearity ``phi``, a module class built with no arguments.
        bias: Use the biases ``b_1``, ``b_2``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        dropout: float = 0.0,
        activation: type[nn.Module] = nn.GELU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden, bias=bias),
            activation(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim, bias=bias),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., dim) -> (..., dim)``."""
        return self.net(x)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop a whole residual branch per sample.

    .. math:: \\mathrm{DropPath}(x)_b = \\frac{m_b}{1 - p}\\, x_b, \\quad m_b \\sim \\mathrm{Bernoulli}(1 - p)

    in training, so that the expectation is ``x``; the identity in evaluation.

    Args:
        p: Probability of dropping the branch of a sample.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InputError(f"DropPath: p={p!r} is invalid; expected a probability in [0, 1).")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...) -> (B, ...)``, each sample kept (and rescaled) or zeroed as a whole."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, ..., 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates growing linearly from 0 (first block) to ``max_rate`` (last block)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class TransformerBlock(nn.Module):
    """Transformer block: self-attention, optional cross-attention, position-wise FFN.

    Pre-norm (``norm_first=True``, as in ViT and GPT-2):

    .. math::
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(\\mathrm{LN}_1(x)))) \\\\
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(\\mathrm{LN}_c(x), m)))
            \\quad \\text{(with cross-attention to the memory } m) \\\\
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{FFN}(\\mathrm{LN}_2(x)))

    Post-norm (``norm_first=False``, "Add & Norm" of Vaswani et al., 2017):

    .. math::
        x &\\leftarrow \\mathrm{LN}_1(x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(x)))) \\\\
        x &\\leftarrow \\mathrm{LN}_c(x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(x, m)))) \\\\
        x &\\leftarrow \\mathrm{LN}_2(x + \\mathrm{DropPath}(\\mathrm{FFN}(x)))

    Args:
        dim: Model width.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim``.
        dropout: Dropout on the attention outputs and inside the FFN.
        attn_dropout: Dropout on the attention weights (softmax attention only).
        drop_path: Stochastic-depth probability of every residual branch.
        norm_first: Pre-norm (True) or post-norm (False).
        attention: Self-attention kind, ``"softmax"`` (:class:`MultiHeadAttention`) or ``"linear"``
            (:class:`~lightning_seq.layers.linear_attention.LinearAttention`). Cross-attention is
            always softmax attention (the memory is fixed, so its cost does not grow with decoding).
        cross_attention: Add the cross-attention sub-layer (a decoder block).
        bias: Biases in the projections, the FFN and the layer norms.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        cross_attention: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if attention not in _KINDS:
            raise InputError(
                f"TransformerBlock: attention={attention!r} is not supported; expected one of "
                f"{', '.join(_KINDS)}."
            )
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        attn_cls = MultiHeadAttention if attention == "softmax" else LinearAttention
        self.attn = attn_cls(dim, heads, dropout=attn_dropout, bias=bias)
        self.attn_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout=dropout, bias=bias)
        self.drop_path = DropPath(drop_path)
        self.cross_attention = cross_attention
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim, bias=bias)
            self.cross_attn = MultiHeadAttention(dim, heads, dropout=attn_dropout, bias=bias)

    def _residual(self, x: Tensor, branch, norm: nn.Module) -> Tensor:
        """``x + branch(norm(x))`` (pre-norm) or ``norm(x + branch(x))`` (post-norm)."""
        if self.norm_first:
            return x + self.drop_path(branch(norm(x)))
        return norm(x + self.drop_path(branch(x)))

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        bias: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: BlockCache | None = None,
        use_cache: bool = False,
    ) -> Tensor | tuple[Tensor, BlockCache]:
        """Apply the block.

        Args:
            x: Tokens, ``(B, T, dim)``.
            mask: Boolean self-attention mask broadcastable to ``(B, heads, T, Tk)`` (``Tk`` counts
                the cached keys too); True = may attend. Linear attention takes key masks only.
            causal: Causal self-attention (bottom-right aligned: ``x`` follows the cached positions).
            bias: Additive self-attention bias broadcastable to ``(B, heads, T, Tk)`` (softmax only).
            memory: Encoder output ``(B, S, dim)`` for cross-attention; may be None when the cache
                holds its keys and values.
            memory_mask: Boolean cross-attention mask broadcastable to ``(B, heads, T, S)``.
            cache: ``{"self": ..., "cross": ...}`` from the previous call, or None.
            use_cache: Also return the updated cache.

        Returns:
            ``(B, T, dim)``, or ``(out, cache)`` with ``use_cache``.
        """
        cache = cache or {}
        new: BlockCache = {}

        def self_attend(h: Tensor) -> Tensor:
            past = cache.get("self")
            out = self.attn(h, mask=mask, causal=causal, bias=bias, past_kv=past, use_cache=use_cache)
            if use_cache:
                out, new["self"] = out
            return self.attn_drop(out)

        x = self._residual(x, self_attend, self.norm1)
        if self.cross_attention:
            kv = cache.get("cross")
            if kv is None:
                if memory is None:
                    raise InputError("TransformerBlock: cross-attention needs a memory (or its cached keys).")
                kv = self.cross_attn.project_kv(memory)  # (B, heads, S, head_dim) each
            new["cross"] = kv

            def cross_attend(h: Tensor) -> Tensor:
                return self.attn_drop(self.cross_attn(h, mask=memory_mask, kv=kv))

            x = self._residual(x, cross_attend, self.norm_cross)
        x = self._residual(x, self.ffn, self.norm2)
        return (x, new) if use_cache else x


def _key_mask(key_mask: Tensor | None) -> Tensor | None:
    """``(B, Tk)`` key padding mask -> ``(B, 1, 1, Tk)`` attention mask (True = may attend)."""
    return None if key_mask is None else key_mask[:, None, None, :]


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerBlock` s, with a final layer norm when pre-norm.

    .. math:: h_\\ell = \\mathrm{Block}_\\ell(h_{\\ell-1}), \\quad y = \\mathrm{LN}(h_L) \\ \\text{(pre-norm)}

    With ``causal=True`` it is a decoder-only (GPT) stack.

    Args:
        dim: Model width.
        depth: Number of blocks.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim``.
        dropout: Dropout on the attention outputs and inside the FFN.
        attn_dropout: Dropout on the attention weights.
        drop_path: Stochastic depth of the last block; it grows linearly from 0 at the first.
        norm_first: Pre-norm blocks (and a final layer norm) or post-norm blocks.
        attention: ``"softmax"`` or ``"linear"`` self-attention.
        bias: Biases in projections, FFNs and layer norms.
    """

    cross_attention = False

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        bias: bool = True,
    ) -> None:
        super().__init__()
        block_args = dict(
            mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, norm_first=norm_first,
            attention=attention, cross_attention=self.cross_attention, bias=bias,
        )  # fmt: skip
        rates = drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, drop_path=r, **block_args) for r in rates)
        self.norm = nn.LayerNorm(dim, bias=bias) if norm_first else nn.Identity()

    def _run(
        self, x: Tensor, cache: list | None, use_cache: bool, **kwargs
    ) -> Tensor | tuple[Tensor, list[BlockCache]]:
        caches: list[BlockCache] = []
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache[i] if cache else None, use_cache=use_cache, **kwargs)
            if use_cache:
                x, layer_cache = x
                caches.append(layer_cache)
        x = self.norm(x)
        return (x, caches) if use_cache else x

    def forward(
        self,
        x: Tensor,
        key_mask: Tensor | None = None,
        causal: bool = False,
        cache: list[BlockCache] | None = None,
        use_cache: bool = False,
    ) -> Tensor | tuple[Tensor, list[BlockCache]]:
        """Encode ``x``.

        Args:
            x: ``(B, T, dim)``.
            key_mask: ``(B, Tk)``, True = real token; with a cache, ``Tk`` = cached + ``T``.
            causal: Causal self-attention (``x`` continues the cached positions).
            cache: One dict per block from the previous call; None or ``[]`` for none.
            use_cache: Also return the updated cache.

        Returns:
            ``(B, T, dim)``, or ``(out, cache)`` with ``use_cache``.
        """
        return self._run(x, cache, use_cache, mask=_key_mask(key_mask), causal=causal)


class TransformerDecoder(TransformerEncoder):
    """A stack of decoder blocks: causal self-attention, cross-attention to a memory, FFN.

    .. math::
        h_\\ell = \\mathrm{Block}_\\ell(h_{\\ell-1}, m), \\quad y = \\mathrm{LN}(h_L) \\ \\text{(pre-norm)}

    Same constructor as :class:`TransformerEncoder`. The cache also holds each block's
    cross-attention keys and values, so the memory is projected once per decoding.
    """

    cross_attention = True

    def forward(  # type: ignore[override]
        self,
        x: Tensor,
        memory: Tensor | None,
        memory_key_mask: Tensor | None = None,
        cache: list[BlockCache] | None = None,
        use_cache: bool = False,
    ) -> Tensor | tuple[Tensor, list[BlockCache]]:
        """Decode ``x`` attending to ``memory``.

        Args:
            x: Target embeddings, ``(B, T, dim)``, continuing the cached positions.
            memory: Encoder output ``(B, S, dim)``; may be None when ``cache`` holds its keys/values.
            memory_key_mask: ``(B, S)``, True = real source token.
            cache: One dict per block from the previous call; None or ``[]`` for none.
            use_cache: Also return the updated cache.

        Returns:
            ``(B, T, dim)``, or ``(out, cache)`` with ``use_cache``.
        """
        return self._run(
            x, cache, use_cache, causal=True, memory=memory, memory_mask=_key_mask(memory_key_mask)
        )


class TransformerEncoderDecoder(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al., 2017) over embedded sequences.

    .. math:: m = \\mathrm{Encoder}(x_{src}), \\quad y = \\mathrm{Decoder}(x_{tgt}, m)

    Args:
        dim: Model width.
        encoder_depth: Encoder blocks.
        decoder_depth: Decoder blocks.
        heads: Attention heads.
        Others as in :class:`TransformerEncoder`, shared by both stacks.
    """

    def __init__(
        self,
        dim: int,
        encoder_depth: int,
        decoder_depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        bias: bool = True,
    ) -> None:
        super().__init__()
        shared = dict(
            mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout, drop_path=drop_path,
            norm_first=norm_first, attention=attention, bias=bias,
        )  # fmt: skip
        self.encoder = TransformerEncoder(dim, encoder_depth, heads, **shared)
        self.decoder = TransformerDecoder(dim, decoder_depth, heads, **shared)

    def forward(self, src: Tensor, tgt: Tensor, src_key_mask: Tensor | None = None) -> Tensor:
        """``src (B, S, dim)``, ``tgt (B, T, dim)`` embeddings, ``src_key_mask (B, S)`` -> ``(B, T, dim)``."""
        memory = self.encoder(src, key_mask=src_key_mask)  # (B, S, dim)
        return self.decoder(tgt, memory, memory_key_mask=src_key_mask)  # (B, T, dim)


def trunc_normal_(tensor: Tensor, std: float = 0.02) -> None:
    """Fill ``tensor`` from a normal distribution with ``std``, cut at 2 std (the ViT/Swin init)."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_linear_(root: nn.Module, std: float = 0.02) -> None:
    """Every ``nn.Linear`` under ``root``: truncated normal weights (``std``, cut at 2 std), zero biases."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

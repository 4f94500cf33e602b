"""Decoder-only Transformer language model (GPT).

Contract relied on by ``LanguageModel`` and ``decoding`` (shared with the RNN LM):
``net(tokens, state) -> (logits, state)`` with ``tokens`` ``(B, T)`` long, ``logits``
``(B, T, V)``. Here ``state`` is the cache of everything consumed so far,
``{"offset": int, "layers": [one cache dict per block]}`` (every tensor batch first: softmax
attention keeps keys and values ``(B, heads, t, head_dim)``, linear attention its recurrent state),
so generation feeds only the new token at each step. Train with ``carry_state`` False (window
mode): every batch starts from ``state=None``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.output import OutputLinear
from lightning_seq.layers.positions import LearnedPositions, SinusoidalPositions
from lightning_seq.layers.transformer import AttentionKind, TransformerEncoder
from lightning_seq.nets._presets import Presets

__all__ = ["TransformerLM"]

LMState = dict[str, Any]
"""``{"offset": int, "layers": list[dict]}``: positions consumed so far and the per-block caches."""


class TransformerLM(Presets, nn.Module):
    """Token and position embeddings, a causal Transformer stack and a tied output layer.

    .. math::
        h_0 = \\mathrm{dropout}(s\\, E[w_{\\le t}] + P), \\quad
        Y = \\mathrm{TransformerEncoder}_{\\text{causal}}(h_0), \\quad
        p(w_{t+1} \\mid w_{\\le t}) = \\mathrm{softmax}(Y_t E^\\top)

    The embedding scale is ``s = sqrt(dim)`` with sinusoidal positions (Vaswani et al., 2017: the
    unit-size sinusoids would otherwise drown embeddings of std 0.02) and ``s = 1`` with learned
    positions (GPT-2, both initialised alike). With ``tie_weights`` the output layer is the
    embedding matrix itself (logits ``= Y E^T``, Press & Wolf, 2017); otherwise a separate
    ``dim -> V`` matrix without bias. Initialisation follows GPT-2: every linear and embedding
    weight from ``N(0, 0.02^2)``, biases zero, and the projections that write into the residual
    stream (attention output, second FFN layer) from ``N(0, (0.02 / sqrt(2 * depth))^2)``.

    Args:
        vocab_size: Number of token ids, ``V``.
        dim: Model width.
        depth: Number of Transformer blocks.
        heads: Attention heads per block.
        mlp_ratio: FFN inner width as a multiple of ``dim`` (GELU activation).
        dropout: Dropout on the embeddings, attention weights, attention outputs and in the FFN.
        attention: ``"softmax"`` (fused scaled dot-product, KV cache) or ``"linear"``
            (``elu + 1`` kernel, ``O(N)``, recurrent state).
        positions: ``"sinusoidal"`` (fixed, any length) or ``"learned"`` (``max_len`` vectors).
        max_len: Longest sequence (context plus generated tokens) with learned positions.
        norm_first: Pre-norm blocks with a final layer norm (GPT-2) or post-norm blocks.
        tie_weights: Share the embedding matrix with the output layer.
        bias: Biases in the projections, FFNs and layer norms.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"dim": 32, "depth": 2, "heads": 2, "dropout": 0.0, "max_len": 256},
        "small": {"dim": 256, "depth": 4, "heads": 4, "dropout": 0.1, "max_len": 512},
        "gpt2-124M": {
            "dim": 768,
            "depth": 12,
            "heads": 12,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
            "positions": "learned",
            "max_len": 1024,
            "tie_weights": True,
            "bias": True,
        },
    }

    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attention: AttentionKind = "softmax",
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 1024,
        norm_first: bool = True,
        tie_weights: bool = True,
        bias: bool = True,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        for field, value in (
            ("vocab_size", vocab_size),
            ("dim", dim),
            ("depth", depth),
            ("max_len", max_len),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"TransformerLM: {field}={value!r} is invalid; expected a positive integer.")
        if positions not in ("sinusoidal", "learned"):
            raise InputError(
                f"TransformerLM: positions={positions!r} is not supported; expected sinusoidal or learned."
            )
        self.vocab_size, self.max_len, self.tie_weights = vocab_size, max_len, tie_weights
        self.embedding = nn.Embedding(vocab_size, dim)
        learned = positions == "learned"
        self.positions = LearnedPositions(max_len, dim) if learned else SinusoidalPositions(dim)
        self.embed_scale = 1.0 if learned else math.sqrt(dim)
        self.drop = nn.Dropout(dropout)
        self.transformer = TransformerEncoder(
            dim, depth, heads, mlp_ratio, dropout=dropout, attn_dropout=dropout, norm_first=norm_first,
            attention=attention, bias=bias,
        )  # fmt: skip
        self.head = OutputLinear(dim, vocab_size, bias=False)
        self._init_weights(depth)
        if tie_weights:
            self.head.weight = self.embedding.weight

    def _init_weights(self, depth: int) -> None:
        """GPT-2's initialisation (see the class docstring)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = 0.02 / math.sqrt(2 * depth)
        for block in self.transformer.blocks:
            nn.init.normal_(block.attn.out_proj.weight, std=residual_std)
            nn.init.normal_(block.ffn.net[3].weight, std=residual_std)

    def _check_length(self, offset: int, new: int) -> None:
        if isinstance(self.positions, LearnedPositions) and offset + new > self.max_len:
            raise InputError(
                f"TransformerLM: {offset + new} positions ({offset} cached + {new} new tokens) exceed "
                f"max_len={self.max_len} of the learned positions; keep the context (data block_size) "
                f"plus the generated tokens (max_new_tokens) within {self.max_len}, or build the net with "
                "a larger max_len or positions='sinusoidal'."
            )

    def forward(self, tokens: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState]:
        """Next-token logits for every position, continuing the cached ones.

        Args:
            tokens: Token ids, ``(B, T)``.
            state: What the previous call returned (the cache of earlier tokens), or None.

        Returns:
            ``(logits, state)``: logits ``(B, T, V)`` and the cache including ``tokens``.
        """
        if state and self.training and torch.is_grad_enabled():
            raise InputError(
                "TransformerLM: training with a carried state (stream mode) would grow the key/value cache "
                "without end; train in window mode: --data.init_args.mode=window (carry_state false)."
            )
        offset = state["offset"] if state else 0
        self._check_length(offset, tokens.shape[1])
        x = self.embedding(tokens)  # (B, T, dim)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        x = self.drop(self.positions(x, offset))  # (B, T, dim)
        layers = state["layers"] if state else None
        y, layers = self.transformer(x, causal=True, cache=layers, use_cache=True)  # (B, T, dim)
        return self.head(y), {"offset": offset + tokens.shape[1], "layers": layers}  # (B, T, V)

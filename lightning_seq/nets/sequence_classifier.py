"""Sequence classifiers (one label per text) and taggers (one label per token), Transformer or RNN.

Contract (shared by every net here; relied on by ``SequenceClassifier`` and ``SequenceTagger``):
the constructor takes ``vocab_size`` and ``num_classes`` (filled in from the data by the CLI), and
``net(tokens (B, T), key_mask (B, T)) -> logits``: ``(B, K)`` for a classifier, ``(B, T, K)`` for a
tagger. ``key_mask`` is True at real tokens and False at padding; batches are right-padded (real
tokens first), and padding never changes the logits of the real tokens or of the text.

The encoders keep the attribute names of the language models, so that a
:class:`~lightning_seq.modules.LanguageModel` checkpoint initialises them by name:
``embedding``, ``positions``, ``transformer`` as :class:`~lightning_seq.nets.TransformerLM`, and
``embedding``, ``rnn`` as :class:`~lightning_seq.nets.RNNLM`. The task heads are ``head`` (and the
Transformer's ``cls_token``), never found in a language model.

Presets: ``nano`` (tests) and ``small`` have the shapes of the language models' presets of the same
name, so that such a language model initialises them; the Transformer nets add ``bert-base`` and
``bert-large``, the encoder shapes of BERT (Devlin et al., 2019: 12 layers of width 768 with 12
heads, 24 / 1024 / 16; FFN 4x, learned positions up to 512, post-norm).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal, TypeAlias

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.positions import LearnedPositions, SinusoidalPositions
from lightning_seq.layers.recurrent import Recurrent
from lightning_seq.layers.transformer import AttentionKind, TransformerEncoder, init_linear_, trunc_normal_
from lightning_seq.nets._presets import Presets

__all__ = [
    "MLPHead",
    "RNNClassifier",
    "RNNTagger",
    "TransformerClassifier",
    "TransformerTagger",
    "pool",
    "reverse_padded",
]

Pooling: TypeAlias = Literal["cls", "mean", "last", "max"]


# --------------------------------------------------------------------------------- helpers


def _mask_or_ones(tokens: Tensor, key_mask: Tensor | None) -> Tensor:
    return torch.ones_like(tokens, dtype=torch.bool) if key_mask is None else key_mask.bool()


def last_index(key_mask: Tensor) -> Tensor:
    """Position of the last real token of each row, ``(B,)`` (0 for a row without any)."""
    positions = torch.arange(1, key_mask.shape[1] + 1, device=key_mask.device)  # (T,)
    return (key_mask.long() * positions).argmax(dim=1)  # (B,)


def pool(h: Tensor, key_mask: Tensor, how: Literal["mean", "last", "max"]) -> Tensor:
    """One vector per sequence from the outputs at its real tokens (padding is left out).

    .. math::
        \\mathrm{mean} = \\frac{\\sum_t m_t h_t}{\\sum_t m_t}, \\quad
        \\mathrm{max}_d = \\max_{t: m_t} h_{t,d}, \\quad
        \\mathrm{last} = h_{\\max\\{t: m_t\\}}

    Args:
        h: Outputs, ``(B, T, D)``.
        key_mask: True at real tokens, ``(B, T)``.
        how: ``mean``, ``max`` or ``last``.

    Returns:
        ``(B, D)``; zeros for a row without real tokens (mean, max).
    """
    m = key_mask[..., None]  # (B, T, 1)
    if how == "mean":
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "max":
        out = h.masked_fill(~m, float("-inf")).amax(1)  # (B, D)
        return torch.where(m.any(1), out, torch.zeros_like(out))
    index = last_index(key_mask)[:, None, None].expand(-1, 1, h.shape[-1])  # (B, 1, D)
    return h.gather(1, index).squeeze(1)  # (B, D)


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse the first ``lengths[b]`` steps of each row, leaving the padding after them in place.

    Args:
        x: ``(B, T, D)``, right-padded.
        lengths: Real steps per row, ``(B,)``.

    Returns:
        ``(B, T, D)``; applying it twice gives ``x`` back.
    """
    t = torch.arange(x.shape[1], device=x.device)[None]  # (1, T)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, T)
    return x.gather(1, index[..., None].expand_as(x))


def _check(owner: str, choices: dict[str, tuple[object, tuple]]) -> None:
    for field, (value, allowed) in choices.items():
        if value not in allowed:
            raise InputError(
                f"{owner}: {field}={value!r} is not supported; expected one of "
                f"{', '.join(map(str, allowed))}."
            )


class MLPHead(nn.Sequential):
    """The task head, on the last axis: ``W_2\\, \\mathrm{dropout}(\\mathrm{GELU}(W_1 x + b_1)) + b_2``.

    Args:
        dim: Input width.
        num_classes: Output width ``K``.
        hidden: Inner width; None means ``dim``.
        dropout: Dropout before the output layer.
    """

    def __init__(self, dim: int, num_classes: int, hidden: int | None = None, dropout: float = 0.0) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise InputError(f"num_classes={num_classes!r} is invalid; expected a positive integer.")
        hidden = hidden or dim
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes)
        )


# --------------------------------------------------------------------------------- Transformer


class _TransformerEncoderNet(Presets, nn.Module):
    """Token embedding, positions and a stack of Transformer blocks, as in TransformerLM.

    .. math::
        x_t = \\mathrm{dropout}(E[w_t] + P_t), \\quad h = \\mathrm{TransformerEncoder}(x)
    """

    no_weight_decay = ("cls_token",)  # read by the optimizer set-up

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"dim": 32, "depth": 2, "heads": 2, "dropout": 0.0, "max_len": 256},
        "small": {"dim": 256, "depth": 4, "heads": 4, "dropout": 0.1, "max_len": 512},
        "bert-base": {
            "dim": 768, "depth": 12, "heads": 12, "positions": "learned", "max_len": 512,
            "norm_first": False, "dropout": 0.1,
        },
        "bert-large": {
            "dim": 1024, "depth": 24, "heads": 16, "positions": "learned", "max_len": 512,
            "norm_first": False, "dropout": 0.1,
        },
    }  # fmt: skip

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 512,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        bias: bool = True,
        causal: bool = False,
        head_hidden: int | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        _check(type(self).__name__, {"positions": (positions, ("sinusoidal", "learned"))})
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise InputError(f"{type(self).__name__}: vocab_size={vocab_size!r} is invalid.")
        self.vocab_size, self.num_classes = vocab_size, num_classes
        self.causal, self.max_len = causal, max_len
        self.embedding = nn.Embedding(vocab_size, dim)
        self.positions = (
            LearnedPositions(max_len, dim) if positions == "learned" else SinusoidalPositions(dim, max_len)
        )
        self.drop = nn.Dropout(dropout)
        self.transformer = TransformerEncoder(
            dim, depth, heads, mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout,
            norm_first=norm_first, attention=attention, bias=bias,
        )  # fmt: skip
        self.head = MLPHead(dim, num_classes, head_hidden, dropout)

    def _init_weights(self) -> None:
        """Truncated normal (std 0.02) for the embedding and linear weights; zero biases."""
        trunc_normal_(self.embedding.weight)
        init_linear_(self)

    def encode(self, tokens: Tensor, key_mask: Tensor, prefix: Tensor | None = None) -> Tensor:
        """The top-layer outputs.

        Args:
            tokens: ``(B, T)`` ids.
            key_mask: ``(B, T)``, True at real tokens.
            prefix: Extra input vectors ``(B, P, dim)`` placed before the tokens (the class token);
                positions count from the first token, as in the language model.

        Returns:
            ``(B, P + T, dim)``.
        """
        x = self.positions(self.embedding(tokens))  # (B, T, dim)
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # (B, P + T, dim)
            key_mask = torch.cat([key_mask.new_ones(prefix.shape[:2]), key_mask], dim=1)  # (B, P + T)
        return self.transformer(self.drop(x), key_mask=key_mask, causal=self.causal)


class TransformerClassifier(_TransformerEncoderNet):
    """Transformer encoder classifier: ``logits = MLP(pool(h))``.

    With ``pooling="cls"`` a learned class token ``c`` is placed before the tokens and its output is
    the summary (BERT's ``[CLS]``)::

        h = TransformerEncoder([c; x_1 .. x_T]),  logits = MLP(h_0)

    ``mean`` averages the outputs of the real tokens; ``last`` takes the last real token, the one
    that has seen the whole text in a causal (language-model-initialised) encoder.

    Args:
        vocab_size: Number of token ids.
        num_classes: Number of classes ``K``.
        dim: Model width.
        depth: Number of Transformer blocks.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim``.
        dropout: Dropout on the embeddings, in the blocks and in the head.
        attn_dropout: Dropout on the attention weights.
        positions: ``learned`` or ``sinusoidal`` position embeddings.
        max_len: Longest sequence the positions cover.
        norm_first: Pre-norm (True) or post-norm (False, BERT) blocks.
        attention: ``softmax`` or ``linear`` self-attention.
        bias: Biases in the projections, FFNs and layer norms of the blocks.
        causal: Causal self-attention, as in a language model whose weights the encoder starts from.
        pooling: ``cls``, ``mean`` or ``last`` (``cls`` needs ``causal=False``).
        head_hidden: Inner width of the MLP head; None means ``dim``.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 512,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        bias: bool = True,
        causal: bool = False,
        pooling: Literal["cls", "mean", "last"] = "cls",
        head_hidden: int | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__(
            vocab_size, num_classes, dim, depth, heads, mlp_ratio, dropout, attn_dropout, positions,
            max_len, norm_first, attention, bias, causal, head_hidden,
        )  # fmt: skip
        _check("TransformerClassifier", {"pooling": (pooling, ("cls", "mean", "last"))})
        if pooling == "cls" and causal:
            raise InputError(
                "TransformerClassifier: pooling='cls' with causal=True: a class token placed first sees "
                "only itself under causal attention. Fix: use pooling='last' (or 'mean') with causal=True."
            )
        self.pooling = pooling
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        if self.cls_token is not None:
            trunc_normal_(self.cls_token)
        self._init_weights()

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Class logits ``(B, K)`` of ``tokens (B, T)`` with ``key_mask (B, T)`` (None: no padding)."""
        key_mask = _mask_or_ones(tokens, key_mask)
        if self.cls_token is not None:
            cls = self.cls_token.expand(tokens.shape[0], -1, -1)  # (B, 1, dim)
            return self.head(self.encode(tokens, key_mask, prefix=cls)[:, 0])
        return self.head(pool(self.encode(tokens, key_mask), key_mask, self.pooling))


class TransformerTagger(_TransformerEncoderNet):
    """Transformer encoder tagger: ``logits_t = MLP(h_t)`` for every token.

    Args: as :class:`TransformerClassifier`, without ``pooling``; with ``causal=True`` a token's label
    depends on the tokens up to it only.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 512,
        norm_first: bool = True,
        attention: AttentionKind = "softmax",
        bias: bool = True,
        causal: bool = False,
        head_hidden: int | None = None,
        preset: str | None = None,
    ) -> None:
        super().__init__(
            vocab_size, num_classes, dim, depth, heads, mlp_ratio, dropout, attn_dropout, positions,
            max_len, norm_first, attention, bias, causal, head_hidden,
        )  # fmt: skip
        self._init_weights()

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Per-token logits ``(B, T, K)``; those at padding are meaningless."""
        return self.head(self.encode(tokens, _mask_or_ones(tokens, key_mask)))


# --------------------------------------------------------------------------------- RNN


class _RNNEncoderNet(Presets, nn.Module):
    """Embedding and a stack of recurrent layers, as in RNNLM; bidirectional adds a reverse stack.

    .. math::
        \\overrightarrow{h}_t = \\mathrm{Recurrent}(e_{\\le t}), \\quad
        \\overleftarrow{h}_t = \\mathrm{Recurrent}'(e_{\\ge t}), \\quad
        h_t = [\\overrightarrow{h}_t; \\overleftarrow{h}_t]

    The reverse stack reads each row's real tokens backwards (padding stays at the end), so it too
    is unaffected by padding. The forward stack ``rnn`` has RNNLM's names and shapes.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"cell": "lstm", "embed_dim": 16, "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
        "small": {"cell": "lstm", "embed_dim": 256, "hidden_size": 256, "num_layers": 2, "dropout": 0.2},
    }

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.1,
        head_hidden: int | None = None,
        impl: Literal["fused", "explicit"] = "fused",
        preset: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
            raise InputError(f"{type(self).__name__}: vocab_size={vocab_size!r} is invalid.")
        self.vocab_size, self.num_classes = vocab_size, num_classes
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)  # as RNNLM
        self.rnn = Recurrent(cell, embed_dim, hidden_size, num_layers, dropout=dropout, impl=impl)
        self.rnn_reverse = (
            Recurrent(cell, embed_dim, hidden_size, num_layers, dropout=dropout, impl=impl)
            if bidirectional
            else None
        )
        self.drop = nn.Dropout(dropout)
        self.out_dim = hidden_size * (2 if bidirectional else 1)
        self.head = MLPHead(self.out_dim, num_classes, head_hidden, dropout)

    def encode(self, tokens: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        """Forward outputs ``(B, T, H)`` and, when bidirectional, reverse outputs ``(B, T, H)``.

        The reverse outputs are in the original order: position ``t`` has read tokens ``t..len-1``.
        """
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        forward, _ = self.rnn(x)  # (B, T, H)
        if self.rnn_reverse is None:
            return forward, None
        lengths = key_mask.long().sum(1)  # (B,)
        backward, _ = self.rnn_reverse(reverse_padded(x, lengths))  # (B, T, H), reversed order
        return forward, reverse_padded(backward, lengths)


class RNNClassifier(_RNNEncoderNet):
    """RNN/LSTM/GRU classifier: ``logits = MLP(pool(h))``.

    ``last`` takes the forward state at the last real token (and, bidirectional, the reverse state
    at the first, which has read the whole text backwards); ``mean`` and ``max`` pool ``h_t`` over
    the real tokens.

    Args:
        vocab_size: Number of token ids.
        num_classes: Number of classes ``K``.
        cell: ``rnn`` (tanh), ``lstm`` or ``gru``.
        embed_dim: Embedding width.
        hidden_size: Recurrent state width (per direction).
        num_layers: Stacked recurrent layers (per direction).
        bidirectional: Add a stack that reads the text backwards.
        pooling: ``last``, ``mean`` or ``max``.
        dropout: Dropout on the embeddings, between recurrent layers and in the head.
        head_hidden: Inner width of the MLP head; None means the pooled width.
        impl: ``fused`` or ``explicit`` recurrent layers (same weights).
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        pooling: Literal["last", "mean", "max"] = "last",
        dropout: float = 0.1,
        head_hidden: int | None = None,
        impl: Literal["fused", "explicit"] = "fused",
        preset: str | None = None,
    ) -> None:
        _check("RNNClassifier", {"pooling": (pooling, ("last", "mean", "max"))})
        super().__init__(
            vocab_size, num_classes, cell, embed_dim, hidden_size, num_layers, bidirectional, dropout,
            head_hidden, impl,
        )  # fmt: skip
        self.pooling = pooling

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Class logits ``(B, K)`` of ``tokens (B, T)`` with ``key_mask (B, T)`` (None: no padding)."""
        key_mask = _mask_or_ones(tokens, key_mask)
        forward, backward = self.encode(tokens, key_mask)  # (B, T, H) each
        if self.pooling == "last":
            pooled = pool(forward, key_mask, "last")  # (B, H)
            if backward is not None:
                pooled = torch.cat([pooled, backward[:, 0]], dim=-1)  # (B, 2H)
        else:
            h = forward if backward is None else torch.cat([forward, backward], dim=-1)  # (B, T, D)
            pooled = pool(h, key_mask, self.pooling)  # (B, D)
        return self.head(self.drop(pooled))


class RNNTagger(_RNNEncoderNet):
    """RNN/LSTM/GRU tagger: ``logits_t = MLP(h_t)``; bidirectional lets a label see the whole text.

    Args: as :class:`RNNClassifier`, without ``pooling``.
    """

    def forward(self, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Per-token logits ``(B, T, K)``; those at padding are meaningless."""
        forward, backward = self.encode(tokens, _mask_or_ones(tokens, key_mask))  # (B, T, H) each
        h = forward if backward is None else torch.cat([forward, backward], dim=-1)  # (B, T, D)
        return self.head(self.drop(h))

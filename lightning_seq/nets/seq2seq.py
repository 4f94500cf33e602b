"""Sequence-to-sequence networks: the Transformer (Vaswani et al., 2017) and the RNN encoder-decoder
with additive attention (Bahdanau et al., 2015).

Contract relied on by ``Seq2Seq`` and ``decoding`` (the same for both nets):

- ``forward(src (B, S), tgt_in (B, T), src_mask=None) -> logits (B, T, V)``: teacher forcing, the
  logits of ``tgt_in`` shifted by one (the module feeds ``tgt[:, :-1]`` and scores ``tgt[:, 1:]``).
- ``encode(src, src_mask=None) -> state``: the source read once; ``state`` is a dict of batch-first
  tensors (the memory, its key mask, the decoder's starting state), so beam search expands and
  reorders it (:func:`~lightning_seq.decoding.repeat_state`, :func:`~lightning_seq.decoding.select_state`).
- ``decode(tokens (N, t), state) -> (logits (N, t, V), state)``: consume the next ``t`` target tokens.
  ``decode(tgt_in, encode(src))`` equals ``forward(src, tgt_in)``, in one call or token by token.

``src_mask`` is ``(B, S)`` boolean, True at real tokens; by default ``src != pad_id``. Sources are
right-padded.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError, check_positive
from lightning_seq.layers.additive_attention import AdditiveAttention
from lightning_seq.layers.output import OutputLinear
from lightning_seq.layers.positions import LearnedPositions, SinusoidalPositions
from lightning_seq.layers.recurrent import Recurrent, RecurrentState
from lightning_seq.layers.transformer import TransformerEncoderDecoder
from lightning_seq.nets._presets import Presets

__all__ = ["RNNSeq2Seq", "TransformerSeq2Seq"]

Seq2SeqState = dict[str, Any]
"""What ``encode`` returns and ``decode`` carries: tensors batch-first (ints passed through)."""


def _source_mask(src: Tensor, src_mask: Tensor | None, pad_id: int) -> Tensor:
    """``(B, S)`` True at real source tokens; a row with none keeps its first position (no NaN softmax)."""
    mask = src != pad_id if src_mask is None else src_mask.bool()
    first = torch.zeros_like(mask)
    first[:, 0] = True
    return mask | (first & ~mask.any(dim=1, keepdim=True))


# ------------------------------------------------------------------------------ RNN + attention


def reverse_within_length(lengths: Tensor, max_len: int) -> Tensor:
    """Index ``(B, S)`` that reverses each row's first ``lengths[b]`` positions and keeps its padding.

    ``x.gather(1, index)`` reads right-padded rows backwards (padding stays at the end), so a forward
    RNN over it is the backward direction over the real tokens; the same gather undoes it.
    """
    t = torch.arange(max_len, device=lengths.device)[None]  # (1, S)
    reversed_t = lengths[:, None] - 1 - t  # (B, S)
    return torch.where(t < lengths[:, None], reversed_t, t)


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, t]]`` for ``x (B, S, D)`` and ``index (B, S')``: ``(B, S', D)``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.size(-1)))


class RecurrentEncoder(nn.Module):
    """Stacked (bidirectional) recurrent layers over right-padded sequences.

    Layer ``k`` reads ``x^{(k)}``; with ``bidirectional`` it runs one RNN forwards and another over
    each sequence reversed within its length (so the backward direction starts at the last real
    token, never at padding); the next layer reads both directions' outputs, concatenated, after dropout.

    Args:
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``.
        input_size: Features per input step.
        hidden_size: Features per direction.
        num_layers: Stacked layers.
        bidirectional: Add the backward direction (outputs of width ``2 * hidden_size``).
        dropout: Dropout between layers, in training.
        impl: ``"fused"`` or ``"explicit"`` (see :class:`~lightning_seq.layers.Recurrent`).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        impl: Literal["fused", "explicit"] = "fused",
    ) -> None:
        super().__init__()
        directions = 2 if bidirectional else 1
        self.output_size = directions * hidden_size
        self.dropout = float(dropout)
        sizes = [input_size] + [self.output_size] * (num_layers - 1)
        self.forward_layers = nn.ModuleList(Recurrent(cell, n, hidden_size, impl=impl) for n in sizes)
        self.backward_layers = (
            nn.ModuleList(Recurrent(cell, n, hidden_size, impl=impl) for n in sizes)
            if bidirectional
            else None
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``x (B, S, input_size)`` whose rows hold ``lengths (B,)`` real steps.

        Returns:
            ``(outputs, summary)``: every position's top-layer output ``(B, S, output_size)`` (garbage
            at padding), and the sentence summary ``(B, output_size)``: the forward direction at the
            last real step and the backward direction at the first.
        """
        reverse = reverse_within_length(lengths, x.size(1))  # (B, S)
        for k, forward_rnn in enumerate(self.forward_layers):
            if k > 0:
                x = F.dropout(x, self.dropout, self.training)
            out, _ = forward_rnn(x)  # (B, S, H)
            if self.backward_layers is not None:
                back, _ = self.backward_layers[k](_gather_time(x, reverse))  # (B, S, H), reversed time
                out = torch.cat([out, _gather_time(back, reverse)], dim=-1)  # (B, S, 2H)
            x = out
        last = (lengths - 1).clamp(min=0)[:, None]  # (B, 1)
        summary = _gather_time(x, last)[:, 0]  # (B, D*H): forward half at the last real step
        if self.backward_layers is not None:
            half = x.size(-1) // 2
            summary = torch.cat([summary[:, :half], x[:, 0, half:]], dim=-1)  # backward half at step 0
        return x, summary


class RNNSeq2Seq(Presets, nn.Module):
    """RNN encoder-decoder with additive attention and input feeding.

    .. math::
        h_j &= [\\overrightarrow{h}_j; \\overleftarrow{h}_j] \\text{ (bidirectional encoder)}, \\quad
        s_0 = \\tanh(W_b [\\overrightarrow{h}_S; \\overleftarrow{h}_1]), \\quad c_0 = 0 \\\\
        s_i &= \\mathrm{RNN}([E y_{i-1}; c_{i-1}], s_{i-1}) \\text{ (input feeding)} \\\\
        c_i &= \\sum_j a_{ij} h_j, \\quad a_{ij} = \\mathrm{softmax}_j\\, v^\\top \\tanh(W s_i + U h_j) \\\\
        p(y_i \\mid y_{<i}, x) &= \\mathrm{softmax}(W_o\\, \\mathrm{dropout}(\\tanh(W_c [s_i; c_i])) + b_o)

    with :class:`~lightning_seq.layers.AdditiveAttention` for ``a_ij``. ``s_i`` is the top decoder layer's
    output (all layers start from ``s_0``; an LSTM's cells from zero).
    The decoder runs one step at a time in training too, since ``c_i`` feeds step ``i + 1``.

    Args:
        src_vocab_size: Source token ids (linked from the data).
        tgt_vocab_size: Target token ids, ``V`` (linked from the data).
        cell: ``"rnn"``, ``"lstm"`` or ``"gru"``, for encoder and decoder.
        embed_dim: Width of both embeddings.
        hidden_size: Width of each encoder direction and of the decoder state.
        num_layers: Layers of the encoder and of the decoder.
        bidirectional: Bidirectional encoder.
        dropout: On embeddings, between layers and before the output layer.
        attn_dim: Hidden width of the attention MLP; None means ``hidden_size``.
        tie_weights: Share the target embedding with the output layer (``W_c`` then maps to ``embed_dim``).
        pad_id: Source padding id, for the default ``src_mask``.
        impl: ``"fused"`` (``nn.LSTM`` etc.) or ``"explicit"`` recurrent layers, same parameters.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"cell": "gru", "embed_dim": 16, "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
        "small": {"cell": "lstm", "embed_dim": 256, "hidden_size": 256, "num_layers": 2, "dropout": 0.2},
        # RNNsearch (Bahdanau et al., 2015): GRU, 620-dim embeddings, 1000 hidden units per direction
        "base": {"cell": "gru", "embed_dim": 620, "hidden_size": 1000, "num_layers": 1, "dropout": 0.2},
    }

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: int = 256,
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.1,
        attn_dim: int | None = None,
        tie_weights: bool = False,
        pad_id: int = 0,
        impl: Literal["fused", "explicit"] = "fused",
        preset: str | None = None,
    ) -> None:
        super().__init__()
        check_positive(
            "RNNSeq2Seq", src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, embed_dim=embed_dim,
            hidden_size=hidden_size, num_layers=num_layers,
        )  # fmt: skip
        self.src_vocab_size, self.tgt_vocab_size, self.pad_id = src_vocab_size, tgt_vocab_size, pad_id
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.src_embedding = nn.Embedding(src_vocab_size, embed_dim)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, embed_dim)
        self.encoder = RecurrentEncoder(
            cell, embed_dim, hidden_size, num_layers, bidirectional, dropout, impl
        )
        memory_dim = self.encoder.output_size
        self.bridge = nn.Linear(memory_dim, num_layers * hidden_size)
        self.decoder = Recurrent(cell, embed_dim + memory_dim, hidden_size, num_layers, dropout, impl)
        self.attention = AdditiveAttention(hidden_size, memory_dim, attn_dim or hidden_size)
        self.combine = nn.Linear(hidden_size + memory_dim, embed_dim if tie_weights else hidden_size)
        self.out = OutputLinear(embed_dim if tie_weights else hidden_size, tgt_vocab_size)
        self.drop = nn.Dropout(dropout)
        for embedding in (self.src_embedding, self.tgt_embedding):
            nn.init.uniform_(embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)
        if tie_weights:
            self.out.weight = self.tgt_embedding.weight

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits ``(B, T, V)`` for every position of ``tgt_in (B, T)``."""
        return self.decode(tgt_in, self.encode(src, src_mask))[0]

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Seq2SeqState:
        """Read the source ``(B, S)``.

        Returns:
            ``{"memory": (B, S, K), "keys": U h (B, S, A), "mask": (B, S), "hidden": s_0, "context": (B, K)}``
            with ``s_0`` as :class:`~lightning_seq.layers.Recurrent` takes it, ``(B, L, H)`` (or ``(h, c)``).
        """
        mask = _source_mask(src, src_mask, self.pad_id)  # (B, S)
        memory, summary = self.encoder(self.drop(self.src_embedding(src)), mask.sum(dim=1))  # (B, S, K)
        hidden = torch.tanh(self.bridge(summary)).view(src.size(0), self.num_layers, self.hidden_size)
        state: RecurrentState = (hidden, torch.zeros_like(hidden)) if self.cell == "lstm" else hidden
        return {
            "memory": memory,
            "keys": self.attention.project_keys(memory),  # (B, S, A), once per sentence
            "mask": mask,
            "hidden": state,
            "context": memory.new_zeros(memory.size(0), memory.size(-1)),  # (B, K)
        }

    def decode(self, tokens: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """Consume ``tokens (N, t)``; returns logits ``(N, t, V)`` and the state after them."""
        embedded = self.drop(self.tgt_embedding(tokens))  # (N, t, E)
        hidden, context = state["hidden"], state["context"]
        outputs, contexts = [], []
        for i in range(tokens.size(1)):
            step_input = torch.cat([embedded[:, i], context], dim=-1)[:, None]  # (N, 1, E + K)
            out, hidden = self.decoder(step_input, hidden)  # (N, 1, H)
            context, _ = self.attention(out[:, 0], state["memory"], state["mask"], state["keys"])  # (N, K)
            outputs.append(out[:, 0])
            contexts.append(context)
        attended = torch.cat([torch.stack(outputs, 1), torch.stack(contexts, 1)], dim=-1)  # (N, t, H + K)
        logits = self.out(self.drop(torch.tanh(self.combine(attended))))  # (N, t, V)
        return logits, {**state, "hidden": hidden, "context": context}


# ------------------------------------------------------------------------------------ Transformer


class TransformerSeq2Seq(Presets, nn.Module):
    """Encoder-decoder Transformer (Vaswani et al., 2017) with cross-attention.

    .. math::
        x &= \\mathrm{dropout}(\\sqrt{d}\\, E_{src}[x_{1..S}] + P_{1..S}), \\quad
        m = \\mathrm{Encoder}(x) \\\\
        z &= \\mathrm{dropout}(\\sqrt{d}\\, E_{tgt}[y_{0..i-1}] + P_{0..i-1}), \\quad
        h = \\mathrm{Decoder}(z, m) \\text{ (causal self-attention, cross-attention to } m) \\\\
        p(y_i \\mid y_{<i}, x) &= \\mathrm{softmax}(h_i W^\\top), \\quad W = E_{tgt} \\text{ when tied}

    Decoding is incremental: each :meth:`decode` call runs only the new target tokens, with every
    block's self-attention keys/values of earlier tokens and cross-attention keys/values of the
    memory (computed on the first call) in the state's ``cache``.

    Attributes: ``src_embedding``, ``tgt_embedding`` (the same module when shared), ``positions``
    (shared by both sides), ``transformer`` (:class:`~lightning_seq.layers.TransformerEncoderDecoder`,
    with ``.encoder`` and ``.decoder``), ``head``.

    Args:
        src_vocab_size: Source token ids (linked from the data).
        tgt_vocab_size: Target token ids, ``V`` (linked from the data).
        dim: Model width ``d``.
        encoder_depth: Encoder blocks.
        decoder_depth: Decoder blocks.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim`` (the paper: 2048 / 512 = 4).
        dropout: On embeddings, attention outputs and inside the FFNs.
        attn_dropout: On attention weights.
        norm_first: Pre-norm blocks with a final layer norm (stable without long warmups); False is
            the paper's post-norm "Add & Norm".
        positions: ``"sinusoidal"`` (the paper's fixed encodings) or ``"learned"``.
        max_len: Longest source or target sequence (decoded tokens included).
        share_embeddings: One embedding for source and target (a joint vocabulary: the two vocabulary
            sizes must be equal).
        tie_weights: Output layer = target embedding matrix (Press & Wolf, 2017).
        pad_id: Source padding id, for the default ``src_mask``.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {
            "dim": 32,
            "encoder_depth": 1,
            "decoder_depth": 1,
            "heads": 2,
            "mlp_ratio": 2.0,
            "dropout": 0.0,
        },
        "small": {
            "dim": 256,
            "encoder_depth": 3,
            "decoder_depth": 3,
            "heads": 4,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
        },
        # Transformer base (Vaswani et al., 2017): 6 + 6 blocks, d = 512, 8 heads, FFN 2048
        "base": {
            "dim": 512,
            "encoder_depth": 6,
            "decoder_depth": 6,
            "heads": 8,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
        },
    }

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        dim: int = 256,
        encoder_depth: int = 3,
        decoder_depth: int = 3,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        norm_first: bool = True,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        max_len: int = 1024,
        share_embeddings: bool = False,
        tie_weights: bool = True,
        pad_id: int = 0,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        check_positive(
            "TransformerSeq2Seq", src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, dim=dim,
            encoder_depth=encoder_depth, decoder_depth=decoder_depth, heads=heads, max_len=max_len,
        )  # fmt: skip
        _check_transformer_choices(positions, share_embeddings, src_vocab_size, tgt_vocab_size)
        self.src_vocab_size, self.tgt_vocab_size, self.pad_id = src_vocab_size, tgt_vocab_size, pad_id
        self.dim, self.scale = dim, dim**0.5
        self.src_embedding = nn.Embedding(src_vocab_size, dim)
        self.tgt_embedding = self.src_embedding if share_embeddings else nn.Embedding(tgt_vocab_size, dim)
        self.positions = (
            SinusoidalPositions(dim, max_len) if positions == "sinusoidal" else LearnedPositions(max_len, dim)
        )
        self.drop = nn.Dropout(dropout)
        self.transformer = TransformerEncoderDecoder(
            dim, encoder_depth, decoder_depth, heads, mlp_ratio=mlp_ratio, dropout=dropout,
            attn_dropout=attn_dropout, norm_first=norm_first,
        )  # fmt: skip
        self.head = OutputLinear(dim, tgt_vocab_size, bias=False)
        self._init_weights()
        if tie_weights:
            self.head.weight = self.tgt_embedding.weight

    def _init_weights(self) -> None:
        """Xavier-uniform projections with zero biases; embeddings ``N(0, 1/d)``, so that the
        ``sqrt(d)``-scaled embeddings have unit variance and tied logits start near unit scale."""
        for module in self.transformer.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for embedding in {self.src_embedding, self.tgt_embedding}:
            nn.init.normal_(embedding.weight, std=self.dim**-0.5)
        nn.init.normal_(self.head.weight, std=self.dim**-0.5)

    def _embed(self, embedding: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        return self.drop(self.positions(embedding(tokens) * self.scale, offset=offset))  # (B, T, dim)

    def forward(self, src: Tensor, tgt_in: Tensor, src_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: logits ``(B, T, V)`` for every position of ``tgt_in (B, T)``."""
        mask = _source_mask(src, src_mask, self.pad_id)  # (B, S)
        memory = self.transformer.encoder(self._embed(self.src_embedding, src), key_mask=mask)  # (B, S, dim)
        out = self.transformer.decoder(self._embed(self.tgt_embedding, tgt_in), memory, memory_key_mask=mask)
        return self.head(out)  # (B, T, V)

    def encode(self, src: Tensor, src_mask: Tensor | None = None) -> Seq2SeqState:
        """Read the source ``(B, S)``.

        Returns:
            ``{"memory": (B, S, dim), "mask": (B, S), "offset": 0, "cache": []}``; after the first
            :meth:`decode` the memory lives on as cross-attention keys/values in the cache (and
            ``memory`` is None).
        """
        mask = _source_mask(src, src_mask, self.pad_id)  # (B, S)
        memory = self.transformer.encoder(self._embed(self.src_embedding, src), key_mask=mask)  # (B, S, dim)
        return {"memory": memory, "mask": mask, "offset": 0, "cache": []}

    def decode(self, tokens: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """Consume ``tokens (N, t)`` that follow ``state["offset"]`` earlier ones; logits ``(N, t, V)``."""
        offset = state["offset"]
        x = self._embed(self.tgt_embedding, tokens, offset)  # (N, t, dim)
        out, cache = self.transformer.decoder(
            x, state["memory"], memory_key_mask=state["mask"], cache=state["cache"], use_cache=True
        )  # (N, t, dim)
        new_state = {"memory": None, "mask": state["mask"], "offset": offset + tokens.size(1), "cache": cache}
        return self.head(out), new_state


def _check_transformer_choices(positions: str, share: bool, src_vocab: int, tgt_vocab: int) -> None:
    if positions not in ("sinusoidal", "learned"):
        raise InputError(
            f"TransformerSeq2Seq: positions={positions!r} is not supported; expected sinusoidal or learned."
        )
    if share and src_vocab != tgt_vocab:
        raise InputError(
            f"TransformerSeq2Seq: share_embeddings needs one joint vocabulary, but the source has "
            f"{src_vocab} tokens and the target {tgt_vocab}. Fix: train a joint tokenizer in the data "
            "module, or set share_embeddings: false."
        )

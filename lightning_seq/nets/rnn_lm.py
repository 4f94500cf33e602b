"""RNN/LSTM/GRU language model.

Contract relied on by ``LanguageModel`` and ``decoding`` (shared with the Transformer LM):
``net(tokens, state) -> (logits, state)`` with ``tokens`` ``(B, T)`` long, ``logits``
``(B, T, V)``, and ``state`` None (zeros) or what the previous call returned; every state
tensor is batch-first (dim 0 is the batch).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.output import OutputLinear
from lightning_seq.layers.recurrent import Recurrent, RecurrentState
from lightning_seq.nets._presets import Presets

__all__ = ["RNNLM"]


class RNNLM(Presets, nn.Module):
    """Embedding, stacked recurrent layers and a softmax output layer.

    .. math::
        e_t = \\mathrm{dropout}(E[w_t]), \\quad
        h_t = \\mathrm{Recurrent}(e_{\\le t}), \\quad
        p(w_{t+1} \\mid w_{\\le t}) = \\mathrm{softmax}(W\\, P\\, \\mathrm{dropout}(h_t) + b)

    where ``P`` is a ``hidden_size -> embed_dim`` projection present only when the weights are
    tied and the sizes differ, and with ``tie_weights`` the output weight ``W`` is the
    embedding matrix ``E`` itself (Press & Wolf, 2017).

    Args:
        vocab_size: Number of token ids, ``V``.
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        embed_dim: Embedding width, ``E``.
        hidden_size: Recurrent state width, ``H``.
        num_layers: Number of stacked recurrent layers.
        dropout: Dropout on the embeddings, between recurrent layers and before the output.
        tie_weights: Share the embedding matrix with the output layer.
        impl: ``"fused"`` (``nn.LSTM`` etc., the default) or ``"explicit"`` (step-by-step cells);
            both use the same parameters and ``state_dict``.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {"cell": "lstm", "embed_dim": 16, "hidden_size": 32, "num_layers": 1, "dropout": 0.0},
        "small": {
            "cell": "lstm",
            "embed_dim": 256,
            "hidden_size": 256,
            "num_layers": 2,
            "dropout": 0.2,
            "tie_weights": True,
        },
        "base": {
            "cell": "lstm",
            "embed_dim": 512,
            "hidden_size": 512,
            "num_layers": 2,
            "dropout": 0.3,
            "tie_weights": True,
        },
    }

    def __init__(
        self,
        vocab_size: int,
        cell: Literal["rnn", "lstm", "gru"] = "lstm",
        embed_dim: int = 256,
        hidden_size: int = 512,
        num_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        impl: Literal["fused", "explicit"] = "fused",
        preset: str | None = None,
    ) -> None:
        super().__init__()
        for field, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"RNNLM: {field}={value!r} is invalid; expected a positive integer.")
        self.vocab_size = vocab_size
        self.tie_weights = tie_weights
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.rnn = Recurrent(cell, embed_dim, hidden_size, num_layers, dropout=dropout, impl=impl)
        self.drop = nn.Dropout(dropout)
        needs_proj = tie_weights and hidden_size != embed_dim
        self.proj = nn.Linear(hidden_size, embed_dim) if needs_proj else None
        self.out = OutputLinear(embed_dim if tie_weights else hidden_size, vocab_size)
        self._init_weights()
        if tie_weights:
            self.out.weight = self.embedding.weight

    def _init_weights(self) -> None:
        """Small uniform embedding and output weights, zero output bias; recurrent as in torch."""
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.out.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        """Next-token logits for every position.

        Args:
            tokens: Token ids, ``(B, T)``.
            state: Recurrent state from the previous chunk (batch-first, see
                :class:`~lightning_seq.layers.recurrent.Recurrent`), or None for zeros.

        Returns:
            ``(logits, state)``: logits ``(B, T, V)`` and the final recurrent state.
        """
        x = self.drop(self.embedding(tokens))  # (B, T, E)
        h, state = self.rnn(x, state)  # (B, T, H)
        h = self.drop(h)
        if self.proj is not None:
            h = self.proj(h)  # (B, T, E)
        return self.out(h), state  # (B, T, V)

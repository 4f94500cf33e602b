"""Pure torch building blocks (no Lightning): one idea per block, fused and explicit paths."""

from lightning_seq.layers.recurrent import (
    GRUCell,
    LSTMCell,
    Recurrent,
    RecurrentState,
    RNNCell,
    gru_cell,
    lstm_cell,
    rnn_tanh_cell,
)

__all__ = [
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "Recurrent",
    "RecurrentState",
    "gru_cell",
    "lstm_cell",
    "rnn_tanh_cell",
]

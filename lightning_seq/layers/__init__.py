"""Pure torch building blocks (no Lightning): one idea per block, fused and explicit paths."""

from lightning_seq.layers.attention import (
    MultiHeadAttention,
    attention_fused,
    attention_reference,
    causal_mask,
)
from lightning_seq.layers.channel_attention import SqueezeExcitation
from lightning_seq.layers.patches import PatchEmbedding, patch_grid
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
from lightning_seq.layers.transformer import (
    DropPath,
    FeedForward,
    TransformerBlock,
    drop_path_rates,
    init_linear_,
)
from lightning_seq.layers.windows import (
    PatchMerging,
    SwinBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "DropPath",
    "FeedForward",
    "GRUCell",
    "LSTMCell",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PatchMerging",
    "RNNCell",
    "Recurrent",
    "RecurrentState",
    "SqueezeExcitation",
    "SwinBlock",
    "TransformerBlock",
    "WindowAttention",
    "attention_fused",
    "attention_reference",
    "causal_mask",
    "drop_path_rates",
    "gru_cell",
    "init_linear_",
    "lstm_cell",
    "patch_grid",
    "relative_position_index",
    "rnn_tanh_cell",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

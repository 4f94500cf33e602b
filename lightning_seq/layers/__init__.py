"""Pure torch building blocks (no Lightning): one idea per block, fused and explicit paths."""

from lightning_seq.layers.additive_attention import AdditiveAttention
from lightning_seq.layers.attention import (
    KV,
    MultiHeadAttention,
    attention_fused,
    attention_reference,
    causal_mask,
)
from lightning_seq.layers.batch_norm import ClassConditionalBatchNorm, CrossProcessBatchNorm, sync_batch_norm
from lightning_seq.layers.channel_attention import ConditionalChannelAttention, SqueezeExcitation
from lightning_seq.layers.gaussian import (
    diagonal_normal_log_prob,
    kl_diagonal_standard,
    kl_gaussian,
    reparameterize,
    standard_normal_log_prob,
)
from lightning_seq.layers.linear_attention import (
    LinearAttention,
    LinearState,
    elu_feature_map,
    linear_attention,
    linear_attention_reference,
)
from lightning_seq.layers.masked_conv import GatedBlock, MaskedConv2d, raster_mask, shift_down
from lightning_seq.layers.output import OutputLinear
from lightning_seq.layers.patches import PatchEmbedding, patch_grid
from lightning_seq.layers.positions import (
    LearnedPositions,
    SinusoidalPositions,
    sinusoidal_embedding,
    sinusoidal_table,
)
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
from lightning_seq.layers.resblocks import (
    Downsample,
    ResBlock,
    SpatialSelfAttention,
    TimeEmbedding,
    Upsample,
    group_count,
    group_norm,
)
from lightning_seq.layers.transformer import (
    DropPath,
    FeedForward,
    TransformerBlock,
    TransformerDecoder,
    TransformerEncoder,
    TransformerEncoderDecoder,
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
    "KV",
    "AdditiveAttention",
    "ClassConditionalBatchNorm",
    "ConditionalChannelAttention",
    "CrossProcessBatchNorm",
    "Downsample",
    "DropPath",
    "FeedForward",
    "GRUCell",
    "GatedBlock",
    "LSTMCell",
    "LearnedPositions",
    "LinearAttention",
    "LinearState",
    "MaskedConv2d",
    "MultiHeadAttention",
    "OutputLinear",
    "PatchEmbedding",
    "PatchMerging",
    "RNNCell",
    "Recurrent",
    "RecurrentState",
    "ResBlock",
    "SinusoidalPositions",
    "SpatialSelfAttention",
    "SqueezeExcitation",
    "SwinBlock",
    "TimeEmbedding",
    "TransformerBlock",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerEncoderDecoder",
    "Upsample",
    "WindowAttention",
    "attention_fused",
    "attention_reference",
    "causal_mask",
    "diagonal_normal_log_prob",
    "drop_path_rates",
    "elu_feature_map",
    "group_count",
    "group_norm",
    "gru_cell",
    "init_linear_",
    "kl_diagonal_standard",
    "kl_gaussian",
    "linear_attention",
    "linear_attention_reference",
    "lstm_cell",
    "patch_grid",
    "raster_mask",
    "relative_position_index",
    "reparameterize",
    "rnn_tanh_cell",
    "shift_down",
    "shifted_window_mask",
    "sinusoidal_embedding",
    "sinusoidal_table",
    "standard_normal_log_prob",
    "sync_batch_norm",
    "window_partition",
    "window_reverse",
]

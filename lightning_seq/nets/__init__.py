"""Pure torch networks (no Lightning), one file per model family, with named size presets."""

from lightning_seq.nets.rnn_lm import RNNLM

__all__ = ["RNNLM"]

"""Pure torch networks (no Lightning), one file per model family, with named size presets."""

from lightning_seq.nets.resnet import ResNet
from lightning_seq.nets.rnn_lm import RNNLM
from lightning_seq.nets.swin import Swin
from lightning_seq.nets.vit import ViT

__all__ = ["RNNLM", "ResNet", "Swin", "ViT"]

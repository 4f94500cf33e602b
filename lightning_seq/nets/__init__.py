"""Pure torch networks (no Lightning), one file per model family, with named size presets."""

from lightning_seq.nets.captioner import ShowAttendTell, TransformerCaptioner, spatial_features
from lightning_seq.nets.gan import DCGAN
from lightning_seq.nets.pixelcnn import GatedPixelCNN, PixelCNN, RowLSTM
from lightning_seq.nets.resnet import ResNet
from lightning_seq.nets.rnn_lm import RNNLM
from lightning_seq.nets.seq2seq import RNNSeq2Seq, TransformerSeq2Seq
from lightning_seq.nets.sequence_classifier import (
    RNNClassifier,
    RNNTagger,
    TransformerClassifier,
    TransformerTagger,
)
from lightning_seq.nets.swin import Swin
from lightning_seq.nets.transformer_lm import TransformerLM
from lightning_seq.nets.unet import UNet
from lightning_seq.nets.vae import VAE
from lightning_seq.nets.vit import ViT

__all__ = [
    "DCGAN",
    "RNNLM",
    "VAE",
    "GatedPixelCNN",
    "PixelCNN",
    "RNNClassifier",
    "RNNSeq2Seq",
    "RNNTagger",
    "ResNet",
    "RowLSTM",
    "ShowAttendTell",
    "Swin",
    "TransformerCaptioner",
    "TransformerClassifier",
    "TransformerLM",
    "TransformerSeq2Seq",
    "TransformerTagger",
    "UNet",
    "ViT",
    "spatial_features",
]

"""LightningModules, one per training objective; the network is passed in.

:class:`NetModule` is the base of them all (hyperparameters, optimizers and schedules, compile, eval
toggling, exact resume); :class:`TokenizersInCheckpoints` carries tokenizers for the text modules;
:class:`GenerativeModule` holds the ``sample()`` contract of the image generators.
"""

from lightning_seq.modules._base import NetModule, Optimization
from lightning_seq.modules._generative import GenerativeModule
from lightning_seq.modules._tokenizers import TokenizersInCheckpoints
from lightning_seq.modules.captioner import Captioner
from lightning_seq.modules.classifier import SequenceClassifier, SequenceTagger
from lightning_seq.modules.diffusion import Diffusion
from lightning_seq.modules.gan import GAN
from lightning_seq.modules.image_classifier import ImageClassifier, load_classifier
from lightning_seq.modules.language_model import LanguageModel
from lightning_seq.modules.pixelcnn import PixelCNNModel
from lightning_seq.modules.seq2seq import Seq2Seq
from lightning_seq.modules.vae import VariationalAutoencoder

__all__ = [
    "GAN",
    "Captioner",
    "Diffusion",
    "GenerativeModule",
    "ImageClassifier",
    "LanguageModel",
    "NetModule",
    "Optimization",
    "PixelCNNModel",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
    "TokenizersInCheckpoints",
    "VariationalAutoencoder",
    "load_classifier",
]

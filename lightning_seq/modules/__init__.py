"""LightningModules, one per training objective; the network is passed in."""

from lightning_seq.modules.classifier import SequenceClassifier, SequenceTagger
from lightning_seq.modules.image_classifier import ImageClassifier, load_classifier
from lightning_seq.modules.language_model import LanguageModel
from lightning_seq.modules.seq2seq import Seq2Seq

__all__ = [
    "ImageClassifier",
    "LanguageModel",
    "Seq2Seq",
    "SequenceClassifier",
    "SequenceTagger",
    "load_classifier",
]

"""LightningModules, one per training objective; the network is passed in."""

from lightning_seq.modules.image_classifier import ImageClassifier, load_classifier
from lightning_seq.modules.language_model import LanguageModel

__all__ = ["ImageClassifier", "LanguageModel", "load_classifier"]

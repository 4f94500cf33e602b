"""LightningModules, one per training objective; the network is passed in."""

from lightning_seq.modules.language_model import LanguageModel

__all__ = ["LanguageModel"]

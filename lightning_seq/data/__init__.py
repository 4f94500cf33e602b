"""DataModules, tokenizers and embedded datasets."""

from lightning_seq.data.text import TextDataModule
from lightning_seq.data.tokenizers import TokenizerConfig

__all__ = ["TextDataModule", "TokenizerConfig"]

"""DataModules, tokenizers and embedded datasets."""

from lightning_seq.data.augment import ImageAugment
from lightning_seq.data.captions import CaptionDataModule
from lightning_seq.data.images import ImageDataModule
from lightning_seq.data.labelled import LabelledTextDataModule
from lightning_seq.data.parallel import ParallelTextDataModule
from lightning_seq.data.text import TextDataModule
from lightning_seq.data.tokenizers import TokenizerConfig

__all__ = [
    "CaptionDataModule",
    "ImageAugment",
    "ImageDataModule",
    "LabelledTextDataModule",
    "ParallelTextDataModule",
    "TextDataModule",
    "TokenizerConfig",
]

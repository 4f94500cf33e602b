"""Decoding settings whose length follows the data: for modules that decode text with the shared library."""

from dataclasses import asdict
from typing import ClassVar

from lightning_seq.decoding import GenerationConfig


class GenerationFromData:
    """Mixin for a module that decodes text (put it before :class:`NetModule` in the bases).

    ``generation`` given in the recipe is used as it is. When it is None, the module decodes with
    ``DEFAULT_GENERATION``, whose ``max_new_tokens`` is sized at ``setup`` to the DataModule's longest
    training target plus some room (:func:`longest_target`), and that sized config is saved in every
    checkpoint, so that a loaded module decodes as the trained one did.
    """

    DEFAULT_GENERATION: ClassVar[dict] = {"strategy": "beam", "num_beams": 4, "max_new_tokens": 128}

    def init_generation(self, generation: GenerationConfig | dict | None) -> None:
        """Call from the constructor with the recipe's ``generation``."""
        self.sized_generation = generation is None  # max_new_tokens follows the data
        self.generation = GenerationConfig.of(generation, **self.DEFAULT_GENERATION)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        longest = longest_target(getattr(self.trainer, "datamodule", None))
        if self.sized_generation and longest:
            size = longest + max(8, longest // 4)  # some room beyond the longest training target
            self.generation = GenerationConfig(**{**self.DEFAULT_GENERATION, "max_new_tokens": size})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generation"] = asdict(self.generation)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.sized_generation and "generation" in checkpoint:
            self.generation = GenerationConfig(**checkpoint["generation"])


def longest_target(datamodule: object) -> int | None:
    """Tokens to generate for the longest training target (EOS included, BOS not), when the DataModule
    tells: its ``max_target_length``, or the lengths of its train split's ``tgt`` sequences."""
    longest = getattr(datamodule, "max_target_length", None)
    if isinstance(longest, int):
        return longest
    dataset = getattr(datamodule, "dataset", None)
    if not callable(dataset):
        return None
    lengths = getattr(getattr(dataset("train"), "tgt", None), "lengths", None)
    return int(lengths().max()) - 1 if callable(lengths) else None

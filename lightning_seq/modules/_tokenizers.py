"""Tokenizers that travel with a text module: taken from the DataModule, saved in every checkpoint."""

from typing import ClassVar

from tokenizers import Tokenizer

from lightning_seq.errors import InputError


class TokenizersInCheckpoints:
    """Mixin for a module that reads or writes text (put it before :class:`NetModule` in the bases).

    ``TOKENIZERS`` names the module's tokenizer attributes: ``("tokenizer",)`` by default, a
    translation model has ``("src_tokenizer", "tgt_tokenizer")``. At ``setup`` each one that is still
    None is taken from the DataModule's attribute of the same name; each one that is set is saved into
    checkpoints (as the tokenizer's JSON, under its name) and restored when a checkpoint is loaded, so
    ``load_from_checkpoint(path).generate(...)`` works with nothing else at hand.
    """

    TOKENIZERS: ClassVar[tuple[str, ...]] = ("tokenizer",)
    tokenizer: Tokenizer | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        for name in self.TOKENIZERS:
            if getattr(self, name, None) is None and getattr(datamodule, name, None) is not None:
                setattr(self, name, getattr(datamodule, name))

    def require_tokenizers(self, method: str) -> list[Tokenizer]:
        """The tokenizers, in ``TOKENIZERS`` order; a clear error for ``method`` when one is missing."""
        found = [getattr(self, name, None) for name in self.TOKENIZERS]
        if any(t is None for t in found):
            what = "a tokenizer" if len(found) == 1 else f"its tokenizers ({', '.join(self.TOKENIZERS)})"
            raise InputError(
                f"{type(self).__name__}.{method} needs {what}: train with a DataModule that has "
                f"{'one' if len(found) == 1 else 'them'}, load a checkpoint written by such a run, or set "
                f"{' and '.join(f'model.{name}' for name in self.TOKENIZERS)} = tokenizers.Tokenizer(...)."
            )
        return found

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        for name in self.TOKENIZERS:
            tokenizer = getattr(self, name, None)
            if tokenizer is not None:
                checkpoint[name] = tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        for name in self.TOKENIZERS:
            if name in checkpoint:
                setattr(self, name, Tokenizer.from_str(checkpoint[name]))

"""What every module shares: one ``_step(batch, stage)`` behind the train/val/test hooks, and the
optimizer from the recipe with the warmup + cosine schedule of its hyperparameters."""

import lightning as L

from lightning_seq.modules._optim import configure_optimization


class NetModule(L.LightningModule):
    """Base of the modules: a subclass defines ``_step(batch, stage)`` and sets ``self.optimizer``;
    its hyperparameters hold ``warmup_steps``, ``lr_schedule`` and ``min_lr_ratio``."""

    def _step(self, batch, stage: str) -> dict:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "test")

    def configure_optimizers(self) -> dict:
        hp = self.hparams
        return configure_optimization(
            self, self.optimizer, self.trainer.estimated_stepping_batches, hp.warmup_steps, hp.lr_schedule,
            hp.min_lr_ratio,
        )  # fmt: skip

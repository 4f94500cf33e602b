"""What every module shares: one ``_step(batch, stage)`` behind the train/val/test hooks, and the
optimizer from the recipe with the warmup + cosine schedule of its hyperparameters."""

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from lightning_seq.modules._optim import configure_optimization
from lightning_seq.modules._resume import gather_ranks, own_rank, rng_state, set_rng_state


class NetModule(L.LightningModule):
    """Base of the modules: a subclass defines ``_step(batch, stage)`` and sets ``self.optimizer``;
    its hyperparameters hold ``warmup_steps``, ``lr_schedule`` and ``min_lr_ratio``.

    Checkpoints also keep each rank's :meth:`resume_state`, so that a run resumed from any step ends
    with the weights of an uninterrupted one. A subclass that overrides ``on_save_checkpoint`` or
    ``on_load_checkpoint`` calls ``super()``.
    """

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

    # ----------------------------------------------------------------------------- checkpoints
    def resume_state(self) -> dict:
        """This rank's state beyond weights and optimizer that training depends on; extend in subclasses."""
        return {"rng": rng_state()}

    def load_resume_state(self, state: dict) -> None:
        """Restore what :meth:`resume_state` returned."""
        set_rng_state(state["rng"])

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._fitting():
            checkpoint["resume_state"] = gather_ranks(self.resume_state(), self.trainer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not self._fitting() or "resume_state" not in checkpoint:
            return
        state = own_rank(checkpoint["resume_state"], self.trainer)
        if state is not None:
            self.load_resume_state(state)

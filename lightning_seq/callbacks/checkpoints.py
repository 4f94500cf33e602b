"""A ``last.ckpt`` that holds the run's last step."""

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

from lightning_seq.utils import training_ends


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (same arguments), whose ``last.ckpt``
    (``save_last: true``) is the last step the run trained.

    Lightning 2.6 writes ``last.ckpt`` only beside a top-k checkpoint, that is after a validation that
    improved the monitored metric, so a 1400-step run whose last validation did not improve leaves the
    weights of step 1200 in ``last.ckpt``, and a run that ends between two validations leaves those of
    its last validation. This one also writes ``last.ckpt`` after every validation that saved nothing and
    once more where training ends (at the end of the last epoch, before a ``WeightAveraging`` callback
    puts its average into the module), unless that step is saved already. The best checkpoints are
    chosen and kept as Lightning does. ``save_last: link`` keeps Lightning's meaning.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_step(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer) or training_ends(trainer):
            self._save_last_step(trainer)

    def _save_last_step(self, trainer: L.Trainer) -> None:
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

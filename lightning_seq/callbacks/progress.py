"""Lightning's rich progress bar, counting steps when ``max_steps`` is what ends the run."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn
from rich.progress import Task
from rich.text import Text


class _EpochOrBatches(BatchesProcessedColumn):
    """``epoch 13`` on the bar over the run's steps; ``7/50`` (batches) on every other bar."""

    def render(self, task: Task) -> Text:
        epoch = task.fields.get("epoch")
        return super().render(task) if epoch is None else Text(f"epoch {epoch}", style=self.style)


class StepProgressBar(RichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar`; when ``max_steps`` ends the run,
    one training bar over its steps, ``step 1019/1400 ━━━━━━━━━╸━━━ epoch 13 0:03:12 • 0:01:05``,
    instead of a bar per epoch headed ``Epoch 13/-2`` (``max_epochs`` is -1 in a run of steps).

    It continues from the step a resumed run starts at. A run that epochs end keeps Lightning's
    bars. The command line uses it in ``fit`` unless the recipe configures a progress bar of its own
    or turns the bar off (``trainer.enable_progress_bar: false``). Takes RichProgressBar's arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.total_steps: int | None = None  # set at the start of a run that max_steps ends

    @staticmethod
    def steps_end_the_run(trainer: L.Trainer) -> bool:
        """Whether ``max_steps`` stops the run (before, or as, ``max_epochs`` would)."""
        return trainer.max_steps > 0 and trainer.estimated_stepping_batches == trainer.max_steps

    def configure_columns(self, trainer: L.Trainer) -> list:
        batches = _EpochOrBatches(style=self.theme.batch_progress)
        columns = super().configure_columns(trainer)
        return [batches if isinstance(c, BatchesProcessedColumn) else c for c in columns]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.total_steps = trainer.max_steps if self.steps_end_the_run(trainer) else None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.total_steps is None:
            super().on_train_epoch_start(trainer, pl_module)
            return
        self._show_steps(trainer)
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.total_steps is None:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        self._show_steps(trainer)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def _show_steps(self, trainer: L.Trainer) -> None:
        """The one training bar: created once, then moved to the trainer's step."""
        if self.is_disabled or self.progress is None or self.total_steps is None:
            return
        width = len(f"step {self.total_steps}/{self.total_steps}")
        description = f"{f'step {trainer.global_step}/{self.total_steps}':{width}}"
        if self.theme.description:
            description = f"[{self.theme.description}]{description}"
        if self.train_progress_bar_id is None:
            self.train_progress_bar_id = self._add_task(self.total_steps, "")
        self.progress.update(
            self.train_progress_bar_id,
            completed=trainer.global_step,
            description=description,
            visible=True,
            epoch=trainer.current_epoch,
        )

"""What the console shows of a run: Lightning's rich progress bar, counting steps when ``max_steps`` is
what ends the run, and its model summary without FLOPs that were never counted."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count
from rich.console import Console
from rich.progress import Task
from rich.table import Table
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


class NetSummary(RichModelSummary):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichModelSummary`, without its FLOPs column and
    ``Total FLOPs`` line when they are all 0: Lightning counts FLOPs only for a module that sets an
    ``example_input_array``, and otherwise reports 0 for every row. The command line uses it in
    ``fit`` unless the recipe configures a summary of its own or turns it off. Takes its arguments.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                total_flops, **summarize_kwargs,
            )  # fmt: skip
            return
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            numeric = name.startswith("Params") or name in ("In sizes", "Out sizes")
            table.add_column(
                name or " ", justify="right" if numeric else "left", style="dim" if not name else None
            )
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = Console()
        console.print(table)
        totals = {
            "Trainable params": get_human_readable_count(int(trainable_parameters)),
            "Non-trainable params": get_human_readable_count(int(total_parameters - trainable_parameters)),
            "Total params": get_human_readable_count(int(total_parameters)),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        for name, value in totals.items():
            console.print(f"[bold]{name}[/]: {value}")

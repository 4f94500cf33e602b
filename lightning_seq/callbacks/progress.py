"""What the console shows of a run: Lightning's rich progress bar, counting steps when ``max_steps`` is
what ends the run; plain progress lines where the output is not a terminal (a Slurm output file, a pipe,
CI); and the model summary without FLOPs that were never counted."""

import datetime
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, RichModelSummary, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import BatchesProcessedColumn, ProcessingSpeedColumn
from lightning.pytorch.trainer.states import TrainerFn
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


class _Speed(ProcessingSpeedColumn):
    """it/s over the task's whole time when rich has no estimate of its own yet: rich needs two updates in
    its window, and a bar of one slow batch (a prediction that decodes) read ``0.00it/s``."""

    def render(self, task: Task) -> Text:
        if task.speed is None and task.completed and task.elapsed:
            return Text(f"{task.completed / task.elapsed:.2f}it/s", style=self.style)
        return super().render(task)


class StepProgressBar(RichProgressBar):
    """Lightning's :class:`~lightning.pytorch.callbacks.RichProgressBar`; when ``max_steps`` ends the run,
    one training bar over its steps, ``step 1019/1400 ━━━━━━━━━╸━━━ epoch 13 0:03:12 • 0:01:05``,
    instead of a bar per epoch headed ``Epoch 13/-2`` (``max_epochs`` is -1 in a run of steps).

    It continues from the step a resumed run starts at. A run that epochs end keeps Lightning's
    bars. Its it/s is the average so far where rich has no estimate yet (a bar of one slow batch).
    The command line uses it in every command unless the recipe configures a progress bar of its own
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
        speed = _Speed(style=self.theme.processing_speed)
        columns = super().configure_columns(trainer)
        columns = [batches if isinstance(c, BatchesProcessedColumn) else c for c in columns]
        return [speed if isinstance(c, ProcessingSpeedColumn) else c for c in columns]

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


class LineProgress(ProgressBar):
    """Plain progress lines, for output that is not a terminal: a Slurm job's output file, ``| tee``, CI.

    A rich bar redraws itself with escape codes that a file keeps as noise, or shows nothing until the
    end; this prints one line every ``every_n_seconds`` (and every ``every_n_steps`` steps, when set)::

        step 1019/1400 (epoch 13) | train/loss 1.234 | 8.21 it/s | elapsed 0:02:04 | ETA 0:00:46

    then one line of the validation metrics after each validation, and the last step's line when training
    ends.
    No escape codes; printed by global rank zero only, flushed at once. The command line uses it
    instead of :class:`StepProgressBar` when standard output is not a terminal (in ``validate``, ``test``
    and ``predict`` it prints nothing: their results follow at once).

    Args:
        every_n_seconds: at most this long between two lines.
        every_n_steps: also a line every this many steps (None: by time only).
    """

    def __init__(self, every_n_seconds: float = 30.0, every_n_steps: int | None = None):
        super().__init__()
        self.every_n_seconds, self.every_n_steps = every_n_seconds, every_n_steps
        self._enabled = True
        self._start = self._last = 0.0
        self._start_step = self._last_step = 0
        self._total: int | None = None
        self._epoch = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.monotonic()
        self._start_step = self._last_step = trainer.global_step
        total = trainer.estimated_stepping_batches
        self._total = int(total) if total != float("inf") else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.monotonic()
        self._epoch = trainer.current_epoch  # of the last step (the count has moved on once training ends)
        by_steps = self.every_n_steps is not None and step % self.every_n_steps == 0
        if self._enabled and (by_steps or now - self._last >= self.every_n_seconds):
            self._print_step(trainer, pl_module, now)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            print(f"validation at step {trainer.global_step}: {_format(metrics)}", flush=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled and trainer.global_step != self._last_step:  # the last step, unless just printed
            self._print_step(trainer, pl_module, time.monotonic())

    def _print_step(self, trainer: L.Trainer, pl_module: L.LightningModule, now: float) -> None:
        step = trainer.global_step
        rate = (step - self._last_step) / max(now - self._last, 1e-9)
        average = (step - self._start_step) / max(now - self._start, 1e-9)
        total = f"/{self._total}" if self._total else ""
        parts = [f"step {step}{total} (epoch {self._epoch})"]
        train = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k.startswith("train/")}
        if train:
            parts.append(_format(train))
        parts += [f"{rate:.2f} it/s", f"elapsed {_clock(now - self._start)}"]
        if self._total and average > 0 and step < self._total:
            parts.append(f"ETA {_clock((self._total - step) / average)}")
        print(" | ".join(parts), flush=True)
        self._last, self._last_step = now, step


def _format(metrics: dict) -> str:
    """``name value`` pairs, four significant digits."""
    return ", ".join(f"{name} {float(value):.4g}" for name, value in sorted(metrics.items()))


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


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

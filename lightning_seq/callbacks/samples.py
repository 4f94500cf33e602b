"""SampleGeneration: continue fixed prompts every N steps or epochs, and at the end of training.

Works with any module that has ``generate(prompts: list[str], config) -> list[str]``. Samples are
appended to ``<run dir>/samples.md`` (once per step: when training ends at a step that just had its
samples, those are the final ones), logged on W&B as one table (``samples/text``, columns step, prompt,
text) that holds every sample of the run so far, and the final ones are printed to the console. Only
global rank zero generates, with no collective operations inside, so other ranks never wait on it (not
for sharded strategies such as FSDP, whose forward is collective).
"""

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from lightning_seq.decoding import GenerationConfig
from lightning_seq.errors import InputError
from lightning_seq.utils import run_dir

TABLE_KEY = "samples/text"  # the W&B key of the samples table


class SampleGeneration(L.Callback):
    """Generates text from fixed prompts during training.

    Args:
        prompts: texts to continue.
        every_n_steps: generate every this many optimizer steps (None: never by steps).
        every_n_epochs: generate at the end of every this many epochs (None: never by epochs).
        generation: decoding settings (strategy, length, temperature, ...).
        print_at_end: print the samples of the final model when training ends.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        generation: GenerationConfig | None = None,
        print_at_end: bool = True,
    ):
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 1:
                raise InputError(
                    f"SampleGeneration.{name}: expected a positive integer or null, got {value}."
                )
        self.prompts = prompts if prompts is not None else [""]
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.generation = generation or GenerationConfig(max_new_tokens=200)
        self.print_at_end = print_at_end
        self.last: list[str] = []
        self._last_step = -1
        self._generated_at = -1  # the step of the latest samples (rank zero)
        self._rows: list[list] = []  # every (step, prompt, text) logged to W&B so far

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # with gradient accumulation, several batches share a step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._generate(trainer, pl_module, f"step {step}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._generate(trainer, pl_module, f"epoch {trainer.current_epoch}, step {trainer.global_step}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.print_at_end or trainer.sanity_checking:
            return
        if self._generated_at != trainer.global_step:  # not already written at this very step
            self._generate(trainer, pl_module, f"final, step {trainer.global_step}")
        _print(self.last)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "generate"):  # checked on every rank, before any work
            raise InputError(
                f"SampleGeneration: {type(pl_module).__name__} has no generate() method. "
                "Fix: remove the callback from the recipe."
            )

    @rank_zero_only
    def _generate(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> list[str]:
        self.last = pl_module.generate(self.prompts, self.generation)
        self._generated_at = trainer.global_step
        path = run_dir(trainer) / "samples.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"## {when}\n\n" + "\n\n".join(f"```\n{s}\n```" for s in self.last) + "\n\n")
        self._log_table(trainer)
        return self.last

    def _log_table(self, trainer: L.Trainer) -> None:
        """Log every sample so far as one W&B table: a logged table is immutable, so each generation
        logs a new one with all rows under the same key, and the latest shows the whole run."""
        step = trainer.global_step
        self._rows += [[step, p, s] for p, s in zip(self.prompts, self.last, strict=True)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key=TABLE_KEY, columns=["step", "prompt", "text"], data=list(self._rows), step=step
                )


@rank_zero_only
def _print(samples: list[str] | None) -> None:
    console = Console()
    for i, text in enumerate(samples or []):
        console.print(Panel(Text(text), title=f"sample {i + 1}", title_align="left", expand=False))

"""Perplexity: token-weighted perplexity and bits per token/character for validation and test.

Works with any module whose ``validation_step``/``test_step`` return a dict with ``nll_sum`` (summed
negative log-likelihood in nats) and ``num_tokens``. The sums are kept in a torchmetrics metric, so
the result is exact over uneven batches and across DDP ranks: ``ppl = exp(sum NLL / sum tokens)``,
not a mean of per-batch perplexities.
"""

import math

import lightning as L
import torch
from torchmetrics import Metric

from lightning_seq.errors import InputError


class TokenNLL(Metric):
    """Sums of negative log-likelihood and scored tokens; ``compute()`` gives the mean NLL per token."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("nll_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, num_tokens: torch.Tensor) -> None:
        self.nll_sum += nll_sum.detach().to(self.nll_sum.dtype)
        self.tokens += num_tokens.detach().to(self.tokens.dtype)

    def compute(self) -> torch.Tensor:
        return self.nll_sum / self.tokens.clamp(min=1)


class Perplexity(L.Callback):
    """Logs ``{stage}/ppl``, ``{stage}/bpt`` (bits per token) and, when the DataModule knows its
    characters per token, ``{stage}/bpc`` (bits per character), for ``val`` and ``test``.

    Args:
        bits_per_char: also log bits per character (needs ``datamodule.chars_per_token(split)``).
    """

    def __init__(self, bits_per_char: bool = True):
        self.bits_per_char = bits_per_char
        self.metrics: dict[str, TokenNLL] = {}

    def _start(self, stage: str, pl_module: L.LightningModule) -> None:
        """A fresh metric on the module's device, known only once the run has started (not in setup)."""
        device = pl_module.device
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.metrics[stage] = TokenNLL().set_dtype(dtype).to(device)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val", pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("test", pl_module)

    def _update(self, stage: str, outputs) -> None:
        if not isinstance(outputs, dict) or "nll_sum" not in outputs or "num_tokens" not in outputs:
            raise InputError(
                f"Perplexity callback: the module's {stage} step must return a dict with 'nll_sum' and "
                "'num_tokens'. Fix: return them from the step, or remove the callback from the recipe."
            )
        self.metrics[stage].update(outputs["nll_sum"], outputs["num_tokens"])

    def _log(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = self.metrics[stage]
        nll = metric.compute()  # synced across ranks
        bits = nll / math.log(2)
        values = {f"{stage}/ppl": torch.exp(nll), f"{stage}/bpt": bits}
        chars_per_token = getattr(trainer.datamodule, "chars_per_token", None)
        if self.bits_per_char and callable(chars_per_token):
            values[f"{stage}/bpc"] = bits / chars_per_token(stage)
        for name, value in values.items():
            # Already reduced across ranks; sync_dist only stops Lightning warning about epoch logs.
            pl_module.log(name, value.float(), prog_bar=name.endswith("ppl"), sync_dist=True)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._update("val", outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update("test", outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log("test", trainer, pl_module)

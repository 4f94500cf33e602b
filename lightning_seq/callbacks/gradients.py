"""GradientClipping: clip by norm or value through Lightning's own clipping, and log what happened."""

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.plugins.precision import Precision
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from lightning_seq.errors import InputError


class GradientClipping(L.Callback):
    """Logs the total gradient norm before clipping and the share of clipped steps, then clips.

    Runs in ``on_before_optimizer_step``: after backward and, under mixed precision, after the
    gradients are unscaled, so the logged norm is the true one. Clipping goes through
    ``LightningModule.clip_gradients`` (Lightning's implementation, precision-aware), so do not
    also set the Trainer's ``gradient_clip_val``.

    Logs ``train/grad_norm`` (the L2 norm of all gradients) and ``train/grad_clipped`` (the share of
    the steps since the previous log whose gradients were clipped) at the steps that the loggers write,
    every ``trainer.log_every_n_steps``: a value logged at another step would never be written, and
    each ``log`` call costs about 0.25 ms of Python on every step (see benchmarks/RESULTS.md).

    Under manual optimisation it clips every optimizer step the module takes through Lightning (a
    GAN's discriminator and generator steps alike). A module with several optimizers gets the metrics
    of each under its name in ``optimizations()``: ``train/grad_norm_generator``,
    ``train/grad_clipped_discriminator``...

    Args:
        clip_val: the largest gradient norm (``norm``) or absolute value (``value``); None only monitors.
        algorithm: ``norm`` (rescale all gradients together) or ``value`` (clamp each element).
    """

    def __init__(self, clip_val: float | None = 1.0, algorithm: Literal["norm", "value"] = "norm"):
        if algorithm not in ("norm", "value"):
            raise InputError(f"GradientClipping.algorithm: expected 'norm' or 'value', got '{algorithm}'.")
        if clip_val is not None and clip_val <= 0:
            raise InputError(
                f"GradientClipping.clip_val: expected a positive number or null, got {clip_val}."
            )
        self.clip_val, self.algorithm = clip_val, algorithm
        # per optimizer: clipped steps since the last log (a tensor: no host sync), and steps
        self._clipped: dict[str, torch.Tensor] = {}
        self._steps: dict[str, int] = {}
        self._names: dict[int, str] = {}  # id(optimizer) -> its metrics' suffix

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._clipped, self._steps, self._names = {}, {}, {}
        if self.clip_val is not None and trainer.gradient_clip_val:
            raise InputError(
                "trainer.gradient_clip_val is set and the GradientClipping callback clips too. "
                "Fix: clip in one place: remove trainer.gradient_clip_val (the callback also logs the norm)."
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        if not grads:
            return
        # the loggers' cadence, as Lightning's own LearningRateMonitor and DeviceStatsMonitor ask it
        log = trainer._logger_connector.should_update_logs
        clip_by_norm = self.clip_val is not None and self.algorithm == "norm"
        norm = get_total_norm(grads) if log or clip_by_norm else None
        name = self._names.get(id(optimizer))
        if name is None:
            name = self._names[id(optimizer)] = _optimizer_suffix(trainer, pl_module, optimizer)
        if self.clip_val is not None:
            if clip_by_norm:
                clipped = norm > self.clip_val
            else:
                clipped = torch.stack([g.abs().amax() for g in grads]).amax() > self.clip_val
            before = self._clipped.get(name)
            self._clipped[name] = clipped.float() if before is None else before + clipped
            self._steps[name] = self._steps.get(name, 0) + 1
        if log:
            pl_module.log(f"train/grad_norm{name}", norm, on_step=True, on_epoch=False)
            if self._steps.get(name):
                share = self._clipped.pop(name) / self._steps.pop(name)
                pl_module.log(f"train/grad_clipped{name}", share, on_step=True, on_epoch=False)
        if clip_by_norm and _plain_clipping(trainer, pl_module):  # the norm is known: no second pass
            clip_grads_with_norm_(params, self.clip_val, norm)
        elif self.clip_val is not None:
            pl_module.clip_gradients(
                optimizer, gradient_clip_val=self.clip_val, gradient_clip_algorithm=self.algorithm
            )


def _plain_clipping(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Whether clipping by norm is Lightning's plain ``clip_grad_norm_`` over the local gradients (not a
    sharded strategy's, nor a module's own), which the norm this callback computed can save a pass of."""
    precision = type(trainer.precision_plugin)
    return (
        precision.clip_gradients is Precision.clip_gradients
        and precision.clip_grad_by_norm is Precision.clip_grad_by_norm
        and type(pl_module).clip_gradients is L.LightningModule.clip_gradients
        and type(pl_module).configure_gradient_clipping is L.LightningModule.configure_gradient_clipping
    )


def _optimizer_suffix(trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> str:
    """``""`` for a module's only optimizer; ``"_<name>"`` (its name in ``optimizations()``, else its
    position) for one of several."""
    optimizers = trainer.optimizers
    if len(optimizers) < 2:
        return ""
    position = next((i for i, o in enumerate(optimizers) if o is optimizer), None)
    if position is None:
        return ""
    names = list(pl_module.optimizations()) if hasattr(pl_module, "optimizations") else []
    return f"_{names[position]}" if len(names) == len(optimizers) else f"_{position}"

"""GradientClipping: clip by norm or value through Lightning's own clipping, and log what happened."""

from typing import Literal

import lightning as L
import torch
from torch.nn.utils import get_total_norm

from lightning_seq.errors import InputError


class GradientClipping(L.Callback):
    """Logs the total gradient norm before clipping and the share of clipped steps, then clips.

    Runs in ``on_before_optimizer_step``: after backward and, under mixed precision, after the
    gradients are unscaled, so the logged norm is the true one. Clipping goes through
    ``LightningModule.clip_gradients`` (Lightning's implementation, precision-aware), so do not
    also set the Trainer's ``gradient_clip_val``.

    Logs ``train/grad_norm`` (L2 norm of all gradients, every step) and ``train/grad_clipped``
    (the fraction of steps in the epoch whose gradients were clipped).

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.clip_val is not None and trainer.gradient_clip_val:
            raise InputError(
                "trainer.gradient_clip_val is set and the GradientClipping callback clips too. "
                "Fix: clip in one place: remove trainer.gradient_clip_val (the callback also logs the norm)."
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = get_total_norm(grads, norm_type=2.0)
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if self.clip_val is None:
            return
        if self.algorithm == "norm":
            clipped = norm > self.clip_val
        else:
            clipped = torch.stack([g.abs().amax() for g in grads]).amax() > self.clip_val
        pl_module.log("train/grad_clipped", clipped.float(), on_step=False, on_epoch=True, reduce_fx="mean")
        pl_module.clip_gradients(
            optimizer, gradient_clip_val=self.clip_val, gradient_clip_algorithm=self.algorithm
        )

"""Optimizer and learning-rate schedule shared by every module.

The optimizer class and its arguments come from the recipe (``optimizer: {class_path: torch.optim.AdamW,
init_args: {lr: 3e-3, weight_decay: 0.1}}``); weight decay applies only to weight matrices, never
to biases, norms or embeddings. The schedule is a linear warmup followed by a cosine decay to
``min_lr_ratio`` times the peak rate, or a constant rate after warmup.
"""

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from lightning_seq.errors import InputError

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
Schedule = Literal["cosine", "constant"]


class SharedFactory:
    """An optimizer factory that copies of its module share instead of copying.

    Copying a module (Lightning's ``EMAWeightAveraging`` deep-copies it) would otherwise copy the
    factory too; the one that LightningCLI builds refers back to the parser and, under DDP, to
    objects holding locks, which cannot be copied. A factory has no state, so sharing it is safe.
    """

    def __init__(self, factory: OptimizerFactory):
        self.factory = factory.factory if isinstance(factory, SharedFactory) else factory

    def __call__(self, params: Iterable) -> torch.optim.Optimizer:
        return self.factory(params)

    def __deepcopy__(self, memo: dict) -> "SharedFactory":
        return self


def param_groups(module: nn.Module) -> list[dict]:
    """Trainable parameters in two groups: decayed weight matrices, and the rest with ``weight_decay=0``.

    Not decayed: biases, vectors, norms, embeddings, and the parameters that a module names in its
    ``no_weight_decay`` attribute (position embeddings, class tokens, relative position biases).
    A parameter shared by several modules (tied embeddings) is listed once, in the group of the
    first module that owns it.
    """
    decay, no_decay, seen = [], [], set()
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            # vectors are biases and norm scales; embeddings are matrices that are looked up, not multiplied
            skip = (
                param.ndim < 2 or isinstance(sub, nn.Embedding) or name in getattr(sub, "no_weight_decay", ())
            )
            (no_decay if skip else decay).append(param)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def check_schedule(warmup_steps: int, min_lr_ratio: float, schedule: str) -> None:
    """Raise :class:`InputError` for a negative warmup, a final ratio outside [0, 1], an unknown schedule."""
    if schedule not in ("cosine", "constant"):
        raise InputError(
            f"model.lr_schedule: unknown schedule '{schedule}'; expected 'cosine' or 'constant'."
        )
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise InputError(
            "model.warmup_steps / model.min_lr_ratio: expected warmup_steps >= 0 and "
            f"0 <= min_lr_ratio <= 1, got {warmup_steps} and {min_lr_ratio}."
        )


def lr_lambda(
    warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float
) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: ``step / warmup`` during warmup, then
    ``min + (1 - min) * (1 + cos(pi * progress)) / 2`` (cosine) or ``1`` (constant)."""
    check_schedule(warmup_steps, min_lr_ratio, schedule)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def configure_optimization(
    module: nn.Module,
    optimizer: OptimizerFactory,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule,
    min_lr_ratio: float,
) -> dict:
    """The ``configure_optimizers`` answer: optimizer over :func:`param_groups` + per-step schedule."""
    opt = optimizer(param_groups(module))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lr_lambda(warmup_steps, total_steps, schedule, min_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

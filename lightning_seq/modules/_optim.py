"""Optimizer and learning-rate schedule shared by every module.

The optimizer class and its arguments come from the recipe (``optimizer: {class_path: torch.optim.AdamW,
init_args: {lr: 3e-3, weight_decay: 0.1}}``); weight decay applies only to weight matrices, never
to biases, norms or embeddings. The schedule is a linear warmup followed by a cosine decay to
``min_lr_ratio`` times the peak rate, a constant rate, or the classic ``plateau`` annealing: the
rate is multiplied by ``plateau_factor`` after every validation whose loss is not the best so far
(pytorch/examples' word language model divides it by 4).
"""

import functools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Literal, get_args

import torch
from torch import nn

from lightning_seq.errors import InputError

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]
Schedule = Literal["cosine", "constant", "plateau"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)


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


def param_groups(module: nn.Module, lr_scales: Mapping[str, float] | None = None) -> list[dict]:
    """Trainable parameters in two groups: decayed weight matrices, and the rest with ``weight_decay=0``.

    Not decayed: biases, vectors, norms, embeddings, and the parameters that a module names in its
    ``no_weight_decay`` attribute (position embeddings, class tokens, relative position biases).
    A parameter shared by several modules (tied embeddings) is listed once, in the group of the
    first module that owns it.

    ``lr_scales`` gives submodules (by name, e.g. ``{"net.encoder": 0.1}``) their own learning rate, as a
    fraction of the optimizer's: their parameters get groups of their own, marked with ``lr_scale``,
    which :func:`configure_optimization` applies.
    """
    scales = dict(lr_scales or {})
    owner_scale: dict[int, float] = {}
    for prefix, scale in scales.items():
        for param in module.get_submodule(prefix).parameters():
            owner_scale.setdefault(id(param), float(scale))
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for sub in module.modules():
        for name, param in sub.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            # vectors are biases and norm scales; embeddings are matrices that are looked up, not multiplied
            skip = (
                param.ndim < 2 or isinstance(sub, nn.Embedding) or name in getattr(sub, "no_weight_decay", ())
            )
            groups.setdefault((not skip, owner_scale.get(id(param), 1.0)), []).append(param)
    out = []
    for scale in sorted({s for _, s in groups}, key=lambda s: s != 1.0):
        for decayed in (True, False):
            params = groups.get((decayed, scale))
            if params:
                group = {"params": params} if decayed else {"params": params, "weight_decay": 0.0}
                out.append(group if scale == 1.0 else {**group, "lr_scale": scale})
    return out


def check_schedule(
    warmup_steps: int, min_lr_ratio: float, schedule: str, plateau_factor: float = 0.25
) -> None:
    """Raise :class:`InputError` for a negative warmup, a final ratio outside [0, 1], an unknown schedule,
    a plateau factor outside (0, 1]."""
    field = "model.init_args"
    if schedule not in SCHEDULES:
        raise InputError(
            f"{field}.lr_schedule: unknown schedule '{schedule}'. Fix: use one of {', '.join(SCHEDULES)}."
        )
    if not 0.0 < plateau_factor <= 1.0:  # also NaN
        raise InputError(
            f"{field}.plateau_factor: expected a factor in (0, 1], got {plateau_factor}. "
            "Fix: give e.g. 0.25 (the learning rate divided by 4 when validation does not improve)."
        )
    if not warmup_steps >= 0:
        raise InputError(
            f"{field}.warmup_steps: expected a number of steps >= 0, got {warmup_steps}. "
            "Fix: give 0 (no warmup) or more."
        )
    if not 0.0 <= min_lr_ratio <= 1.0:  # also NaN
        raise InputError(
            f"{field}.min_lr_ratio: expected a fraction of the peak learning rate in [0, 1], got "
            f"{min_lr_ratio}. Fix: give e.g. 0.1 (1.0 keeps the rate constant after warmup)."
        )


# The words of torch's "Invalid ..." messages for arguments whose name they do not spell out.
_TORCH_WORDS = {"learning rate": "lr", "beta": "betas", "epsilon": "eps", "eta values": "etas"}
_HINTS = {
    "lr": "a learning rate >= 0, e.g. 3e-4",
    "betas": "two betas in [0, 1), e.g. [0.9, 0.999]",
    "eps": "an epsilon >= 0, e.g. 1e-8",
    "weight_decay": "a weight decay >= 0, e.g. 0.01 (0 for none)",
    "momentum": "a momentum >= 0, e.g. 0.9",
    "nesterov": "nesterov: true only with a momentum > 0 and dampening 0",
}


def check_optimizer(optimizer: OptimizerFactory, field: str, name: str | None = None) -> None:
    """Build the optimizer once over a throwaway parameter; a value torch rejects is an :class:`InputError`.

    torch checks its arguments when an optimizer is built (``Invalid learning rate: -1.0``), which
    Lightning does only once training starts, after the run folder exists. The message names the
    recipe field of the rejected argument (``model.init_args.optimizer.init_args.lr``) and the fix.

    Args:
        optimizer: the factory, ``optimizer(param_groups) -> torch.optim.Optimizer``.
        field: where the recipe sets the optimizer, e.g. ``model.init_args.optimizer``; or, with
            ``name``, the section of the recipe that builds it (``model``).
        name: the optimizer's name in the module, when the field that sets it is unknown.
    """
    if not callable(optimizer):  # not a factory at all: the module's own use of it reports that
        return
    probe = [{"params": [nn.Parameter(torch.zeros(1))]}]
    try:
        optimizer(probe)
    except ValueError as err:
        raise _optimizer_error(optimizer, field, err, name) from None
    except RuntimeError:  # device options (fused, capturable) a CPU parameter lacks: the real build decides
        return


def _optimizer_error(
    optimizer: OptimizerFactory, field: str, err: ValueError, name: str | None = None
) -> InputError:
    """The :class:`InputError` for torch's ``err`` about one argument of ``optimizer``."""
    settings = getattr(_unshared(optimizer), "keywords", None) or {}
    argument = _rejected_argument(str(err), settings)
    cls = _optimizer_class(optimizer) or "the optimizer"
    if name is not None:
        what = f"optimizer '{name}' ({cls}) rejects {argument or 'its settings'}"
    else:
        field, what = (f"{field}.init_args.{argument}" if argument else field), f"{cls} rejects it"
    hint = _HINTS.get(argument, f"a value {cls} accepts")
    return InputError(f"{field}: {what} ({str(err).rstrip('.')}). Fix: give {hint}.")


def _rejected_argument(message: str, settings: dict) -> str | None:
    """The argument torch's ``message`` is about: one of its words, or the first setting it names."""
    lowered = message.lower()
    for words, name in _TORCH_WORDS.items():
        if re.search(rf"\b{words}\b", lowered):
            return name
    named = [(m.start(), key) for key in settings if (m := re.search(rf"\b{re.escape(key)}\b", lowered))]
    if named:
        return min(named)[1]
    spelled = re.search(r"invalid (\w+) value", lowered)  # "Invalid rho value: -1" when rho is a default
    return spelled.group(1) if spelled else None


def _unshared(optimizer: OptimizerFactory) -> OptimizerFactory:
    return optimizer.factory if isinstance(optimizer, SharedFactory) else optimizer


def same_factory(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are one optimizer factory, either perhaps in a :class:`SharedFactory`."""
    return callable(a) and _unshared(a) is _unshared(b)


def _optimizer_class(optimizer: OptimizerFactory) -> str | None:
    """``torch.optim.AdamW`` for the class, a ``partial(AdamW, ...)`` or the command line's
    ``partial(instantiate, AdamW, ...)``."""
    factory = _unshared(optimizer)
    candidates = [factory.func, *factory.args] if isinstance(factory, functools.partial) else [factory]
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, torch.optim.Optimizer):
            module = "torch.optim" if candidate.__module__.startswith("torch.optim") else candidate.__module__
            return f"{module}.{candidate.__name__}"
    return None


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The linear warmup's multiplier of the peak rate at ``step``: ``(step + 1) / warmup``, then 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def lr_lambda(
    warmup_steps: int, total_steps: int, schedule: Schedule, min_lr_ratio: float
) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: ``step / warmup`` during warmup, then
    ``min + (1 - min) * (1 + cos(pi * progress)) / 2`` (cosine) or ``1`` (constant; and ``plateau``
    until a validation cuts it, see :class:`PlateauLR`)."""
    check_schedule(warmup_steps, min_lr_ratio, schedule)

    def factor(step: int) -> float:
        if step < warmup_steps or schedule != "cosine":
            return warmup_factor(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class PlateauLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warmup to the peak rate, then the rate times ``factor`` for each validation loss that did
    not improve on the best before it (:meth:`observe`); stepped every optimizer step.

    Its state (the best loss and the accumulated ``scale``) is in ``state_dict()``, so a resumed run
    goes on with the rate of an uninterrupted one.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int, factor: float):
        self.warmup_steps, self.factor = warmup_steps, factor
        self.best, self.scale = math.inf, 1.0
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        factor = warmup_factor(self.last_epoch, self.warmup_steps) * self.scale
        return [base * factor for base in self.base_lrs]

    def observe(self, loss: float) -> bool:
        """Take a validation loss; returns whether the rate was cut (from the next step on)."""
        if loss < self.best:
            self.best = loss
            return False
        self.scale *= self.factor
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return True


def configure_optimization(
    module: nn.Module,
    optimizer: OptimizerFactory,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule,
    min_lr_ratio: float,
    plateau_factor: float = 0.25,
    lr_scales: Mapping[str, float] | None = None,
) -> dict:
    """The ``configure_optimizers`` answer: optimizer over :func:`param_groups` + per-step schedule (the
    groups of ``lr_scales`` at their fraction of the optimizer's learning rate, warmed up and decayed
    with the others)."""
    opt = optimizer(param_groups(module, lr_scales))
    for group in opt.param_groups:
        group["lr"] *= group.pop("lr_scale", 1.0)
    if schedule == "plateau":
        check_schedule(warmup_steps, min_lr_ratio, schedule, plateau_factor)
        sched = PlateauLR(opt, warmup_steps, plateau_factor)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(warmup_steps, total_steps, schedule, min_lr_ratio)
        )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

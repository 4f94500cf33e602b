"""What every module shares: the constructor preamble, one ``_step(batch, stage)`` behind the
train/val/test hooks, the optimizers of the recipe with their warmup + cosine schedules, an eval-mode
switch for inference, and the per-rank state that makes resuming exact."""

import inspect
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from lightning_seq.errors import InputError
from lightning_seq.modules._optim import (
    OptimizerFactory,
    PlateauLR,
    Schedule,
    SharedFactory,
    check_optimizer,
    check_schedule,
    configure_optimization,
    same_factory,
)
from lightning_seq.modules._resume import (
    apply_loader_positions,
    gather_ranks,
    own_rank,
    rng_state,
    set_rng_state,
)
from lightning_seq.utils import evaluating, plain_hparams


@dataclass
class Optimization:
    """One optimizer of a module: what builds it, whose parameters it updates, and its schedule.

    Args:
        optimizer: the factory from the recipe, ``optimizer(param_groups) -> torch.optim.Optimizer``.
        params: the module whose parameters it updates (weight decay skips biases, norms, embeddings).
        warmup_steps: linear warmup of its learning rate from 0 over this many of its steps.
        lr_schedule: ``cosine`` decay to ``min_lr_ratio`` x peak after warmup, ``constant``, or
            ``plateau`` (times ``plateau_factor`` after each validation loss that is not the best).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
        plateau_factor: the cut of the ``plateau`` schedule.
        lr_scales: submodules of ``params`` (by name, e.g. ``{"net.encoder": 0.1}``) trained at their own
            fraction of the learning rate.
    """

    optimizer: OptimizerFactory
    params: nn.Module
    warmup_steps: int = 0
    lr_schedule: Schedule = "constant"
    min_lr_ratio: float = 1.0
    plateau_factor: float = 0.25
    lr_scales: dict[str, float] = field(default_factory=dict)


class NetModule(L.LightningModule):
    """Base of the modules: the net is passed in; a subclass states only what is its own.

    The constructor saves every argument of the subclass's constructor as hyperparameters (nets and
    optimizers as the ``class_path`` configs the command line gives, so a checkpoint rebuilds the
    model alone; see :func:`~lightning_seq.utils.plain_hparams`), checks the schedule, keeps the
    optimizer factory (shared, not copied, by copies of the module) and compiles the net on request.
    A subclass takes its own arguments and hands the rest on::

        class MyModel(NetModule):
            def __init__(self, net: nn.Module, label_smoothing: float = 0.0, **kwargs):
                super().__init__(net, **kwargs)

    and defines ``_step(batch, stage) -> {"loss": ...}``, shared by training, validation and test.

    **Optimizers.** By default one optimizer updates every parameter of the module, with the
    schedule of ``warmup_steps``, ``lr_schedule`` and ``min_lr_ratio``, stepped on every optimizer
    step. A module with several (a GAN's generator and discriminator) overrides
    :meth:`optimizations` to return them by name, each with its own parameters and schedule; it
    sets ``automatic_optimization = False`` and steps them itself, reaching each one with
    :meth:`named_optimizer` and :meth:`named_scheduler`. ``configure_optimizers`` then returns them in
    the order of :meth:`optimizations`.

    **Checkpoints** also keep each rank's :meth:`resume_state`, so that a run resumed from any step ends
    with the weights of an uninterrupted one. A subclass that overrides ``on_save_checkpoint`` or
    ``on_load_checkpoint`` (or ``on_train_start``) calls ``super()``.

    Args:
        net: the network (a ``class_path`` config from the recipe, or an ``nn.Module``).
        optimizer: optimizer class (and its arguments) from the recipe; default AdamW. Weight decay
            skips biases, norms, embeddings and the parameters a net names in ``no_weight_decay``.
        warmup_steps: linear warmup of the learning rate from 0 over this many steps.
        lr_schedule: ``cosine`` decay to ``min_lr_ratio`` x peak after warmup; ``constant``; or
            ``plateau``: constant after warmup, multiplied by ``plateau_factor`` after every
            validation whose ``val/loss`` is not below the best so far (the classic annealing of
            word-level language models).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
        plateau_factor: the cut of the ``plateau`` schedule, e.g. 0.25 (divide by 4).
        compile: compile the net with ``torch.compile``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory = torch.optim.AdamW,
        warmup_steps: int = 100,
        lr_schedule: Schedule = "cosine",
        min_lr_ratio: float = 0.1,
        plateau_factor: float = 0.25,
        compile: bool = False,
    ):
        super().__init__()
        with warnings.catch_warnings():  # a net built in Python is dropped below, not pickled
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()  # the arguments of every constructor up the chain
        plain_hparams(self)
        check_schedule(warmup_steps, min_lr_ratio, lr_schedule, plateau_factor)
        check_optimizer(optimizer, "model.init_args.optimizer")  # now, not once the run folder exists
        self.net = net
        self.optimizer = SharedFactory(optimizer)
        if compile:
            self.net.compile()

    # -------------------------------------------------------------------------------- steps
    def _step(self, batch, stage: str) -> dict:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> dict:
        return self._step(batch, "test")

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``stage/loss`` on the progress bar: every step in training; in validation and test, the
        epoch's mean over batches and ranks."""
        train = stage == "train"
        self.log(
            f"{stage}/loss", loss, prog_bar=True, on_step=train, on_epoch=not train, sync_dist=not train,
            batch_size=batch_size,
        )  # fmt: skip

    def evaluating(self) -> AbstractContextManager[None]:
        """``with self.evaluating():`` inference in eval mode without gradients; every submodule's own
        mode comes back afterwards (:func:`~lightning_seq.utils.evaluating`)."""
        return evaluating(self)

    # -------------------------------------------------------------------------------- optimizers
    def optimizations(self) -> dict[str, Optimization]:
        """The module's optimizers by name; by default one, ``"net"``, over all parameters."""
        return {"net": Optimization(self.optimizer, self, *self.schedule_settings())}

    def schedule_settings(self) -> tuple[int, Schedule, float, float]:
        """The recipe's ``(warmup_steps, lr_schedule, min_lr_ratio, plateau_factor)``, for
        :class:`Optimization`."""
        hp = self.hparams
        return hp.warmup_steps, hp.lr_schedule, hp.min_lr_ratio, hp.get("plateau_factor", 0.25)

    def check_optimizations(self) -> None:
        """Build each optimizer of :meth:`optimizations` once over a throwaway parameter: a value torch
        rejects (a negative learning rate, a beta of 1.5) is an :class:`InputError` naming the recipe
        field, or the optimizer. The CLI calls it as soon as the module is built, before the run folder
        exists; ``configure_optimizers`` calls it too."""
        for name, optimization in self.optimizations().items():
            if same_factory(optimization.optimizer, self.optimizer):
                continue  # the recipe's optimizer, checked by the constructor
            field = self._optimizer_field(optimization.optimizer)
            check_optimizer(optimization.optimizer, field or "model", None if field else name)

    def _optimizer_field(self, factory: OptimizerFactory) -> str | None:
        """``model.init_args.<argument>`` for a factory kept in an attribute named after a constructor
        argument (``self.critic_optimizer = SharedFactory(critic_optimizer)``)."""
        arguments = {*inspect.signature(type(self).__init__).parameters, *self.hparams}
        for attribute, value in vars(self).items():
            if attribute in arguments and same_factory(value, factory):
                return f"model.init_args.{attribute}"
        return None

    def configure_optimizers(self) -> dict | list[dict]:
        self.check_optimizations()
        total = self.trainer.estimated_stepping_batches
        setups = [
            configure_optimization(
                p.params,
                p.optimizer,
                total,
                p.warmup_steps,
                p.lr_schedule,
                p.min_lr_ratio,
                p.plateau_factor,
                p.lr_scales,
            )
            for p in self.optimizations().values()
        ]
        return setups[0] if len(setups) == 1 else setups

    def _optimizer_index(self, name: str) -> int:
        names = list(self.optimizations())
        if name not in names:
            raise InputError(f"{type(self).__name__}: no optimizer '{name}'; it has {', '.join(names)}.")
        return names.index(name)

    def named_optimizer(self, name: str) -> LightningOptimizer:
        """The optimizer called ``name`` in :meth:`optimizations` (for manual optimisation)."""
        optimizers = self.optimizers(use_pl_optimizer=True)
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self._optimizer_index(name)]

    def named_scheduler(self, name: str) -> torch.optim.lr_scheduler.LRScheduler:
        """The learning-rate schedule of the optimizer called ``name`` (step it after that optimizer)."""
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        return schedulers[self._optimizer_index(name)]

    def on_validation_epoch_end(self) -> None:
        """Hand this validation's ``val/loss`` to each ``plateau`` schedule (before the checkpoint of
        this validation is written, so that it holds the cut)."""
        if not self._fitting() or self.trainer.sanity_checking:
            return
        configs = self.trainer.lr_scheduler_configs
        plateaus = [c.scheduler for c in configs if isinstance(c.scheduler, PlateauLR)]
        if not plateaus:
            return
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is None:
            raise InputError(
                f"model.init_args.lr_schedule: 'plateau' follows val/loss, which {type(self).__name__} "
                "does not log in validation. Fix: use 'cosine' or 'constant'."
            )
        for scheduler in plateaus:
            scheduler.observe(float(loss))

    def data_parallel(self) -> bool:
        """Whether this run trains with DDP over two processes or more (in ``setup``: before the wrap)."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        return isinstance(strategy, DDPStrategy) and self.trainer.world_size > 1

    # ----------------------------------------------------------------------------- checkpoints
    def resume_state(self) -> dict:
        """This rank's state beyond weights and optimizer that training depends on; extend in subclasses."""
        return {"rng": rng_state()}

    def load_resume_state(self, state: dict) -> None:
        """Restore what :meth:`resume_state` returned."""
        set_rng_state(state["rng"])

    def on_train_start(self) -> None:
        apply_loader_positions(self.trainer)  # a subclass that overrides on_train_start calls super()

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self._fitting():
            checkpoint["resume_state"] = gather_ranks(self.resume_state(), self.trainer)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if not self._fitting() or "resume_state" not in checkpoint:
            return
        state = own_rank(checkpoint["resume_state"], self.trainer)
        if state is not None:
            self.load_resume_state(state)

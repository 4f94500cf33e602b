"""GAN: adversarial training of a generator and a discriminator with Lightning's manual optimisation.

Each training batch of real images ``x`` (labels ``y`` when conditional) is one **generator step**,
preceded by ``n_critic`` **discriminator steps** on equal parts of the batch::

    D step k:  L_D = l_real(D(x_k, y_k)) + l_fake(D(G(z_k, y_k), y_k)) [+ gamma/2 E ||grad_x D(x_k)||^2]
    G step:    L_G = l_gen(D(G(z, y), y))

with the non-saturating loss (``bce``, Goodfellow et al., 2014; real targets ``1 - label_smoothing``:
one-sided smoothing, Salimans et al., 2016)::

    l_real(s) = -log sigmoid(s),  l_fake(s) = -log(1 - sigmoid(s)),  l_gen(s) = -log sigmoid(s)

or the ``hinge`` loss (Lim & Ye, 2017; Miyato et al., 2018)::

    l_real(s) = max(0, 1 - s),  l_fake(s) = max(0, 1 + s),  l_gen(s) = -s

and an optional R1 penalty on real images (Mescheder et al., 2018). With ``aux_weight > 0`` (AC-GAN,
Odena et al., 2017) the discriminator's class head ``c`` (``DCGAN(aux_classifier=true)``) adds
``aux_weight * CE(c(x), y)`` on real images to ``L_D`` and ``aux_weight * CE(c(G(z, y)), y)`` to
``L_G``: a direct signal that the images show their class, logged as ``train/loss_aux``.

With ``n_critic = 1`` the generator step reuses the fakes of the discriminator step (one generator
forward a batch, as the reference DCGAN loop does).

**Steps.** Lightning counts every ``optimizer.step()`` of manual optimisation as a trainer step, so a
GAN would end at half its ``max_steps``. Here only the generator's step is counted: the discriminator's
goes through the strategy (precision, gradient-clipping callbacks) without advancing
``trainer.global_step``. ``max_steps``, ``val_check_interval``, ``every_n_train_steps``, the
progress bar and the logged ``step`` all count generator steps, one per batch, and both learning-rate
schedules advance once per generator step.

**Noise** ``z`` of an item is a function of ``(seed, step, item index, stream)``
(:func:`~lightning_seq.data.pixels.item_normals`), so a run draws the same noise in any batch
composition, in any number of processes and after a resume. Under DDP, batch norm uses the statistics
of the global batch (:func:`~lightning_seq.layers.sync_batch_norm`), so two processes train as one.

**EMA.** With ``ema_decay``, an exponential moving average of the generator's weights (and a copy of
its batch-norm statistics) is kept in ``generator_ema``, saved in checkpoints and used by
:meth:`sample` (hence image grids and FID/KID). Its decay warms up as ``min(decay, (1 + t) / (10 + t))``
at generator step ``t``, so that a short run's average is not dominated by the initial weights.
"""

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer, do_nothing_closure
from torch import Tensor, nn

from lightning_seq.data import pixels as px
from lightning_seq.errors import InputError
from lightning_seq.layers.batch_norm import sync_batch_norm
from lightning_seq.modules._base import Optimization
from lightning_seq.modules._generative import GenerativeModule, update_average
from lightning_seq.modules._optim import OptimizerFactory, SharedFactory

__all__ = ["GAN", "discriminator_loss", "generator_loss", "r1_penalty"]

Loss = Literal["bce", "hinge"]
_GENERATOR_STREAM = 1 << 12  # the generator step's noise; discriminator step k draws stream k
_VAL_STREAM = 1 << 13  # validation's noise, the same at every validation


def default_optimizer(params) -> torch.optim.Optimizer:
    """Adam with the DCGAN paper's settings: learning rate 2e-4, betas (0.5, 0.999)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def discriminator_loss(
    real: Tensor, fake: Tensor, loss: Loss = "bce", label_smoothing: float = 0.0
) -> Tensor:
    """The discriminator's loss of its scores (logits) on real and fake images, each ``(B,)``.

    Args:
        real: scores of real images.
        fake: scores of generated images.
        loss: ``bce`` (the real images' target is ``1 - label_smoothing``) or ``hinge``.
        label_smoothing: one-sided smoothing of the real target, for ``bce``.
    """
    if loss == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    target = torch.full_like(real, 1.0 - label_smoothing)
    return F.binary_cross_entropy_with_logits(real, target) + F.softplus(fake).mean()  # -log(1 - sigmoid)


def generator_loss(fake: Tensor, loss: Loss = "bce") -> Tensor:
    """The generator's loss of the discriminator's scores on its images ``(B,)``: the non-saturating
    ``-log sigmoid(s)`` (``bce``) or ``-s`` (``hinge``)."""
    return -fake.mean() if loss == "hinge" else F.softplus(-fake).mean()


def r1_penalty(scores: Tensor, images: Tensor) -> Tensor:
    """``E ||grad_x D(x)||^2`` over real images ``x`` (``images`` must require gradients), differentiable
    (the gradient's graph is kept so the penalty trains the discriminator)."""
    (grad,) = torch.autograd.grad(scores.sum(), images, create_graph=True)  # (B, C, H, W)
    return grad.pow(2).flatten(1).sum(1).mean()


class GAN(GenerativeModule):
    """Trains a generator/discriminator pair (e.g. :class:`~lightning_seq.nets.DCGAN`) adversarially.

    The net has ``generator(z (B, Z), labels) -> images (B, C, H, W)`` in ``[-1, 1]``,
    ``discriminator(images, labels) -> scores (B,)`` (logits), ``latent_size`` and ``num_classes``
    (None when unconditional). Logs ``train/loss_d``, ``train/loss_g``, ``train/d_real`` and
    ``train/d_fake`` (the discriminator's mean probability that real / generated images are real for
    ``bce``, its mean score for ``hinge``) every step, and the same as ``val/...`` on validation images
    with fixed noise; :class:`~lightning_seq.callbacks.SampleQuality` adds ``val/fid`` and ``val/kid``.

    Args:
        net: the generator and discriminator.
        loss: ``bce`` (non-saturating) or ``hinge``.
        n_critic: discriminator steps per generator step, each on ``1 / n_critic`` of the batch (an epoch
            is still one pass over the data: raise the batch size with it).
        label_smoothing: one-sided smoothing of the real target of the ``bce`` loss (e.g. 0.1).
        r1_gamma: weight ``gamma`` of the R1 penalty ``gamma / 2 * E ||grad D(x)||^2``; 0 turns it off.
        r1_every: apply R1 on every this many discriminator steps, weighted by ``r1_every`` (lazy
            regularisation, Karras et al., 2020): the same penalty on average, its double backward on a
            fraction of the steps.
        aux_weight: weight of AC-GAN's class losses (conditional nets whose discriminator has
            ``scores_and_classes`` returning class logits, e.g. ``DCGAN(aux_classifier=true)``); 0: off.
        ema_decay: decay of the moving average of the generator's weights; null keeps no average.
        discriminator_optimizer: the discriminator's optimizer; null: the same as ``optimizer`` (give
            another learning rate for the two time-scale update rule, Heusel et al., 2017).
        sync_batchnorm: under DDP, batch norm over the global batch (two processes train as one).
        seed: seeds the per-item noise.
        pixels: what the data's images hold (linked from the DataModule): ``symmetric`` or ``unit``.
        optimizer: the generator's optimizer; null: Adam, lr 2e-4, betas (0.5, 0.999) (the DCGAN paper's).
        warmup_steps: linear warmup of both learning rates, in generator steps.
        lr_schedule: ``constant`` or ``cosine`` (over the run's generator steps), for both optimizers.
        **kwargs: ``conditional`` and ``num_classes`` (the net needs the same ``num_classes``): see
            :class:`~lightning_seq.modules.GenerativeModule`; ``min_lr_ratio`` and ``compile``: see
            :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Loss = "bce",
        n_critic: int = 1,
        label_smoothing: float = 0.0,
        r1_gamma: float = 0.0,
        r1_every: int = 1,
        aux_weight: float = 0.0,
        ema_decay: float | None = 0.999,
        discriminator_optimizer: OptimizerFactory | None = None,
        sync_batchnorm: bool = True,
        seed: int = 0,
        pixels: px.Pixels = "symmetric",
        optimizer: OptimizerFactory | None = None,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine"] = "constant",
        **kwargs,
    ):
        _check_settings(
            net, loss, n_critic, label_smoothing, r1_gamma, r1_every, aux_weight, ema_decay, pixels
        )
        super().__init__(
            net, pixels=pixels, optimizer=optimizer or default_optimizer, warmup_steps=warmup_steps,
            lr_schedule=lr_schedule, **kwargs,
        )  # fmt: skip
        self.check_net_conditioning()
        self.automatic_optimization = False
        self.discriminator_optimizer = SharedFactory(discriminator_optimizer or self.optimizer)
        self.generator_ema: nn.Module | None = None
        if ema_decay is not None:
            self.generator_ema = copy.deepcopy(net.generator).requires_grad_(False)

    @property
    def latent_size(self) -> int:
        return int(self.net.latent_size)

    # -------------------------------------------------------------------------------- optimizers
    def optimizations(self) -> dict[str, Optimization]:
        """The discriminator's and the generator's optimizers, each over its own parameters."""
        schedule = self.schedule_settings()
        return {
            "discriminator": Optimization(self.discriminator_optimizer, self.net.discriminator, *schedule),
            "generator": Optimization(self.optimizer, self.net.generator, *schedule),
        }

    def setup(self, stage: str) -> None:
        if not self.data_parallel():
            return
        if self.hparams.sync_batchnorm:
            sync_batch_norm(self.net)
        # Each backward reaches only one of the two nets (the other is detached or frozen by the toggle),
        # which DDP's reducer accepts only when it looks for the parameters a backward did not use.
        self.trainer.strategy._ddp_kwargs["find_unused_parameters"] = True

    # -------------------------------------------------------------------------------- noise
    def item_noise(self, index: Tensor, stream: int) -> Tensor:
        """Latents ``(B, Z)`` for the items ``index (B,)``, keyed on the seed, the step and ``stream``."""
        z = px.item_normals(index, (self.latent_size,), self.hparams.seed, self.global_step, stream)
        return z.to(self.device)

    def _noise(self, batch: dict, stream: int) -> Tensor:
        index = batch.get("index")
        if index is None:
            return torch.randn(batch["image"].shape[0], self.latent_size, device=self.device)
        return self.item_noise(index, stream)

    # -------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        real = self.symmetric(batch["image"])  # (B, C, H, W) in [-1, 1]
        labels = self.batch_labels(batch)
        d_opt, g_opt = self.named_optimizer("discriminator"), self.named_optimizer("generator")
        n, size = self.hparams.n_critic, real.shape[0]
        if n == 1:  # one generator forward: the generator step reuses the discriminator step's fakes
            fake = self.net.generator(self._noise(batch, _GENERATOR_STREAM), labels)
            r1 = self.r1_weight(self.global_step)
            d_stats = self.discriminator_step(d_opt, real, fake.detach(), labels, r1)
        else:
            for k in range(n):  # discriminator step k on part k of the batch, with its own noise
                part = slice(size * k // n, size * (k + 1) // n)
                sub = {key: value[part] for key, value in batch.items()}
                sub_labels = self.batch_labels(sub)
                with torch.no_grad():
                    fakes = self.net.generator(self._noise(sub, k), sub_labels)
                r1 = self.r1_weight(self.global_step * n + k)
                d_stats = self.discriminator_step(d_opt, real[part], fakes, sub_labels, r1)
            fake = self.net.generator(self._noise(batch, _GENERATOR_STREAM), labels)
        g_stats = self.generator_step(g_opt, fake, labels)
        for name in ("discriminator", "generator"):
            self.named_scheduler(name).step()
        self.update_ema()
        # Only on the steps the loggers write (log_every_n_steps; the progress bar shows the newest):
        # each logged value costs Lightning about 1.5 ms on a CPU, 5% of this step for four of them.
        if self.trainer._logger_connector.should_update_logs:
            self.log_dict(
                {**d_stats, **g_stats}, prog_bar=True, on_step=True, on_epoch=False, batch_size=size
            )

    def r1_weight(self, d_step: int) -> float:
        """The R1 weight of the run's discriminator step ``d_step`` (from 0): ``r1_gamma * r1_every`` on
        every ``r1_every``-th, else 0 (a function of the step, so a resumed run penalises the same steps)."""
        hp = self.hparams
        return hp.r1_gamma * hp.r1_every if hp.r1_gamma > 0 and d_step % hp.r1_every == 0 else 0.0

    def discriminator_step(
        self,
        optimizer: LightningOptimizer,
        real: Tensor,
        fake: Tensor,
        labels: Tensor | None,
        r1_weight: float = 0.0,
    ) -> dict[str, Tensor]:
        """One update of the discriminator on real and (detached) fake images ``(b, C, H, W)`` in
        ``[-1, 1]``, with the R1 penalty weighted by ``r1_weight`` (0: none), not counted as a trainer
        step; its detached losses and outputs by metric name."""
        hp = self.hparams
        with self.toggled_optimizer(optimizer):
            if r1_weight > 0:
                real = real.detach().requires_grad_(True)
            real_scores, real_classes = self.discriminate(real, labels)  # (b,), (b, K) or None
            fake_scores, _ = self.discriminate(fake, labels)  # (b,)
            loss = discriminator_loss(real_scores, fake_scores, hp.loss, hp.label_smoothing)
            if r1_weight > 0:
                loss = loss + 0.5 * r1_weight * r1_penalty(real_scores, real)
            if real_classes is not None:
                loss = loss + hp.aux_weight * F.cross_entropy(real_classes, labels)
            optimizer.zero_grad()
            self.manual_backward(loss)
            # through the strategy (precision, on_before_optimizer_step callbacks) but not the
            # LightningOptimizer, whose step() Lightning counts as a trainer step
            self.trainer.strategy.optimizer_step(optimizer.optimizer, do_nothing_closure)
        return {"train/loss_d": loss.detach(), **self._outputs("train", real_scores, fake_scores)}

    def generator_step(
        self, optimizer: LightningOptimizer, fake: Tensor, labels: Tensor | None
    ) -> dict[str, Tensor]:
        """One update of the generator through the discriminator's scores of its images ``fake``
        (with their graph), counted as the trainer's step; its detached losses by metric name."""
        with self.toggled_optimizer(optimizer):
            scores, classes = self.discriminate(fake, labels)
            loss = generator_loss(scores, self.hparams.loss)
            stats = {"train/loss_g": loss.detach()}
            if classes is not None:
                aux = F.cross_entropy(classes, labels)
                loss = loss + self.hparams.aux_weight * aux
                stats["train/loss_aux"] = aux.detach()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return stats

    def discriminate(self, images: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The discriminator's scores ``(B,)`` and, when ``aux_weight > 0``, its class logits ``(B, K)``."""
        if self.hparams.aux_weight > 0:
            return self.net.discriminator.scores_and_classes(images, labels)
        return self.net.discriminator(images, labels), None

    def _outputs(self, stage: str, real_scores: Tensor, fake_scores: Tensor) -> dict[str, Tensor]:
        """``d_real`` and ``d_fake``: mean probabilities of "real" (``bce``) or mean scores (``hinge``)."""
        show = (lambda s: s) if self.hparams.loss == "hinge" else torch.sigmoid
        return {
            f"{stage}/d_real": show(real_scores.detach().float()).mean(),
            f"{stage}/d_fake": show(fake_scores.detach().float()).mean(),
        }

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the generator's average toward its weights (after a generator step); copy its buffers."""
        if self.generator_ema is not None:  # global_step: generator steps taken, this one included
            update_average(self.generator_ema, self.net.generator, self.hparams.ema_decay, self.global_step)

    # -------------------------------------------------------------------------------- evaluation
    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        """Validation and test: both losses on the split's images and fixed noise, no update."""
        real = self.symmetric(batch["image"])
        labels = self.batch_labels(batch)
        fake = self.generator(self._noise(batch, _VAL_STREAM), labels)
        real_scores = self.net.discriminator(real, labels)
        fake_scores = self.net.discriminator(fake, labels)
        values = {
            f"{stage}/loss_d": discriminator_loss(real_scores, fake_scores, self.hparams.loss),
            f"{stage}/loss_g": generator_loss(fake_scores, self.hparams.loss),
            **self._outputs(stage, real_scores, fake_scores),
        }
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, batch_size=real.shape[0])
        return values

    # -------------------------------------------------------------------------------- generation
    @property
    def generator(self) -> nn.Module:
        """The generator that samples: the moving average when kept, else the trained one."""
        return self.generator_ema if self.generator_ema is not None else self.net.generator

    def _sample(self, n: int, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        images = self.generator(self.noise(n, self.latent_size, generator=generator), labels)  # (n, C, H, W)
        return self.from_symmetric(images)


def _check_settings(
    net: nn.Module,
    loss: str,
    n_critic: int,
    label_smoothing: float,
    r1_gamma: float,
    r1_every: int,
    aux_weight: float,
    ema_decay: float | None,
    pixels: str,
) -> None:
    field = "model.init_args"
    for part in ("generator", "discriminator"):
        if not isinstance(getattr(net, part, None), nn.Module):
            raise InputError(
                f"{field}.net: a GAN needs a net with a `{part}`, got {type(net).__name__}. Fix: use "
                "lightning_seq.nets.DCGAN, or give your net `generator` and `discriminator` submodules."
            )
    if loss not in ("bce", "hinge"):
        raise InputError(f"{field}.loss: expected 'bce' (non-saturating) or 'hinge', got {loss!r}.")
    if not (isinstance(n_critic, int) and n_critic >= 1):
        raise InputError(f"{field}.n_critic: expected at least 1 D step per G step, got {n_critic}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"{field}.label_smoothing: expected a value in [0, 1); got {label_smoothing}.")
    if loss == "hinge" and label_smoothing:
        raise InputError(f"{field}.label_smoothing: only for the bce loss. Fix: set it to 0 with hinge.")
    if not (r1_gamma >= 0 and math.isfinite(r1_gamma)):
        raise InputError(f"{field}.r1_gamma: expected a weight >= 0 (0: no penalty), got {r1_gamma}.")
    if not (isinstance(r1_every, int) and r1_every >= 1):
        raise InputError(f"{field}.r1_every: expected R1 every 1 or more D steps, got {r1_every}.")
    if not (aux_weight >= 0 and math.isfinite(aux_weight)):
        raise InputError(f"{field}.aux_weight: expected a weight >= 0 (0: no class loss), got {aux_weight}.")
    head = getattr(net.discriminator, "classifier", True)  # DCGAN's: None without aux_classifier
    if aux_weight > 0 and (
        head is None or not callable(getattr(net.discriminator, "scores_and_classes", None))
    ):
        raise InputError(
            f"{field}.aux_weight: {aux_weight} weighs the auxiliary class losses, but the discriminator "
            "has no class head. Fix: set model.init_args.net.init_args.aux_classifier=true, or aux_weight=0."
        )
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise InputError(f"{field}.ema_decay: expected a decay in (0, 1) or null, got {ema_decay}.")
    if pixels in px.PIXELS and pixels not in ("symmetric", "unit"):
        raise InputError(
            f"{field}.pixels: a GAN's generator draws images in [-1, 1] (tanh), so it trains on 'symmetric' "
            f"(or 'unit') pixels, got '{pixels}'. Fix: set data.init_args.pixels=symmetric."
        )

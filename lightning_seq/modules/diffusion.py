"""Diffusion: trains a denoising diffusion model (DDPM, Ho et al., 2020) and samples it with DDPM or DDIM.

For an image ``x0`` in ``[-1, 1]``, a timestep ``t ~ U{0, ..., T-1}`` and noise ``eps ~ N(0, I)``::

    x_t  = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                    (q(x_t | x0) in closed form)
    loss = || net(x_t, t, y) - target ||^2                            (mean over pixels and images)

with ``target`` the noise (``epsilon``, the paper's simple loss), ``x0``, or ``v = sqrt(abar_t) eps -
sqrt(1 - abar_t) x0`` (Salimans & Ho, 2022). A class-conditional model replaces each label by the null
label with probability ``label_dropout``, so one net learns both ``p(x | y)`` and ``p(x)``, and sampling
can mix them with classifier-free guidance (Ho & Salimans, 2022):
``pred = pred(x | null) + w (pred(x | y) - pred(x | null))``.

Sampling runs the samplers of :mod:`lightning_seq.decoding.diffusion` over ``denoise(x_t, t, y)``:
``ddim`` (Song et al., 2021; ``sample_steps`` evenly spaced steps, ``eta`` 0 deterministic) or ``ddpm``
(ancestral, all ``T`` steps).

**EMA.** With ``ema_decay``, an exponential moving average of the net's weights is kept in ``net_ema``
(decay warmed up as ``min(decay, (1 + t) / (10 + t))`` at optimizer step ``t``): validation losses,
:meth:`sample` (hence image grids, FID and KID) use it, and checkpoints keep both, so a resumed run
continues both exactly and ``Diffusion.load_from_checkpoint(path).sample(...)`` draws from the average.

**Noise.** The timestep, noise and label dropout of an item are functions of ``(seed, step, item index)``
(:func:`~lightning_seq.data.pixels.item_uniforms`), so a run draws the same numbers in any batch
composition, in any number of processes and after a resume; validation and test draw the same numbers
at every validation, so ``val/loss`` is comparable across a run.
"""

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.data import pixels as px
from lightning_seq.decoding.diffusion import (
    Denoiser,
    NoiseSchedule,
    Parameterization,
    ScheduleKind,
    Variance,
    classifier_free_guidance,
    diffusion_sample,
)
from lightning_seq.errors import InputError
from lightning_seq.modules._base import Optimization
from lightning_seq.modules._generative import GenerativeModule, update_average
from lightning_seq.modules._optim import OptimizerFactory

__all__ = ["Diffusion"]

Sampler = Literal["ddpm", "ddim"]
_STREAMS = {"train": 0, "val": 1, "test": 2, "predict": 3}  # the numbers of each stage apart
_T, _NOISE, _DROP = 0, 1, 2  # the draws of an item, within a stage's streams


def default_optimizer(params) -> torch.optim.Optimizer:
    """Adam with the DDPM paper's learning rate, 2e-4."""
    return torch.optim.Adam(params, lr=2e-4)


class Diffusion(GenerativeModule):
    """Trains a denoising net (e.g. :class:`~lightning_seq.nets.UNet`) by the DDPM objective.

    The net has ``forward(x_t (B, C, H, W), t (B,), labels (B,) or None) -> (B, C, H, W)``,
    ``image_size``, ``in_channels``, and when conditional ``num_classes`` and ``null_label`` (the label of
    "no class"). Logs ``train/loss`` every step and ``val/loss`` (with the moving average, on fixed draws);
    :class:`~lightning_seq.callbacks.SampleQuality` adds ``val/fid``, ``val/kid`` and (conditional)
    ``val/cond_acc`` of :meth:`sample`'s images.

    Args:
        net: the denoising network.
        schedule: ``linear`` (Ho et al.'s betas, 1e-4 to 0.02 at T = 1000, rescaled by 1000/T) or
            ``cosine`` (Nichol & Dhariwal, 2021).
        timesteps: ``T``, the length of the forward chain.
        parameterization: what the net predicts: ``epsilon`` (the noise), ``x0`` or ``v``.
        label_dropout: share of training labels replaced by the null label (classifier-free guidance);
            conditional models only.
        guidance: the default guidance scale ``w`` of :meth:`sample` (1: the conditional model as it is;
            above 1: more like its class); conditional models only.
        sampler: the default sampler of :meth:`sample`: ``ddim`` or ``ddpm``.
        sample_steps: DDIM's default number of steps (null: 50, at most T); DDPM always takes all T.
        eta: DDIM's noise: 0 deterministic, 1 the variance of DDPM's posterior.
        variance: DDPM's step variance: ``fixed_small`` (the posterior's) or ``fixed_large`` (beta_t).
        clip_x0: sampling clips each predicted ``x0`` to ``[-clip_x0, clip_x0]``; null: no clipping.
        ema_decay: decay of the moving average of the weights; null keeps none (sampling uses the net).
        seed: seeds the per-item timesteps, noise and label dropout.
        pixels: what the data's images hold (linked from the DataModule): ``symmetric`` or ``unit``.
        optimizer: null: Adam, lr 2e-4 (the DDPM paper's).
        warmup_steps: linear warmup of the learning rate (the paper: 5000 steps).
        lr_schedule: ``constant`` (the paper's), ``cosine`` or ``plateau``.
        **kwargs: ``conditional`` and ``num_classes``: see
            :class:`~lightning_seq.modules.GenerativeModule`; ``min_lr_ratio``, ``plateau_factor`` and
            ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: ScheduleKind = "linear",
        timesteps: int = 1000,
        parameterization: Parameterization = "epsilon",
        label_dropout: float = 0.1,
        guidance: float = 1.0,
        sampler: Sampler = "ddim",
        sample_steps: int | None = None,
        eta: float = 0.0,
        variance: Variance = "fixed_small",
        clip_x0: float | None = 1.0,
        ema_decay: float | None = 0.999,
        seed: int = 0,
        pixels: px.Pixels = "symmetric",
        optimizer: OptimizerFactory | None = None,
        warmup_steps: int = 0,
        lr_schedule: Literal["constant", "cosine", "plateau"] = "constant",
        **kwargs,
    ):
        conditional = bool(kwargs.get("conditional", False))
        settings = (parameterization, label_dropout, guidance, ema_decay, clip_x0, pixels, conditional)
        _check_settings(net, *settings)
        super().__init__(
            net, pixels=pixels, optimizer=optimizer or default_optimizer, warmup_steps=warmup_steps,
            lr_schedule=lr_schedule, **kwargs,
        )  # fmt: skip
        self.check_net_conditioning()
        if self.num_classes is not None and label_dropout > 0 and getattr(net, "null_label", None) is None:
            raise InputError(
                "model.init_args.label_dropout: dropping labels needs a net with a `null_label` (the label "
                f"of no class), and {type(net).__name__} has none. Fix: give the net one (as "
                "lightning_seq.nets.UNet has), or set label_dropout=0."
            )
        self.schedule = NoiseSchedule(schedule, timesteps)  # not in checkpoints: rebuilt from the hparams
        self.check_sampling(sampler, sample_steps, eta, variance, None)  # guidance: checked above
        self.net_ema: nn.Module | None = None
        if ema_decay is not None:
            self.net_ema = copy.deepcopy(net).requires_grad_(False)

    # -------------------------------------------------------------------------------- optimizers
    def optimizations(self) -> dict[str, Optimization]:
        """One optimizer over the net's parameters (the moving average is not trained)."""
        return {"net": Optimization(self.optimizer, self.net, *self.schedule_settings())}

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.net_ema is not None:  # global_step counts this step once the optimizer has stepped
            update_average(self.net_ema, self.net, self.hparams.ema_decay, self.global_step + 1)

    # -------------------------------------------------------------------------------- training
    @property
    def denoiser_net(self) -> nn.Module:
        """The net that validates and samples: the moving average when kept, else the trained one."""
        return self.net_ema if self.net_ema is not None else self.net

    def draws(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor, Tensor]:
        """Each item's timestep ``(B,)``, noise ``(B, C, H, W)`` and uniform of the label dropout ``(B,)``:
        functions of the item's index (and in training the step) when the batch has ``"index"``."""
        images, index = batch["image"], batch.get("index")
        size, shape, steps = images.shape[0], images.shape[1:], self.schedule.timesteps
        if index is None:
            t = torch.randint(0, steps, (size,), device=self.device)
            return t, torch.randn(size, *shape, device=self.device), torch.rand(size, device=self.device)
        seed, step = self.hparams.seed, self.global_step if stage == "train" else 0
        streams = 4 * _STREAMS.get(stage, 0)
        u = px.item_uniforms(index, (), seed, step, streams + _T)  # (B,)
        t = (u * steps).long().clamp_(max=steps - 1).to(self.device)
        noise = px.item_normals(index, tuple(shape), seed, step, streams + _NOISE).to(self.device)
        drop = px.item_uniforms(index, (), seed, step, streams + _DROP).to(self.device)
        return t, noise, drop

    def compute_loss(
        self, net: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None
    ) -> Tensor:
        """The mean squared error of ``net``'s prediction at ``x_t = q_sample(x0, t, noise)`` against the
        target of the parameterisation."""
        x_t = self.schedule.q_sample(x0, t, noise)  # (B, C, H, W)
        prediction = net(x_t, t, labels)
        target = self.schedule.target(x0, noise, t, self.hparams.parameterization)
        return F.mse_loss(prediction.float(), target.float())

    def _step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        x0 = self.symmetric(batch["image"])  # (B, C, H, W) in [-1, 1]
        labels = self.batch_labels(batch)
        t, noise, drop = self.draws(batch, stage)
        train = stage == "train"
        if train and labels is not None and self.hparams.label_dropout > 0:
            labels = torch.where(drop < self.hparams.label_dropout, self.net.null_label, labels)
        loss = self.compute_loss(self.net if train else self.denoiser_net, x0, t, noise, labels)
        self.log_loss(stage, loss, x0.shape[0])
        return {"loss": loss}

    # -------------------------------------------------------------------------------- sampling
    def denoiser(self, guidance: float | None = None) -> Denoiser:
        """``denoise(x_t, t, labels)`` of the sampling net, with classifier-free guidance of scale
        ``guidance`` (default: the model's) when conditional and not 1."""
        net = self.denoiser_net
        scale = self.hparams.guidance if guidance is None else guidance
        if self.num_classes is not None and scale != 1.0:
            return classifier_free_guidance(net, scale, net.null_label)
        return net

    def sample(
        self,
        n: int,
        *,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        sampler: Sampler | None = None,
        steps: int | None = None,
        eta: float | None = None,
        guidance: float | None = None,
    ) -> Tensor:
        """``n`` images ``(n, C, H, W)`` in the data's pixel convention, on this module's device.

        Args:
            n: how many.
            labels: ``(n,)`` class ids for a conditional model; default ``arange(n) % num_classes``.
            generator: the source of randomness; the same state gives the same images.
            sampler: ``ddim`` or ``ddpm``; default the model's ``sampler``.
            steps: DDIM's steps; default the model's ``sample_steps``.
            eta: DDIM's noise; default the model's ``eta``.
            guidance: the classifier-free guidance scale (conditional models); default the model's.
        """
        self.check_sampling(sampler, steps, eta, None, guidance)
        options = {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance}
        return super().sample(n, labels=labels, generator=generator, **options)

    def _sample(
        self,
        n: int,
        labels: Tensor | None,
        generator: torch.Generator | None,
        sampler: Sampler | None = None,
        steps: int | None = None,
        eta: float | None = None,
        guidance: float | None = None,
        on_step=None,
    ) -> Tensor:
        hp = self.hparams
        sampler = sampler or hp.sampler
        shape = (n, self.net.in_channels, self.net.image_size, self.net.image_size)
        steps = (steps or self.sample_steps) if sampler == "ddim" else None  # DDPM takes all T
        images = diffusion_sample(
            self.denoiser(guidance), self.schedule, shape, sampler=sampler, steps=steps,
            eta=hp.eta if eta is None else eta, variance=hp.variance, cond=labels,
            parameterization=hp.parameterization, clip_x0=hp.clip_x0, generator=generator, device=self.device,
            on_step=on_step,
        )  # fmt: skip
        return self.from_symmetric(images.clamp(-1.0, 1.0))

    def denoising_trajectory(
        self,
        n: int,
        *,
        frames: int = 8,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The sampler's way from noise to images: ``(frames, n, C, H, W)`` in the data's pixel convention,
        ``x_t`` at ``frames - 1`` evenly spaced steps of the default sampler, then the final images."""
        labels = self._sample_labels(n, labels)
        kept: list[Tensor] = []
        with self.evaluating():
            total = self.schedule.timesteps if self.hparams.sampler == "ddpm" else self.sample_steps
            wanted = {round(i * (total - 1) / max(frames - 2, 1)) for i in range(frames - 1)}
            calls = iter(range(total))

            def keep(t: int, x_t: Tensor, x0: Tensor) -> None:
                if next(calls) in wanted:
                    kept.append(self.from_symmetric(x_t.clamp(-1.0, 1.0)))

            final = self._sample(n, labels, generator, on_step=keep)
        return torch.stack([*kept, final])  # (frames, n, C, H, W)

    @property
    def sample_steps(self) -> int:
        """DDIM's default number of steps: ``sample_steps``, or 50 (at most T)."""
        return self.hparams.sample_steps or min(50, self.schedule.timesteps)

    def check_sampling(self, sampler, steps, eta, variance, guidance) -> None:
        """:class:`InputError` for sampling settings that cannot work, naming the field."""
        field, total = "model.init_args", self.schedule.timesteps
        if sampler is not None and sampler not in ("ddpm", "ddim"):
            raise InputError(f"{field}.sampler: expected 'ddim' or 'ddpm', got {sampler!r}.")
        if steps is not None and not (isinstance(steps, int) and 1 <= steps <= total):
            raise InputError(f"{field}.sample_steps: expected DDIM steps in 1..{total} (T), got {steps}.")
        if eta is not None and not (eta >= 0 and math.isfinite(eta)):
            raise InputError(f"{field}.eta: expected DDIM's noise scale >= 0 (0: deterministic), got {eta}.")
        if variance is not None and variance not in ("fixed_small", "fixed_large"):
            raise InputError(f"{field}.variance: expected 'fixed_small' or 'fixed_large', got {variance!r}.")
        if guidance is not None:
            _check_guidance(guidance, self.num_classes is not None, self.hparams.label_dropout)


def _check_guidance(guidance: float, conditional: bool, label_dropout: float) -> None:
    field = "model.init_args.guidance"
    if not (guidance >= 0 and math.isfinite(guidance)):
        raise InputError(f"{field}: expected a scale >= 0 (1: no guidance), got {guidance}.")
    if guidance != 1.0 and not conditional:
        raise InputError(
            f"{field}: classifier-free guidance ({guidance}) needs a class-conditional model. Fix: set "
            "model.init_args.conditional=true with labelled data (data.init_args.labels=class), or "
            "guidance=1."
        )
    if guidance != 1.0 and label_dropout <= 0:
        raise InputError(
            f"{field}: guidance {guidance} mixes the conditional and the unconditional model, and with "
            "label_dropout=0 the unconditional one is never trained. Fix: set model.init_args.label_dropout "
            "(e.g. 0.1), or guidance=1."
        )


def _check_settings(
    net: nn.Module,
    parameterization: str,
    label_dropout: float,
    guidance: float,
    ema_decay: float | None,
    clip_x0: float | None,
    pixels: str,
    conditional: bool,
) -> None:
    field = "model.init_args"
    for name in ("image_size", "in_channels"):
        if not isinstance(getattr(net, name, None), int):
            raise InputError(
                f"{field}.net: a diffusion model needs a net with `{name}` (it sets the samples' shape), got "
                f"{type(net).__name__}. Fix: use lightning_seq.nets.UNet, or give your net that attribute."
            )
    if parameterization not in ("epsilon", "x0", "v"):
        raise InputError(
            f"{field}.parameterization: expected 'epsilon', 'x0' or 'v', got {parameterization!r}."
        )
    if not 0.0 <= label_dropout < 1.0:
        raise InputError(f"{field}.label_dropout: expected a share in [0, 1), got {label_dropout}.")
    _check_guidance(guidance, conditional, label_dropout)
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise InputError(f"{field}.ema_decay: expected a decay in (0, 1) or null, got {ema_decay}.")
    if clip_x0 is not None and not clip_x0 > 0:
        raise InputError(f"{field}.clip_x0: expected a bound > 0 (1: the pixels' range) or null; {clip_x0}.")
    if pixels in px.PIXELS and pixels not in ("symmetric", "unit"):
        raise InputError(
            f"{field}.pixels: a diffusion model draws images in [-1, 1], so it trains on 'symmetric' (or "
            f"'unit') pixels, got '{pixels}'. Fix: set data.init_args.pixels=symmetric."
        )

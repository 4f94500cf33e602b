"""Noise schedules and samplers of denoising diffusion models (DDPM, DDIM, classifier-free guidance).

A sampler drives any network through one function of the noisy images::

    denoise(x_t (B, C, H, W), t (B,), cond) -> prediction (B, C, H, W)

``t`` holds long timesteps in ``0..T-1`` (index ``t`` is Ho et al.'s step ``t + 1``), ``cond`` is ``(B,)``
long class ids or ``None`` and is handed over as the caller gave it, and the prediction is the noise
(``epsilon``), the clean image (``x0``) or the velocity ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``
(Salimans & Ho, 2022). :class:`NoiseSchedule` holds the forward chain
``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``, its closed form
``q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I)`` with ``abar_t = prod_{s<=t} (1 - beta_s)``, the
posterior ``q(x_{t-1} | x_t, x0)`` and the conversions between the parameterisations. The samplers run
backwards from ``x_T ~ N(0, I)``: :func:`ddpm_sample` draws every step of the chain (Ho et al., 2020),
:func:`ddim_sample` takes an evenly spaced subset of the steps (Song et al., 2021; deterministic at
``eta = 0``), and :func:`classifier_free_guidance` mixes a conditional and an unconditional prediction
(Ho & Salimans, 2022). All the randomness comes from ``generator`` on the generator's device, so a
generator state gives the same images on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import standard_normal

__all__ = [
    "Denoiser",
    "NoiseSchedule",
    "Parameterization",
    "ScheduleKind",
    "Variance",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_sigma",
    "ddim_timesteps",
    "ddpm_sample",
    "diffusion_sample",
]

Parameterization = Literal["epsilon", "x0", "v"]
ScheduleKind = Literal["linear", "cosine"]
Variance = Literal["fixed_small", "fixed_large"]
Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]
OnStep = Callable[[int, Tensor, Tensor], None]

_PARAMETERIZATIONS = ("epsilon", "x0", "v")


class NoiseSchedule(nn.Module):
    """The forward chain ``beta_0..beta_{T-1}`` and the quantities derived from it.

    ``linear``: ``beta_t = linspace(beta_start * 1000 / T, beta_end * 1000 / T, T)`` (Ho et al., 2020: 1e-4 to
    0.02 at T = 1000; rescaled so that a shorter chain still ends in noise). ``cosine`` (Nichol & Dhariwal,
    2021): ``abar(t) = f(t) / f(0)``, ``f(t) = cos^2((t / T + s) / (1 + s) * pi / 2)``,
    ``beta_t = 1 - abar(t + 1) / abar(t)``. Both are clipped at ``max_beta`` and computed in float64.

    The float32 buffers (not saved in checkpoints: the arguments rebuild them) are ``betas``,
    ``alphas_cumprod`` (``abar_t``), ``alphas_cumprod_prev`` (``abar_{t-1}``, 1 at t = 0), their square roots,
    and the posterior ``q(x_{t-1} | x_t, x0) = N(coef1_t x0 + coef2_t x_t, beta~_t I)`` (Ho et al., eq. 6-7):
    ``beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (``posterior_variance``; its log clipped with
    ``beta~_1`` at t = 0), ``coef1_t = beta_t sqrt(abar_{t-1}) / (1 - abar_t)``,
    ``coef2_t = (1 - abar_{t-1}) sqrt(alpha_t) / (1 - abar_t)``.

    The methods take ``t`` as ``(B,)`` long timesteps and broadcast the coefficients over any number of
    trailing dims; their results follow torch's type promotion of the float32 coefficients with the inputs.

    Args:
        kind: ``linear`` or ``cosine``.
        timesteps: ``T``, the length of the chain (>= 2).
        beta_start: the linear schedule's first beta at T = 1000.
        beta_end: the linear schedule's last beta at T = 1000.
        cosine_s: the cosine schedule's offset ``s``.
        max_beta: the largest beta.
    """

    def __init__(
        self,
        kind: ScheduleKind = "linear",
        timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
    ):
        super().__init__()
        _check_schedule(kind, timesteps, beta_start, beta_end, cosine_s, max_beta)
        self.kind, self.timesteps = kind, timesteps
        if kind == "linear":
            betas = _linear_betas(timesteps, beta_start, beta_end, max_beta)
        else:
            betas = _cosine_betas(timesteps, cosine_s, max_beta)
        for name, value in _derived(betas).items():
            self.register_buffer(name, value.float(), persistent=False)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, timesteps={self.timesteps}"

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, a draw of ``q(x_t | x0)``."""
        a, b = self._scales(t, x0)
        return a * x0 + b * noise

    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q(x_{t-1} | x_t, x0)``: ``(mean, variance, log_variance)``, the last two ``(B, 1, ..., 1)``.

        ``mean = coef1_t x0 + coef2_t x_t``, ``variance = beta~_t``, ``log_variance`` clipped (``beta~_1`` at
        t = 0).
        """
        mean = _at(self.posterior_mean_coef1, t, x_t) * x0 + _at(self.posterior_mean_coef2, t, x_t) * x_t
        variance = _at(self.posterior_variance, t, x_t)
        return mean, variance, _at(self.posterior_log_variance_clipped, t, x_t)

    def to_x0(self, x_t: Tensor, t: Tensor, prediction: Tensor, parameterization: Parameterization) -> Tensor:
        """The clean image a prediction implies: from ``eps``, ``(x_t - sqrt(1 - abar_t) eps) /
        sqrt(abar_t)``; from ``v``, ``sqrt(abar_t) x_t - sqrt(1 - abar_t) v``."""
        _check_parameterization(parameterization)
        a, b = self._scales(t, x_t)
        if parameterization == "epsilon":
            return (x_t - b * prediction) / a
        if parameterization == "v":
            return a * x_t - b * prediction
        return prediction

    def to_epsilon(
        self, x_t: Tensor, t: Tensor, prediction: Tensor, parameterization: Parameterization
    ) -> Tensor:
        """The noise a prediction implies: from ``x0``, ``(x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``;
        from ``v``, ``sqrt(1 - abar_t) x_t + sqrt(abar_t) v``."""
        _check_parameterization(parameterization)
        a, b = self._scales(t, x_t)
        if parameterization == "x0":
            return (x_t - a * prediction) / b
        if parameterization == "v":
            return b * x_t + a * prediction
        return prediction

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, parameterization: Parameterization) -> Tensor:
        """What the net learns to predict at ``x_t = q_sample(x0, t, noise)``: ``noise``, ``x0`` or
        ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0``."""
        _check_parameterization(parameterization)
        if parameterization == "epsilon":
            return noise
        if parameterization == "x0":
            return x0
        a, b = self._scales(t, x0)
        return a * noise - b * x0

    def _scales(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)``, each ``(B, 1, ..., 1)``."""
        return _at(self.sqrt_alphas_cumprod, t, x), _at(self.sqrt_one_minus_alphas_cumprod, t, x)


def _linear_betas(timesteps: int, beta_start: float, beta_end: float, max_beta: float) -> Tensor:
    scale = 1000 / timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, timesteps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def _cosine_betas(timesteps: int, s: float, max_beta: float) -> Tensor:
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps  # (T + 1,), t / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)  # (T,)


def _derived(betas: Tensor) -> dict[str, Tensor]:
    """The float64 buffers of a schedule of ``betas (T,)``."""
    alphas = 1 - betas
    alphas_cumprod = alphas.cumprod(0)
    alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
    return {
        "betas": betas,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
        "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
        "posterior_mean_coef2": (1 - alphas_cumprod_prev) * alphas.sqrt() / (1 - alphas_cumprod),
    }


def _at(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``values[t]`` shaped ``(B, 1, ..., 1)`` to broadcast over ``x (B, ...)``, on ``x``'s device."""
    picked = values[t.to(values.device)].to(x.device)  # (B,)
    return picked.reshape(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)


def _check_schedule(
    kind: str, timesteps: int, beta_start: float, beta_end: float, cosine_s: float, max_beta: float
) -> None:
    field = "model.init_args"
    if kind not in ("linear", "cosine"):
        raise InputError(f"{field}.schedule: expected one of linear, cosine, got {kind!r}.")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise InputError(f"{field}.timesteps: expected an integer >= 2 (the paper: 1000), got {timesteps!r}.")
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end), ("max_beta", max_beta)):
        if not 0 < value < 1:
            raise InputError(f"NoiseSchedule.{name}: expected a beta in (0, 1), got {value!r}.")
    if not cosine_s >= 0:
        raise InputError(
            f"NoiseSchedule.cosine_s: expected an offset >= 0 (the paper: 0.008), got {cosine_s!r}."
        )


def _check_parameterization(parameterization: str) -> None:
    if parameterization not in _PARAMETERIZATIONS:
        raise InputError(
            f"model.init_args.parameterization: expected one of epsilon, x0, v, got {parameterization!r}."
        )


# ------------------------------------------------------------------------------------------------ samplers


def ddim_timesteps(timesteps: int, steps: int) -> Tensor:
    """``steps`` evenly spaced timesteps from ``T - 1`` down to 0: ``round(linspace(T - 1, 0, steps))``.

    Strictly decreasing (the spacing is at least 1); one step is ``[T - 1]``, the one level from which a
    single prediction of ``x0`` makes sense.

    Returns:
        ``(steps,)`` long tensor on the CPU.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= timesteps:
        raise InputError(f"steps: expected a number of sampling steps in 1..{timesteps} (T), got {steps!r}.")
    return torch.linspace(timesteps - 1, 0, steps, dtype=torch.float64).round().long()


def ddim_sigma(alphas_cumprod: Tensor, alphas_cumprod_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale (Song et al., 2021, eq. 16) of a step from ``abar_t`` to ``abar_prev``:

    ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)``; with ``eta = 1`` over
    all T steps ``sigma^2`` is DDPM's posterior variance ``beta~_t``.
    """
    abar, abar_prev = alphas_cumprod, alphas_cumprod_prev
    return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()


def classifier_free_guidance(denoise: Denoiser, scale: float, null_cond: int) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans, 2022): ``pred = u + scale (c - u)`` with ``c`` the prediction
    given ``cond`` and ``u`` given the null class ``null_cond``, in one call of ``denoise`` on ``2B`` items.

    ``scale`` 1 is the conditional model, 0 the unconditional one. With ``cond = None`` the guided
    denoiser is the unconditional model: one call with ``null_cond`` for every item.
    """

    def guided(x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            return denoise(x_t, t, torch.full_like(t, null_cond))
        both = denoise(
            torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, torch.full_like(cond, null_cond)])
        )  # (2B, C, H, W)
        conditional, unconditional = both.chunk(2)  # (B, C, H, W) each
        return unconditional + scale * (conditional - unconditional)

    return guided


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    cond: Tensor | None = None,
    parameterization: Parameterization = "epsilon",
    variance: Variance = "fixed_small",
    clip_x0: float | None = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """Ancestral sampling (Ho et al., 2020), all T steps: from ``x_T ~ N(0, I)``, for ``t = T-1 .. 0``,
    ``x0_hat = clip(to_x0(denoise(x_t, t, cond)))`` and ``x_{t-1} = mean~_t(x0_hat, x_t) + sigma_t z``,
    ``z ~ N(0, I)``, with no noise at t = 0.

    Args:
        denoise: ``(x_t, t, cond) -> prediction`` (see the module docstring).
        schedule: the chain the net was trained on.
        shape: ``(B, C, H, W)`` (any trailing dims) of the samples.
        cond: ``(B,)`` class ids handed to ``denoise`` unchanged (None: unconditional).
        parameterization: what ``denoise`` predicts: ``epsilon``, ``x0`` or ``v``.
        variance: ``sigma_t^2``: ``fixed_small`` the posterior's ``beta~_t``, ``fixed_large`` ``beta_t``.
        clip_x0: clip each ``x0_hat`` to ``[-clip_x0, clip_x0]``; None: no clipping.
        generator: the source of ``x_T`` and of every step's noise.
        device: where the samples are built (default the schedule's).
        on_step: called as ``on_step(t, x_t, x0_hat)`` at every step, before the update.

    Returns:
        ``(B, C, H, W)`` float32 samples.
    """
    device = _check_sampling(schedule, shape, cond, parameterization, clip_x0, device)
    if variance not in ("fixed_small", "fixed_large"):
        raise InputError(f"variance: expected one of fixed_small, fixed_large, got {variance!r}.")
    small = schedule.posterior_variance
    step_variance = small if variance == "fixed_small" else torch.cat([small[1:2], schedule.betas[1:]])
    std = step_variance.sqrt().to(device)  # (T,)
    x = standard_normal(shape, generator, device)  # (B, C, H, W), x_T
    for i in reversed(range(schedule.timesteps)):
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)  # (B,)
        x0 = _predict_x0(denoise, schedule, x, t, cond, parameterization, clip_x0)
        if on_step is not None:
            on_step(i, x, x0)
        mean, _, _ = schedule.posterior(x0, x, t)
        x = mean + std[i] * standard_normal(shape, generator, device) if i > 0 else mean
    return x


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    eta: float = 0.0,
    cond: Tensor | None = None,
    parameterization: Parameterization = "epsilon",
    clip_x0: float | None = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    on_step: OnStep | None = None,
) -> Tensor:
    """DDIM (Song et al., 2021, eq. 12) over the timesteps of :func:`ddim_timesteps`: from ``x_T ~ N(0, I)``,
    at each ``t`` with the next timestep ``prev`` (``abar_prev = 1`` after the last step),

    ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z``, ``sigma`` of
    :func:`ddim_sigma`, ``eps_hat`` recomputed from the clipped ``x0_hat`` and ``x_t`` so that the two agree.

    Args:
        denoise: ``(x_t, t, cond) -> prediction`` (see the module docstring).
        schedule: the chain the net was trained on.
        shape: ``(B, C, H, W)`` (any trailing dims) of the samples.
        steps: how many steps (calls of ``denoise``), 1..T.
        eta: the noise, >= 0: 0 deterministic, 1 the posterior's variance of the skipping chain.
        cond: ``(B,)`` class ids handed to ``denoise`` unchanged (None: unconditional).
        parameterization: what ``denoise`` predicts: ``epsilon``, ``x0`` or ``v``.
        clip_x0: clip each ``x0_hat`` to ``[-clip_x0, clip_x0]``; None: no clipping.
        generator: the source of ``x_T`` and of every step's noise.
        device: where the samples are built (default the schedule's).
        on_step: called as ``on_step(t, x_t, x0_hat)`` at every step, before the update.

    Returns:
        ``(B, C, H, W)`` float32 samples.
    """
    device = _check_sampling(schedule, shape, cond, parameterization, clip_x0, device)
    _check_eta(eta)
    timesteps = ddim_timesteps(schedule.timesteps, steps)  # (S,)
    abar = schedule.alphas_cumprod.double().cpu()[timesteps]  # (S,)
    abar_prev = torch.cat([abar[1:], abar.new_ones(1)])  # (S,)
    sigma = ddim_sigma(abar, abar_prev, eta)  # (S,)
    keep = abar_prev.sqrt().float().to(device)  # (S,)
    direction = (1 - abar_prev - sigma**2).clamp(min=0).sqrt().float().to(device)  # (S,)
    sigma = sigma.float().to(device)  # (S,)
    x = standard_normal(shape, generator, device)  # (B, C, H, W), x_T
    for k, i in enumerate(timesteps.tolist()):
        t = torch.full((shape[0],), i, dtype=torch.long, device=device)  # (B,)
        x0 = _predict_x0(denoise, schedule, x, t, cond, parameterization, clip_x0)
        if on_step is not None:
            on_step(i, x, x0)
        eps = schedule.to_epsilon(x, t, x0, "x0")
        x = keep[k] * x0 + direction[k] * eps
        if eta > 0 and k < len(timesteps) - 1:
            x = x + sigma[k] * standard_normal(shape, generator, device)
    return x


def diffusion_sample(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    sampler: Literal["ddpm", "ddim"] = "ddim",
    steps: int | None = None,
    eta: float = 0.0,
    **kwargs,
) -> Tensor:
    """Sample with :func:`ddpm_sample` or :func:`ddim_sample`.

    Args:
        denoise: ``(x_t, t, cond) -> prediction`` (see the module docstring).
        schedule: the chain the net was trained on.
        shape: ``(B, C, H, W)`` of the samples.
        sampler: ``ddpm`` or ``ddim``.
        steps: None: all T for ``ddpm``, 50 (at most T) for ``ddim``; ``ddpm`` takes no other number than T.
        eta: DDIM's noise, >= 0 (``ddpm`` ignores it).
        **kwargs: the samplers' other keywords: ``cond``, ``parameterization``, ``clip_x0``, ``generator``,
            ``device``, ``on_step``, and DDPM's ``variance`` (``ddim`` ignores it).

    Returns:
        ``(B, C, H, W)`` float32 samples.
    """
    total = schedule.timesteps
    _check_eta(eta)
    if sampler == "ddpm":
        if steps is not None and steps != total:
            raise InputError(
                f"steps: DDPM takes all T steps, expected None or {total}, got {steps!r}; use sampler='ddim' "
                "for fewer steps."
            )
        return ddpm_sample(denoise, schedule, shape, **kwargs)
    if sampler == "ddim":
        kwargs.pop("variance", None)
        steps = min(50, total) if steps is None else steps
        return ddim_sample(denoise, schedule, shape, steps=steps, eta=eta, **kwargs)
    raise InputError(f"sampler: expected one of ddpm, ddim, got {sampler!r}.")


def _check_sampling(
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    cond: Tensor | None,
    parameterization: str,
    clip_x0: float | None,
    device: torch.device | str | None,
) -> torch.device:
    """Raise on settings no sampler can use; return the device the samples are built on."""
    _check_parameterization(parameterization)
    if clip_x0 is not None and not clip_x0 > 0:
        raise InputError(f"clip_x0: expected a bound > 0 (1: the pixels' range) or None, got {clip_x0!r}.")
    if cond is not None and (cond.dim() != 1 or cond.size(0) != shape[0]):
        raise InputError(
            f"cond: expected one class id per sample, shape ({shape[0]},), got {tuple(cond.shape)}; "
            "pass one label per image or None."
        )
    return torch.device(device) if device is not None else schedule.betas.device


def _check_eta(eta: float) -> None:
    if not (eta >= 0 and math.isfinite(eta)):
        raise InputError(
            f"eta: expected DDIM's noise scale >= 0 (0: deterministic, 1: stochastic), got {eta!r}."
        )


def _predict_x0(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    cond: Tensor | None,
    parameterization: Parameterization,
    clip_x0: float | None,
) -> Tensor:
    """``x0_hat`` of ``denoise``'s prediction at ``x_t``, clipped to ``[-clip_x0, clip_x0]`` when asked; in
    ``x_t``'s dtype whatever the prediction's (e.g. bf16 under autocast)."""
    prediction = denoise(x_t, t, cond).to(x_t.dtype)
    x0 = schedule.to_x0(x_t, t, prediction, parameterization)
    return x0 if clip_x0 is None else x0.clamp(-clip_x0, clip_x0)

"""Diffusion schedules and samplers against known answers: the papers' formulas recomputed here in float64,
Monte Carlo of the forward chain, and the exact denoiser of Gaussian data, for which every sampler step is
linear, so the distribution of its samples is known in closed form."""

import math

import pytest
import torch
from torch import Tensor

from lightning_seq.decoding import (
    NoiseSchedule,
    classifier_free_guidance,
    ddim_sample,
    ddim_sigma,
    ddim_timesteps,
    ddpm_sample,
    diffusion_sample,
)
from lightning_seq.errors import InputError

PARAMETERIZATIONS = ("epsilon", "x0", "v")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _stats(betas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``alpha_t``, ``abar_t`` and ``abar_{t-1}`` in float64, from the betas alone."""
    betas = betas.double()
    alphas = 1 - betas
    abar = alphas.cumprod(0)
    return alphas, abar, torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])


def gaussian_denoiser(schedule: NoiseSchedule, mu, s, parameterization: str = "epsilon"):
    """The exact predictor for data ``x0 ~ N(mu, s^2)`` per value: with ``d = x_t - sqrt(abar) mu`` and
    ``V = abar s^2 + 1 - abar``, ``E[eps | x_t] = sqrt(1 - abar) d / V`` and
    ``E[x0 | x_t] = mu + sqrt(abar) s^2 d / V``. ``mu`` and ``s`` may be ``(K,)`` tensors indexed by ``cond``
    (one Gaussian per class)."""

    def denoise(x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        view = (-1, *([1] * (x_t.dim() - 1)))
        m = mu[cond].view(view) if cond is not None else mu
        sd = s[cond].view(view) if cond is not None else s
        a = schedule.alphas_cumprod[t].view(view)
        d, var = x_t - a.sqrt() * m, a * sd**2 + 1 - a
        eps, x0 = (1 - a).sqrt() * d / var, m + a.sqrt() * sd**2 * d / var
        return {"epsilon": eps, "x0": x0, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[parameterization]

    return denoise


# --------------------------------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("timesteps", [10, 50, 100, 250, 500, 1000, 4000])
def test_the_linear_schedule_ends_in_noise_at_every_length(timesteps):
    schedule = NoiseSchedule("linear", timesteps)
    assert schedule.alphas_cumprod[-1] < 1e-3
    assert schedule.betas.shape == (timesteps,) and bool((schedule.betas > 0).all())


def test_the_linear_schedule_at_1000_steps_is_ho_et_al_s():
    betas = NoiseSchedule("linear", 1000).betas
    assert torch.equal(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).float())
    assert betas[0] == torch.tensor(1e-4) and betas[-1] == torch.tensor(0.02)


def test_the_cosine_schedule_follows_its_alpha_bar_and_clips_beta():
    steps, s = 100, 0.008
    schedule = NoiseSchedule("cosine", steps)
    f = torch.cos((torch.arange(steps + 1, dtype=torch.float64) / steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = schedule.alphas_cumprod.double()
    assert bool((schedule.betas <= 0.999).all()) and schedule.betas[-1] == torch.tensor(0.999)
    assert bool((abar[1:] < abar[:-1]).all())
    assert torch.allclose(abar[:-1], (f / f[0])[1:-1], rtol=1e-6, atol=1e-9)  # the last step is clipped


def test_the_schedule_moves_with_its_module_but_is_not_checkpointed():
    holder = torch.nn.Module()
    holder.schedule = NoiseSchedule("cosine", 20)
    assert holder.state_dict() == {}
    assert holder.schedule.betas.dtype == torch.float32
    assert holder.schedule.kind == "cosine" and holder.schedule.timesteps == 20


def test_q_sample_is_the_marginal_of_the_forward_chain():
    """20000 scalar chains ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z`` from ``x0 = 1.5``: their mean
    and variance at step t equal q_sample's (mean ``q_sample(x0, t, 0)``, variance ``q_sample(0, t, 1)^2``)
    within 5 standard errors of the Monte Carlo estimate."""
    schedule, n, x0 = NoiseSchedule("linear", 50), 20000, 1.5
    generator = _gen(0)
    betas = schedule.betas.double()
    x = torch.full((n,), x0, dtype=torch.float64)
    for t in range(50):
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * z
        if t in (0, 9, 24, 49):
            index = torch.tensor([t])
            mean = schedule.q_sample(torch.tensor([x0]), index, torch.zeros(1)).item()
            var = schedule.q_sample(torch.zeros(1), index, torch.ones(1)).item() ** 2
            assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n)
            assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / n)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_posterior_is_ho_et_al_s_eq_6_and_7(kind):
    """``mean = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
    x_t``, ``variance = (1 - abar_{t-1}) / (1 - abar_t) beta_t``, recomputed in float64 from the betas."""
    schedule = NoiseSchedule(kind, 200)
    alphas, abar, abar_prev = _stats(schedule.betas)
    t = torch.tensor([0, 1, 7, 100, 199])
    x0 = torch.randn(5, 3, 4, 4, generator=_gen(1), dtype=torch.float64)
    x_t = torch.randn(5, 3, 4, 4, generator=_gen(2), dtype=torch.float64)
    mean, variance, log_variance = schedule.posterior(x0, x_t, t)

    b = (1 - alphas[t]).view(-1, 1, 1, 1)
    a, ap, alpha = abar[t].view(-1, 1, 1, 1), abar_prev[t].view(-1, 1, 1, 1), alphas[t].view(-1, 1, 1, 1)
    expected_variance = (1 - ap) / (1 - a) * b
    expected_mean = ap.sqrt() * b / (1 - a) * x0 + alpha.sqrt() * (1 - ap) / (1 - a) * x_t
    assert mean.shape == x0.shape and variance.shape == (5, 1, 1, 1)
    assert torch.allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(variance.double(), expected_variance, rtol=1e-5, atol=0)
    assert variance[0].item() == 0
    all_variance = (1 - abar_prev) / (1 - abar) * (1 - alphas)
    expected_log = torch.cat([all_variance[1:2], all_variance[1:]]).log()[t].view(-1, 1, 1, 1)
    assert torch.allclose(log_variance.double(), expected_log, rtol=1e-5)


@pytest.mark.parametrize("t", [0, 3, 250, 999])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_parameterisations_round_trip(kind, t):
    schedule = NoiseSchedule(kind, 1000)
    timesteps = torch.full((4,), t)
    x0 = torch.randn(4, 2, 3, generator=_gen(3), dtype=torch.float64)  # any trailing dims
    noise = torch.randn(4, 2, 3, generator=_gen(4), dtype=torch.float64)
    x_t = schedule.q_sample(x0, timesteps, noise)
    v = schedule.target(x0, noise, timesteps, "v")
    abar = _stats(schedule.betas)[1][t]
    a, b = abar.sqrt(), (1 - abar).sqrt()
    assert torch.allclose(v, a * noise - b * x0, atol=1e-6)
    assert torch.equal(schedule.target(x0, noise, timesteps, "epsilon"), noise)
    assert torch.equal(schedule.target(x0, noise, timesteps, "x0"), x0)
    for name in PARAMETERIZATIONS:
        prediction = schedule.target(x0, noise, timesteps, name)
        assert torch.allclose(schedule.to_x0(x_t, timesteps, prediction, name), x0, atol=1e-5)
        assert torch.allclose(schedule.to_epsilon(x_t, timesteps, prediction, name), noise, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# DDIM's steps and noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_with_eta_1_over_all_steps_has_the_posterior_variance(kind):
    schedule = NoiseSchedule(kind, 300)
    _, abar, abar_prev = _stats(schedule.betas)
    sigma = ddim_sigma(abar, abar_prev, 1.0)
    assert torch.allclose(sigma**2, schedule.posterior_variance.double(), rtol=1e-4, atol=1e-10)
    assert torch.equal(ddim_sigma(abar, abar_prev, 0.0), torch.zeros_like(abar))
    assert torch.allclose(ddim_sigma(abar, abar_prev, 0.5) ** 2, 0.25 * sigma**2)


def test_ddim_with_eta_1_over_all_steps_is_ddpm():
    """Same generator, same draws in the same order: the two samplers give the same images."""
    schedule = NoiseSchedule("linear", 60)
    denoise = gaussian_denoiser(schedule, 0.3, 0.4)
    ddpm = ddpm_sample(denoise, schedule, (64, 1, 2, 2), generator=_gen(5))
    ddim = ddim_sample(denoise, schedule, (64, 1, 2, 2), steps=60, eta=1.0, generator=_gen(5))
    assert torch.allclose(ddim, ddpm, atol=1e-4)


@pytest.mark.parametrize(
    ("timesteps", "steps"), [(1000, 50), (1000, 999), (10, 10), (10, 2), (7, 3), (100, 7)]
)
def test_ddim_timesteps_are_evenly_spaced_from_t_minus_1_to_0(timesteps, steps):
    ts = ddim_timesteps(timesteps, steps)
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert bool((ts[1:] < ts[:-1]).all()) and ts[0] == timesteps - 1 and ts[-1] == 0
    gaps = ts[:-1] - ts[1:]
    assert gaps.max() - gaps.min() <= 1  # evenly spaced up to rounding
    assert ddim_timesteps(timesteps, 1).tolist() == [timesteps - 1]  # one step starts from the noise
    assert ddim_timesteps(11, 4).tolist() == [
        10,
        7,
        3,
        0,
    ]  # round(linspace(10, 0, 4)) = round(10, 6.67, 3.33, 0)


# --------------------------------------------------------------------------------------------------
# Samplers over the exact denoiser of Gaussian data
# --------------------------------------------------------------------------------------------------


def exact_sample_distribution(schedule: NoiseSchedule, mu: float, s: float, sampler: str, **options) -> tuple:
    """Mean and std of the samples of a sampler driven by :func:`gaussian_denoiser`, in closed form: with
    ``x0_hat = mu + k d`` and ``eps_hat = e d`` linear in ``d = x_t - sqrt(abar_t) mu``, a step is
    ``x' = c + A x + sigma z``, so ``N(m, v)`` goes to ``N(c + A m, A^2 v + sigma^2)`` from ``N(0, 1)``.
    DDPM: ``x' = coef1 x0_hat + coef2 x_t`` (Ho et al., eq. 7); DDIM: ``x' = sqrt(abar') x0_hat +
    sqrt(1 - abar' - sigma^2) eps_hat`` (Song et al., eq. 12)."""
    alphas, abar, abar_prev = _stats(schedule.betas)
    if sampler == "ddpm":
        steps = list(range(len(alphas) - 1, -1, -1))
        prevs = [abar_prev[t].item() for t in steps]
    else:
        steps = ddim_timesteps(len(alphas), options["steps"]).tolist()
        prevs = [abar[t].item() for t in steps[1:]] + [1.0]
    m, v = 0.0, 1.0
    for t, ap in zip(steps, prevs, strict=True):
        a, beta = abar[t].item(), 1 - alphas[t].item()
        var = a * s * s + 1 - a
        k, e = math.sqrt(a) * s * s / var, math.sqrt(1 - a) / var
        if sampler == "ddpm":
            c1, c2 = math.sqrt(ap) * beta / (1 - a), math.sqrt(1 - beta) * (1 - ap) / (1 - a)
            big = options.get("variance") == "fixed_large"
            sigma2 = 0.0 if t == 0 else (beta if big else (1 - ap) / (1 - a) * beta)
            slope, const = c1 * k + c2, c1 * mu * (1 - k * math.sqrt(a))
        else:
            sigma2 = options.get("eta", 0.0) ** 2 * (1 - ap) / (1 - a) * (1 - a / ap)
            slope = math.sqrt(ap) * k + math.sqrt(max(1 - ap - sigma2, 0.0)) * e
            const = math.sqrt(ap) * mu - slope * math.sqrt(a) * mu
        m, v = const + slope * m, slope**2 * v + sigma2
    return m, math.sqrt(v)


SAMPLERS = [
    ("ddpm", {}),
    ("ddpm", {"variance": "fixed_large"}),
    ("ddim", {"steps": 50, "eta": 0.0}),
    ("ddim", {"steps": 50, "eta": 1.0}),
    ("ddim", {"steps": 10, "eta": 0.0}),
    ("ddim", {"steps": 10, "eta": 1.0}),
]


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize(("sampler", "options"), SAMPLERS)
def test_samples_have_the_exact_distribution_of_the_sampler(kind, sampler, options):
    """16384 samples of ``N(0.5, 0.5^2)`` data at T = 100: their mean and std are the closed form's within 5
    standard errors. (With few steps DDIM is under-dispersed for this exact denoiser, std 0.32 to 0.48 for the
    data's 0.5: a property of the discretisation, which the closed form has too.)"""
    schedule, mu, s, n = NoiseSchedule(kind, 100), 0.5, 0.5, 16384
    denoise = gaussian_denoiser(schedule, mu, s)
    x = diffusion_sample(
        denoise, schedule, (n, 1), sampler=sampler, clip_x0=None, generator=_gen(6), **options
    )
    mean, std = exact_sample_distribution(schedule, mu, s, sampler, **options)
    assert abs(x.mean().item() - mean) < 5 * std / math.sqrt(n)
    assert abs(x.std().item() - std) < 5 * std / math.sqrt(2 * n)
    assert abs(x.mean().item() - mu) < 0.03  # every sampler finds the data's mean


@pytest.mark.parametrize(("sampler", "options"), [("ddpm", {}), ("ddim", {"steps": 1000, "eta": 0.0})])
def test_samplers_with_all_steps_reach_the_data_distribution(sampler, options):
    """At T = 1000 with every step, ancestral sampling and the DDIM ODE give ``N(0.5, 0.5^2)``: mean and std
    within 0.02 (the discretisation's bias is below 0.005, 5 standard errors of 8192 samples 0.02)."""
    schedule, mu, s = NoiseSchedule("linear", 1000), 0.5, 0.5
    denoise = gaussian_denoiser(schedule, mu, s)
    x = diffusion_sample(
        denoise, schedule, (8192,), sampler=sampler, clip_x0=None, generator=_gen(7), **options
    )
    assert abs(x.mean().item() - mu) < 0.02 and abs(x.std().item() - s) < 0.02


@pytest.mark.parametrize(
    ("sampler", "options"),
    [("ddpm", {}), ("ddpm", {"variance": "fixed_large"}), ("ddim", {"steps": 10}), ("ddim", {"eta": 1.0})],
)
def test_a_single_data_point_is_reached_exactly(sampler, options):
    schedule, point = NoiseSchedule("cosine", 100), -0.7
    denoise = gaussian_denoiser(schedule, point, 0.0)
    x = diffusion_sample(
        denoise, schedule, (256, 3), sampler=sampler, clip_x0=None, generator=_gen(8), **options
    )
    assert torch.allclose(x, torch.full_like(x, point), atol=1e-4)


@pytest.mark.parametrize(("sampler", "options"), [*SAMPLERS[::2], ("ddim", {"steps": 10, "eta": 1.0})])
@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_every_parameterisation_of_one_denoiser_gives_the_same_samples(sampler, options, parameterization):
    schedule, shape = NoiseSchedule("linear", 100), (512, 1, 2, 2)
    common = {"sampler": sampler, "clip_x0": None, **options}
    reference = diffusion_sample(
        gaussian_denoiser(schedule, 0.5, 0.5), schedule, shape, generator=_gen(9), **common
    )
    denoise = gaussian_denoiser(schedule, 0.5, 0.5, parameterization)
    x = diffusion_sample(
        denoise, schedule, shape, parameterization=parameterization, generator=_gen(9), **common
    )
    assert torch.allclose(x, reference, atol=1e-4)


def test_clipping_bounds_every_predicted_x0():
    schedule, seen = NoiseSchedule("linear", 20), []
    denoise = gaussian_denoiser(schedule, 3.0, 0.1, "x0")  # data far outside [-1, 1]
    x = ddpm_sample(
        denoise, schedule, (32, 2), parameterization="x0", clip_x0=1.0, generator=_gen(10),
        on_step=lambda t, x_t, x0: seen.append(x0),
    )  # fmt: skip
    assert all(bool((x0.abs() <= 1.0).all()) for x0 in seen)
    assert torch.allclose(x, torch.ones_like(x), atol=0.05)  # the clipped x0 is the image of the last step


# --------------------------------------------------------------------------------------------------
# Determinism, batches, conditioning and guidance
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "options"), [("ddpm", {}), ("ddim", {"steps": 8, "eta": 0.5})])
def test_the_same_seed_gives_the_same_samples(sampler, options):
    schedule = NoiseSchedule("linear", 30)
    denoise = gaussian_denoiser(schedule, 0.0, 0.5)

    def draw(seed: int) -> Tensor:
        return diffusion_sample(
            denoise, schedule, (4, 1, 3, 3), generator=_gen(seed), sampler=sampler, **options
        )

    first = draw(11)
    assert first.dtype == torch.float32 and first.device == schedule.betas.device
    assert torch.equal(first, draw(11))
    assert not torch.allclose(first, draw(12), atol=1e-2)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_samples_stay_float32_when_the_net_predicts_in_bfloat16(sampler):
    schedule = NoiseSchedule("linear", 20)
    exact = gaussian_denoiser(schedule, 0.2, 0.5)
    x = diffusion_sample(
        lambda x_t, t, c: exact(x_t, t, c).bfloat16(),
        schedule,
        (16, 1, 2, 2),
        sampler=sampler,
        generator=_gen(17),
    )
    reference = diffusion_sample(exact, schedule, (16, 1, 2, 2), sampler=sampler, generator=_gen(17))
    assert x.dtype == torch.float32 and torch.allclose(x, reference, atol=0.05)


def test_cond_is_handed_to_the_denoiser_unchanged_and_each_item_follows_its_class():
    schedule, centres = NoiseSchedule("linear", 40), torch.tensor([-0.8, 0.1, 0.6])
    cond, received = torch.tensor([2, 0, 1, 1, 0]), []
    exact = gaussian_denoiser(schedule, centres, torch.zeros(3))  # one data point per class

    def denoise(x_t: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
        received.append(c)
        return exact(x_t, t, c)

    for sampler in ("ddpm", "ddim"):
        batch = diffusion_sample(
            denoise, schedule, (5, 1, 2, 2), sampler=sampler, cond=cond, generator=_gen(1)
        )
        assert all(c is cond for c in received)
        assert torch.allclose(batch, centres[cond].view(5, 1, 1, 1).expand(5, 1, 2, 2), atol=1e-4)
        for i in range(5):  # item by item: the same images
            alone = diffusion_sample(exact, schedule, (1, 1, 2, 2), sampler=sampler, cond=cond[i : i + 1])
            assert torch.allclose(alone[0], batch[i], atol=1e-4)


def _toy(calls: list | None = None):
    """A denoiser whose output depends on the class: ``x (1 + cond) + t``."""

    def denoise(x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        if calls is not None:
            calls.append((x_t.shape[0], cond.clone()))
        view = (-1, *([1] * (x_t.dim() - 1)))
        return x_t * (1 + cond.float().view(view)) + t.float().view(view)

    return denoise


def test_classifier_free_guidance_mixes_the_conditional_and_the_null_prediction():
    null = 9
    x, t, cond = torch.randn(3, 2, 4, 4, generator=_gen(14)), torch.tensor([5, 5, 5]), torch.tensor([0, 1, 2])
    conditional = _toy()(x, t, cond)
    unconditional = _toy()(x, t, torch.full_like(cond, null))
    assert torch.allclose(classifier_free_guidance(_toy(), 0.0, null)(x, t, cond), unconditional)
    assert torch.allclose(classifier_free_guidance(_toy(), 1.0, null)(x, t, cond), conditional)
    guided = classifier_free_guidance(_toy(), 3.0, null)(x, t, cond)
    assert torch.allclose(guided, unconditional + 3 * (conditional - unconditional), atol=1e-5)
    assert torch.allclose(classifier_free_guidance(_toy(), 3.0, null)(x, t, None), unconditional)


def test_classifier_free_guidance_calls_the_net_once_per_step_on_2b_items():
    schedule, calls = NoiseSchedule("linear", 30), []
    cond = torch.tensor([0, 1, 2, 3])
    guided = classifier_free_guidance(_toy(calls), 2.0, null_cond=7)
    ddim_sample(guided, schedule, (4, 1, 2, 2), steps=6, cond=cond, generator=_gen(15))
    assert len(calls) == 6
    for size, c in calls:
        assert size == 8 and c.tolist() == [0, 1, 2, 3, 7, 7, 7, 7]


# --------------------------------------------------------------------------------------------------
# on_step and the dispatcher
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "steps", "expected"), [("ddpm", None, 12), ("ddim", 5, 5), ("ddim", None, 12)]
)
def test_on_step_sees_every_step_with_the_current_x_t_and_x0(sampler, steps, expected):
    """``diffusion_sample``'s default steps: all T for DDPM, min(50, T) for DDIM; the first ``x_t`` is the
    generator's first normal draw, each ``x0_hat`` the clipped conversion of the prediction at ``x_t``."""
    schedule, shape, seen = NoiseSchedule("linear", 12), (2, 1, 3, 3), []
    denoise = gaussian_denoiser(schedule, 0.0, 0.9)
    diffusion_sample(
        denoise, schedule, shape, sampler=sampler, steps=steps, generator=_gen(16),
        on_step=lambda t, x_t, x0: seen.append((t, x_t.clone(), x0.clone())),
    )  # fmt: skip
    ts = [t for t, _, _ in seen]
    assert len(seen) == expected and all(isinstance(t, int) for t in ts)
    assert ts == sorted(set(ts), reverse=True) and ts[0] == 11 and ts[-1] == 0
    if sampler == "ddim":
        assert ts == ddim_timesteps(12, expected).tolist()
    assert torch.equal(seen[0][1], torch.randn(shape, generator=_gen(16)))
    for t, x_t, x0 in seen:
        index = torch.full((2,), t)
        expected_x0 = schedule.to_x0(x_t, index, denoise(x_t, index, None), "epsilon").clamp(-1, 1)
        assert torch.allclose(x0, expected_x0)


def test_ddim_takes_at_most_t_steps_by_default_and_ddpm_only_t():
    schedule, calls = NoiseSchedule("linear", 80), []
    denoise = gaussian_denoiser(schedule, 0.0, 0.5)
    diffusion_sample(denoise, schedule, (1, 1), on_step=lambda t, x, x0: calls.append(t))
    assert len(calls) == 50
    diffusion_sample(
        denoise, schedule, (1, 1), sampler="ddim", variance="fixed_large", steps=3
    )  # DDPM's only
    diffusion_sample(denoise, schedule, (1, 1), sampler="ddpm", steps=80)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: NoiseSchedule(timesteps=1), "model.init_args.timesteps"),
        (lambda: NoiseSchedule("quadratic"), "model.init_args.schedule"),
        (lambda: NoiseSchedule(beta_end=1.5), "beta_end"),
        (lambda: NoiseSchedule(beta_start=0.0), "beta_start"),
        (lambda: _convert("z"), "model.init_args.parameterization"),
        (lambda: ddim_timesteps(10, 0), "steps"),
        (lambda: ddim_timesteps(10, 11), "steps"),
        (lambda: _sample(sampler="ddim", steps=0), "steps"),
        (lambda: _sample(sampler="ddim", steps=21), "steps"),
        (lambda: _sample(sampler="ddpm", steps=10), "steps"),
        (lambda: _sample(sampler="ddim", eta=-1.0), "eta"),
        (lambda: _sample(sampler="ancestral"), "sampler"),
        (lambda: _sample(sampler="ddpm", variance="learned"), "variance"),
        (lambda: _sample(sampler="ddpm", clip_x0=0.0), "clip_x0"),
        (lambda: _sample(sampler="ddpm", cond=torch.zeros(3, dtype=torch.long)), "cond"),
        (lambda: _sample(parameterization="score"), "model.init_args.parameterization"),
    ],
)
def test_bad_input_names_the_field(make, field):
    with pytest.raises(InputError, match=field.replace(".", r"\.")) as raised:
        make()
    assert "expected" in str(raised.value)


def _convert(parameterization: str) -> Tensor:
    x, t = torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
    return NoiseSchedule().to_x0(x, t, x, parameterization)


def _sample(**options) -> Tensor:
    schedule = NoiseSchedule("linear", 20)
    return diffusion_sample(gaussian_denoiser(schedule, 0.0, 1.0), schedule, (2, 1), **options)

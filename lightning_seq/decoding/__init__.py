"""Model-agnostic text generation: greedy, sampling (temperature / top-k / top-p) and beam search.

Every strategy drives a model through one *step function*::

    step(tokens, state) -> (logits, new_state)

- ``tokens``: ``(N, t)`` long tensor of the NEW tokens to consume: the whole prompt on the
  first call, then the single token chosen at the previous step (``t = 1``).
- ``state``: whatever the model carries between calls, ``None`` on the first call unless the
  caller passes an initial one (e.g. an encoder's memory for seq2seq or captioning). It is
  ``None`` or a pytree (nested tuple / list / dict) of tensors whose FIRST dimension is the
  batch ``N``, so that beam search can expand it (:func:`repeat_state`) and reorder it
  (:func:`select_state`) without knowing what it holds.
- ``logits``: ``(N, V)`` unnormalised scores of the token that follows the last consumed one.

A recurrent LM fits with ``state = (h, c)`` (batch first); a Transformer LM fits with a KV cache
as state (``[(k, v), ...]`` of shape ``(N, heads, T, head_dim)``), or with ``state`` holding the
whole token history and no cache. Decoding runs under ``torch.no_grad``; the functions return the
new tokens only, ``(B, n)`` with ``n <= max_new_tokens``.

Images of autoregressive models are drawn the same way, value by value, by :func:`sample_pixels` over a
``logits_fn(images, labels) -> params`` function (:mod:`lightning_seq.decoding.pixels`), with the same
temperature / top-k / top-p filter.

Images of diffusion models are drawn from noise by the samplers of :mod:`lightning_seq.decoding.diffusion`
over a ``denoise(x_t, t, cond) -> prediction`` function (the noise, ``x0`` or ``v``) and a
:class:`NoiseSchedule`: :func:`ddpm_sample` takes every step of the reverse chain, :func:`ddim_sample` an
evenly spaced subset (deterministic at ``eta = 0``), and :func:`classifier_free_guidance` wraps ``denoise`` so
that each step mixes the conditional and the null-class prediction in one batched call.

Example::

    def step(tokens, state):
        logits, state = model(tokens, state)  # (N, t, V)
        return logits[:, -1], state  # (N, V)

    new_tokens = generate(step, prompt, GenerationConfig(strategy="beam"), eos_id=tokenizer.eos_id)
"""

from lightning_seq.decoding.beam import beam_search
from lightning_seq.decoding.config import GenerationConfig, generate
from lightning_seq.decoding.diffusion import (
    Denoiser,
    NoiseSchedule,
    Parameterization,
    ScheduleKind,
    Variance,
    classifier_free_guidance,
    ddim_sample,
    ddim_sigma,
    ddim_timesteps,
    ddpm_sample,
    diffusion_sample,
)
from lightning_seq.decoding.pixels import LogitsFn, sample_pixels
from lightning_seq.decoding.state import State, StepFn, detach_state, map_state, repeat_state, select_state
from lightning_seq.decoding.strategies import filter_logits, greedy, sample

__all__ = [
    "Denoiser",
    "GenerationConfig",
    "LogitsFn",
    "NoiseSchedule",
    "Parameterization",
    "ScheduleKind",
    "State",
    "StepFn",
    "Variance",
    "beam_search",
    "classifier_free_guidance",
    "ddim_sample",
    "ddim_sigma",
    "ddim_timesteps",
    "ddpm_sample",
    "detach_state",
    "diffusion_sample",
    "filter_logits",
    "generate",
    "greedy",
    "map_state",
    "repeat_state",
    "sample",
    "sample_pixels",
    "select_state",
]

"""Greedy decoding, sampling (temperature, top-k, nucleus) and the logits filter they share."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lightning_seq.decoding.state import State, StepFn


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Scale logits by temperature, then keep the top-k and the nucleus (top-p); the rest go to -inf.

    With ``z`` the logits: ``z <- z / temperature``; top-k keeps exactly the ``k`` largest
    entries; top-p sorts ``p = softmax(z)`` descending and keeps the smallest prefix whose mass
    reaches ``top_p``, i.e. token ``i`` (in sorted order) is kept iff ``sum_{j<i} p_j < top_p``,
    so the most likely token is always kept. Top-k is applied before top-p.

    Args:
        logits: ``(..., V)`` unnormalised scores.
        temperature: > 0; below 1 sharpens, above 1 flattens the distribution.
        top_k: Keep this many tokens (``None`` keeps all).
        top_p: Nucleus mass in (0, 1] (``None`` keeps all).

    Returns:
        ``(..., V)`` logits with the removed entries at ``-inf``.
    """
    if temperature != 1.0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        values, index = logits.topk(top_k, dim=-1)  # (..., k)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (..., V)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # (..., V), exclusive cumulative sum
        remove = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


@torch.no_grad()
def _autoregress(
    step: StepFn,
    prompt: Tensor,
    max_new_tokens: int,
    choose: Callable[[Tensor], Tensor],
    eos_id: int | None,
    state: State,
) -> Tensor:
    """Decode one token per step with ``choose(logits (B, V)) -> (B,)``; finished rows repeat EOS.

    Returns:
        ``(B, n)`` new tokens, ``n <= max_new_tokens``: the loop stops once every row emitted EOS.
    """
    finished = torch.zeros(prompt.size(0), dtype=torch.bool, device=prompt.device)  # (B,)
    tokens, generated = prompt, []
    for _ in range(max_new_tokens):
        logits, state = step(tokens, state)  # (B, V)
        next_token = choose(logits)  # (B,)
        if eos_id is not None:
            next_token = next_token.masked_fill(finished, eos_id)
            finished |= next_token == eos_id
        generated.append(next_token)
        if eos_id is not None and bool(finished.all()):
            break
        tokens = next_token[:, None]  # (B, 1)
    if not generated:
        return prompt.new_empty(prompt.size(0), 0)
    return torch.stack(generated, dim=1)  # (B, n)


def greedy(
    step: StepFn, prompt: Tensor, max_new_tokens: int, eos_id: int | None = None, state: State = None
) -> Tensor:
    """Greedy decoding: ``x_{t+1} = argmax_v logits_t[v]``.

    Args:
        step: The step function (see :mod:`lightning_seq.decoding`).
        prompt: ``(B, T)`` long tensor, consumed by the first step call.
        max_new_tokens: Upper bound on generated tokens.
        eos_id: End-of-sequence id; a row that emitted it keeps emitting it, and decoding stops
            early once every row has.
        state: Initial state passed to the first step call (e.g. an encoder's memory).

    Returns:
        ``(B, n)`` the new tokens only, ``n <= max_new_tokens``.
    """
    return _autoregress(step, prompt, max_new_tokens, lambda logits: logits.argmax(dim=-1), eos_id, state)


def sample(
    step: StepFn,
    prompt: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    state: State = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Ancestral sampling: ``x_{t+1} ~ softmax(filter_logits(logits_t))``.

    Args:
        step: The step function (see :mod:`lightning_seq.decoding`).
        prompt: ``(B, T)`` long tensor, consumed by the first step call.
        max_new_tokens: Upper bound on generated tokens.
        temperature: Softmax temperature, > 0.
        top_k: Sample among the ``k`` most likely tokens only.
        top_p: Sample from the nucleus of mass ``top_p`` only.
        eos_id: End-of-sequence id, handled as in :func:`greedy`.
        state: Initial state passed to the first step call.
        generator: Random generator on the prompt's device, for reproducible samples.

    Returns:
        ``(B, n)`` the new tokens only, ``n <= max_new_tokens``.
    """

    def choose(logits: Tensor) -> Tensor:
        probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(dim=-1)  # (B, V)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)

    return _autoregress(step, prompt, max_new_tokens, choose, eos_id, state)

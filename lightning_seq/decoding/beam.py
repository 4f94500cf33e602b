"""Beam search, batched over beams: one step call per time step for all ``B * K`` hypotheses."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_seq.decoding.state import State, StepFn, repeat_state, select_state


def _freeze_finished(log_probs: Tensor, finished: Tensor, eos_id: int | None) -> Tensor:
    """Give finished beams a single continuation, EOS with log-prob 0, so their score stays put.

    Args:
        log_probs: ``(B, K, V)`` next-token log-probabilities.
        finished: ``(B, K)`` whether each beam already emitted EOS.
        eos_id: End-of-sequence id (nothing is frozen when ``None``).

    Returns:
        ``(B, K, V)`` log-probabilities with finished rows replaced.
    """
    if eos_id is None:
        return log_probs
    frozen = torch.full_like(log_probs[0, 0], float("-inf"))  # (V,)
    frozen[eos_id] = 0.0
    return torch.where(finished[..., None], frozen, log_probs)


@torch.no_grad()
def beam_search(
    step: StepFn,
    prompt: Tensor,
    max_new_tokens: int,
    num_beams: int = 4,
    length_penalty: float = 1.0,
    eos_id: int | None = None,
    state: State = None,
) -> tuple[Tensor, Tensor]:
    """Beam search for ``argmax_y log p(y | prompt) / |y|**length_penalty``.

    The prompts are consumed in one step call, then every row and its state is expanded to
    ``K = num_beams`` beams (``B * K`` rows, one step call per time step for all of them). At
    every time step the ``K * V`` continuations of a row are scored by their summed
    log-probability, the best ``K`` are kept (``torch.topk`` over ``K * V``) and the state is
    reordered to follow their parent beams. At the first step all ``K`` beams of a row are the
    same hypothesis, so only beam 0 is expanded. A beam that emitted EOS is frozen: its only
    continuation is EOS with log-prob 0, so it keeps its score while the others go on. A prompt
    whose beams have all finished leaves the batch (its rows leave the state, and later step calls
    have fewer rows), so a batch of captions of different lengths costs little more than its
    longest caption's beams alone. Search ends when every beam has finished or after
    ``max_new_tokens``; the returned hypothesis is
    the beam with the best length-penalised score, where ``|y|`` counts generated tokens up to
    and including EOS. ``length_penalty = 0`` ranks by raw log-probability; larger values
    favour longer outputs.

    Args:
        step: The step function (see :mod:`lightning_seq.decoding`).
        prompt: ``(B, T)`` long tensor, consumed by the first step call.
        max_new_tokens: Upper bound on generated tokens.
        num_beams: Hypotheses kept per prompt, ``K``.
        length_penalty: Exponent of the length normaliser.
        eos_id: End-of-sequence id.
        state: Initial state for ``B`` rows, passed with the prompt to the first step call; the
            state that call returns is expanded to ``B * K`` rows with :func:`repeat_state` and
            reordered with :func:`select_state`.

    Returns:
        ``(tokens, scores)``: ``(B, n)`` the best hypothesis per prompt (new tokens only, padded
        with ``eos_id`` after its EOS, truncated to the longest one) and ``(B,)`` its
        length-penalised score.
    """
    batch, k, device = prompt.size(0), num_beams, prompt.device
    if max_new_tokens < 1:
        return prompt.new_empty(batch, 0), torch.zeros(batch, device=device)
    logits, state = step(prompt, state)  # (B, V): the prompt is consumed once, then split into beams
    logits, state = logits.repeat_interleave(k, dim=0), repeat_state(state, k)  # (B*K, V)
    scores = torch.full((batch, k), float("-inf"), device=device)  # (B, K)
    scores[:, 0] = 0.0  # the K beams are still identical: only beam 0 may expand
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)  # (B, K)
    lengths = torch.zeros(batch, k, dtype=torch.long, device=device)  # (B, K)
    history = prompt.new_empty(batch, k, 0)  # (B, K, t)
    active = torch.arange(
        batch, device=device
    )  # the prompts still decoding: their beams are the state's rows
    stay = torch.arange(k, device=device).expand(batch, k)  # (B, K): a finished prompt's beams stay in place
    filler = eos_id if eos_id is not None else 0  # what a finished prompt's beams emit: EOS, at log-prob 0
    for t in range(max_new_tokens):
        n, vocab = active.numel(), logits.size(-1)
        log_probs = logits.float().log_softmax(dim=-1).view(n, k, vocab)  # (n, K, V)
        log_probs = _freeze_finished(log_probs, finished[active], eos_id)
        candidates = (scores[active][..., None] + log_probs).view(n, k * vocab)  # (n, K*V)
        top, flat = candidates.topk(k, dim=-1)  # (n, K)
        parent, token = flat // vocab, flat % vocab  # (n, K) each
        parents, tokens = stay.clone(), torch.full_like(stay, filler)  # (B, K) each
        parents[active], tokens[active], scores[active] = parent, token, top
        history = torch.cat([history.gather(1, parents[..., None].expand_as(history)), tokens[..., None]], 2)
        was_finished = finished.gather(1, parents)  # (B, K)
        lengths = lengths.gather(1, parents) + (~was_finished).long()
        finished = was_finished if eos_id is None else was_finished | (tokens == eos_id)
        done = (finished[active] | scores[active].isneginf()).all(dim=-1)  # (n,): every beam ended
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        keep = (~done).nonzero().squeeze(1)  # (n',) the prompts that go on, among the active ones
        state = select_state(state, (parent[keep] + keep[:, None] * k).view(-1))  # (n'*K,) rows
        active = active[keep]
        logits, state = step(token[keep].view(-1, 1), state)  # (n'*K, V)
    return _pick_best(history, scores, lengths, length_penalty)


def _pick_best(
    history: Tensor, scores: Tensor, lengths: Tensor, length_penalty: float
) -> tuple[Tensor, Tensor]:
    """Choose the beam with the best ``score / length**length_penalty`` in every row.

    Args:
        history: ``(B, K, n)`` generated tokens per beam.
        scores: ``(B, K)`` summed log-probabilities.
        lengths: ``(B, K)`` generated tokens up to and including EOS.
        length_penalty: Exponent of the length normaliser.

    Returns:
        ``(B, n')`` best tokens, truncated to the longest chosen length, and ``(B,)`` their scores.
    """
    penalised = scores / lengths.clamp(min=1).float() ** length_penalty  # (B, K)
    best_score, best = penalised.max(dim=-1)  # (B,)
    rows = torch.arange(history.size(0), device=history.device)
    longest = int(lengths[rows, best].max()) if history.size(0) else 0
    return history[rows, best, :longest], best_score  # (B, n'), (B,)

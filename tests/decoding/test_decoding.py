"""Tests of lightning_seq.decoding against hand-built models whose answers can be enumerated."""

import itertools
import math
from collections import namedtuple

import pytest
import torch
from torch import Tensor

import lightning_seq.decoding.beam as beam_module
from lightning_seq.decoding import (
    GenerationConfig,
    beam_search,
    detach_state,
    filter_logits,
    generate,
    greedy,
    map_state,
    repeat_state,
    sample,
    select_state,
)
from lightning_seq.errors import InputError

EOS = 0


# --------------------------------------------------------------------------------------------------
# Hand-built models
# --------------------------------------------------------------------------------------------------


def markov_step(log_table: Tensor):
    """A step function whose next-token log-probs depend only on the last token: ``log_table[last]``."""

    def step(tokens: Tensor, state: None) -> tuple[Tensor, None]:
        return log_table[tokens[:, -1]], state  # (N, V)

    return step


def random_markov_table(vocab: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, vocab, generator=generator).mul(2).log_softmax(-1)  # (V, V)


def brute_force_best(
    log_table: Tensor, start: int, max_len: int, length_penalty: float = 0.0
) -> tuple[tuple[int, ...], float]:
    """The continuation of ``start`` with the best ``log p / length**length_penalty``, by enumeration.

    EOS ends a sequence, ``max_len`` cuts it.
    """
    vocab = log_table.size(0)
    best, best_score = (), -math.inf
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if EOS in seq[:-1] or (length < max_len and seq[-1] != EOS):
                continue
            logp = sum(log_table[prev, tok].item() for prev, tok in zip((start, *seq), seq, strict=False))
            if logp / length**length_penalty > best_score:
                best, best_score = seq, logp / length**length_penalty
    return best, best_score


class TinyRNN:
    """A random Elman RNN whose logits also depend on a step counter; state ``(h (N, H), count (N,))``."""

    def __init__(self, vocab: int = 7, hidden: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, hidden, generator=generator)
        self.recur = torch.randn(hidden, hidden, generator=generator) / hidden**0.5
        self.out = torch.randn(hidden, vocab, generator=generator) * 0.8
        self.freq = torch.randn(vocab, generator=generator)

    def step(
        self, tokens: Tensor, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        n = tokens.size(0)
        h, count = state if state is not None else (torch.zeros(n, self.recur.size(0)), torch.zeros(n))
        for t in range(tokens.size(1)):
            h = torch.tanh(self.embed[tokens[:, t]] + h @ self.recur)  # (N, H)
        count = count + tokens.size(1)  # (N,)
        logits = h @ self.out + torch.cos(count[:, None] * self.freq)  # (N, V)
        return logits, (h, count)


def teacher_forced_logp(step, prompt: Tensor, tokens: list[int]) -> tuple[float, int]:
    """Sum of log-probs of ``tokens`` after ``prompt`` (1, T), up to and including the first EOS."""
    if EOS in tokens:
        tokens = tokens[: tokens.index(EOS) + 1]
    logits, state = step(prompt, None)
    total = 0.0
    for tok in tokens:
        total += logits.log_softmax(-1)[0, tok].item()
        logits, state = step(torch.tensor([[tok]]), state)
    return total, len(tokens)


def strip_after_eos(row: list[int]) -> list[int]:
    return row[: row.index(EOS) + 1] if EOS in row else row


# --------------------------------------------------------------------------------------------------
# State helpers
# --------------------------------------------------------------------------------------------------

Pair = namedtuple("Pair", ["h", "c"])


def test_map_state_keeps_structure_and_passes_non_tensors():
    state = {"layers": [Pair(torch.ones(2, 3), torch.zeros(2, 1))], "memory": (torch.arange(2),), "pos": 5}
    doubled = map_state(lambda x: x * 2, state)
    assert isinstance(doubled["layers"][0], Pair)
    assert torch.equal(doubled["layers"][0].h, torch.full((2, 3), 2.0))
    assert torch.equal(doubled["memory"][0], torch.tensor([0, 2]))
    assert doubled["pos"] == 5
    assert map_state(lambda x: x * 2, None) is None


def test_repeat_select_and_detach_state():
    state = (torch.tensor([[1.0], [2.0]], requires_grad=True), [torch.tensor([10, 20])])
    repeated = repeat_state(state, 3)
    assert torch.equal(repeated[1][0], torch.tensor([10, 10, 10, 20, 20, 20]))
    selected = select_state(repeated, torch.tensor([5, 0]))
    assert torch.equal(selected[0], torch.tensor([[2.0], [1.0]]))
    assert torch.equal(selected[1][0], torch.tensor([20, 10]))
    assert not detach_state(repeated)[0].requires_grad
    assert select_state(None, torch.tensor([0])) is None


# --------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------


def test_beam_finds_most_likely_sequence_where_greedy_does_not():
    # Tokens: 0 = EOS, 1 = A, 2 = B, 3 = S (start). A is the locally best first token, but after A
    # no token is likely; B is second best and is almost surely followed by EOS.
    probs = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],  # after EOS (never used)
            [0.25, 0.35, 0.30, 0.10],  # after A
            [0.90, 0.04, 0.03, 0.03],  # after B
            [0.05, 0.50, 0.40, 0.05],  # after S
        ]
    )
    log_table, max_len = probs.log(), 4
    best, best_logp = brute_force_best(log_table, start=3, max_len=max_len)
    prompt = torch.tensor([[3]])
    step = markov_step(log_table)

    tokens, score = beam_search(step, prompt, max_len, num_beams=4**max_len, length_penalty=0.0, eos_id=EOS)
    assert tokens[0].tolist() == list(best)
    assert score.item() == pytest.approx(best_logp, abs=1e-5)
    assert strip_after_eos(greedy(step, prompt, max_len, eos_id=EOS)[0].tolist()) != list(best)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_matches_brute_force_on_random_markov_chains(seed, length_penalty):
    # With num_beams = V**max_len no hypothesis is ever pruned, so beam search is exact.
    log_table, max_len = random_markov_table(5, seed), 4
    best, best_score = brute_force_best(log_table, start=1, max_len=max_len, length_penalty=length_penalty)
    tokens, score = beam_search(
        markov_step(log_table), torch.tensor([[1]]), max_len, 5**max_len, length_penalty, eos_id=EOS
    )
    assert tokens[0].tolist() == list(best)
    assert score.item() == pytest.approx(best_score, abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_beam_with_one_beam_equals_greedy(seed):
    model = TinyRNN(seed=seed)
    prompt = torch.randint(1, 7, (4, 3), generator=torch.Generator().manual_seed(seed))
    tokens, _ = beam_search(model.step, prompt, 12, num_beams=1, eos_id=EOS)
    assert torch.equal(tokens, greedy(model.step, prompt, 12, eos_id=EOS))


PROMPTS = torch.tensor([[1, 2, 3], [4, 4, 6], [5, 1, 2]])


def test_batched_beam_equals_each_prompt_alone_and_scores_are_true_logprobs():
    model = TinyRNN(seed=0)
    tokens, scores = beam_search(model.step, PROMPTS, 10, num_beams=3, length_penalty=1.0, eos_id=EOS)
    for i in range(len(PROMPTS)):
        alone, alone_score = beam_search(model.step, PROMPTS[i : i + 1], 10, num_beams=3, eos_id=EOS)
        n = alone.size(1)
        assert torch.equal(tokens[i, :n], alone[0])
        assert (tokens[i, n:] == EOS).all()
        assert scores[i].item() == pytest.approx(alone_score.item(), abs=1e-5)
        # The score is the real log-prob of the returned tokens: the state followed its beam.
        logp, length = teacher_forced_logp(model.step, PROMPTS[i : i + 1], tokens[i].tolist())
        assert scores[i].item() == pytest.approx(logp / length, abs=1e-5)


def test_wrong_state_reorder_is_detected(monkeypatch):
    # Guards the test above: with the state's rows in sorted order instead of following their beams
    # (the same rows, as many, in the wrong order), scores stop matching the returned tokens.
    model = TinyRNN(seed=0)
    monkeypatch.setattr(
        beam_module, "select_state", lambda state, index: select_state(state, index.sort().values)
    )
    tokens, scores = beam_search(model.step, PROMPTS, 10, num_beams=3, eos_id=EOS)
    mismatches = 0
    for i in range(len(PROMPTS)):
        logp, length = teacher_forced_logp(model.step, PROMPTS[i : i + 1], tokens[i].tolist())
        mismatches += scores[i].item() != pytest.approx(logp / length, abs=1e-5)
    assert mismatches > 0


def test_initial_state_is_expanded_to_beams():
    model, prompt = TinyRNN(seed=2), torch.tensor([[1, 2, 3], [5, 6, 1]])
    _, state = model.step(prompt[:, :-1], None)
    full, full_score = beam_search(model.step, prompt, 8, num_beams=3, eos_id=EOS)
    resumed, resumed_score = beam_search(model.step, prompt[:, -1:], 8, num_beams=3, eos_id=EOS, state=state)
    assert torch.equal(full, resumed)
    assert torch.allclose(full_score, resumed_score)
    assert torch.equal(greedy(model.step, prompt, 8, EOS), greedy(model.step, prompt[:, -1:], 8, EOS, state))


def test_beam_length_penalty_prefers_longer_hypotheses():
    # After S (3): EOS (0.7) or A (0.3); after A: EOS or B (0.5 each); after B: EOS (0.45) or B (0.55).
    # Raw log-prob prefers stopping at once; dividing by length**2 prefers the long A B B ... chain.
    probs = torch.tensor([[1.0, 0, 0, 0], [0.5, 0, 0.5, 0], [0.45, 0, 0.55, 0], [0.7, 0.3, 0, 0]]) + 1e-9
    step, prompt = markov_step(probs.log()), torch.tensor([[3]])
    short, _ = beam_search(step, prompt, 6, num_beams=8, length_penalty=0.0, eos_id=EOS)
    long, _ = beam_search(step, prompt, 6, num_beams=8, length_penalty=2.0, eos_id=EOS)
    assert short[0].tolist() == [EOS]
    assert len(strip_after_eos(long[0].tolist())) > 1


# --------------------------------------------------------------------------------------------------
# EOS handling
# --------------------------------------------------------------------------------------------------


def test_greedy_and_sample_stop_when_every_row_finished():
    # Deterministic chain 3 -> 1 -> 2 -> EOS; after EOS the model would say 1 if asked.
    table = torch.full((4, 4), float("-inf"))
    table[3, 1] = table[1, 2] = table[2, EOS] = table[EOS, 1] = 0.0
    prompt = torch.tensor([[3], [2], [1]])
    expected = torch.tensor([[1, 2, EOS], [EOS, EOS, EOS], [2, EOS, EOS]])
    calls = []

    def step(tokens, state):
        calls.append(tokens.shape)
        return table[tokens[:, -1]], state

    assert torch.equal(greedy(step, prompt, 10, eos_id=EOS), expected)
    assert len(calls) == 3
    assert torch.equal(sample(step, prompt, 10, eos_id=EOS), expected)
    tokens, scores = beam_search(step, prompt, 10, num_beams=2, eos_id=EOS)
    assert torch.equal(tokens, expected)
    assert torch.equal(scores, torch.zeros(3))


def test_without_eos_decoding_runs_to_max_new_tokens():
    model, prompt = TinyRNN(seed=3), torch.tensor([[1, 2], [3, 4]])
    assert greedy(model.step, prompt, 7).shape == (2, 7)
    assert sample(model.step, prompt, 7).shape == (2, 7)
    assert beam_search(model.step, prompt, 7, num_beams=3)[0].shape == (2, 7)


# --------------------------------------------------------------------------------------------------
# filter_logits and sampling
# --------------------------------------------------------------------------------------------------


def test_top_k_keeps_exactly_k_largest():
    logits = torch.randn(5, 10, generator=torch.Generator().manual_seed(0))
    filtered = filter_logits(logits, top_k=3)
    assert (filtered.isfinite().sum(-1) == 3).all()
    assert torch.equal(filtered.topk(3).values, logits.topk(3).values)
    assert torch.equal(filter_logits(torch.zeros(2, 6), top_k=2).isfinite().sum(-1), torch.tensor([2, 2]))
    assert torch.equal(filter_logits(logits, top_k=10), logits)


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.01, [0]), (0.5, [0]), (0.75, [0, 1]), (0.85, [0, 1, 2]), (1.0, [0, 1, 2, 3])]
)
def test_top_p_keeps_smallest_prefix_reaching_p(top_p, kept):
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()  # sorted: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    order = [1, 3, 0, 2]
    filtered = filter_logits(logits, top_p=top_p)
    assert set(filtered[0].isfinite().nonzero().flatten().tolist()) == {order[i] for i in kept}


def test_top_p_against_reference_on_random_logits():
    logits = torch.randn(20, 12, generator=torch.Generator().manual_seed(1)) * 2
    for top_p in (0.3, 0.6, 0.9):
        filtered = filter_logits(logits, top_p=top_p)
        for row, out in zip(logits.softmax(-1), filtered, strict=True):
            probs, index = row.sort(descending=True)
            size = int((probs.cumsum(0) < top_p).sum()) + 1  # first prefix whose mass reaches p
            assert set(out.isfinite().nonzero().flatten().tolist()) == set(index[:size].tolist())


def test_temperature_scales_logits():
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(filter_logits(logits, temperature=0.5), logits / 0.5)
    sharp, flat = filter_logits(logits, temperature=0.5).softmax(-1), filter_logits(logits, temperature=2.0)
    assert (sharp.max(-1).values > flat.softmax(-1).max(-1).values).all()


def test_sample_with_top_k_one_equals_greedy():
    model, prompt = TinyRNN(seed=4), torch.randint(1, 7, (4, 2), generator=torch.Generator().manual_seed(4))
    assert torch.equal(
        sample(model.step, prompt, 10, top_k=1, eos_id=EOS), greedy(model.step, prompt, 10, EOS)
    )


def test_seeded_sampling_is_reproducible():
    model, prompt = TinyRNN(seed=5), torch.ones(8, 2, dtype=torch.long)

    def draw(seed: int) -> Tensor:
        return sample(model.step, prompt, 10, temperature=1.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


@pytest.mark.parametrize("options", [{"temperature": 0.7}, {"top_p": 0.8}, {"top_k": 3, "temperature": 2.0}])
def test_sample_frequencies_match_filtered_softmax(options):
    logits = torch.tensor([1.0, 0.2, -0.5, 0.7, -1.0, 0.0])
    n = 20_000

    def step(tokens, state):
        return logits.expand(tokens.size(0), -1), state  # (N, V)

    draws = sample(
        step, torch.zeros(n, 1, dtype=torch.long), 1, generator=torch.Generator().manual_seed(0), **options
    )
    frequencies = torch.bincount(draws[:, 0], minlength=logits.numel()).float() / n
    expected = filter_logits(logits, **options).softmax(-1)
    assert torch.allclose(frequencies, expected, atol=0.015)
    assert (frequencies[expected == 0] == 0).all()


# --------------------------------------------------------------------------------------------------
# GenerationConfig and generate
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1.0),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("strategy", "nucleus"),
        ("num_beams", 0),
        ("max_new_tokens", 0),
        ("length_penalty", float("nan")),
    ],
)
def test_generation_config_rejects_bad_values(field, value):
    with pytest.raises(InputError) as excinfo:
        GenerationConfig(**{field: value})
    message = str(excinfo.value)
    assert f"GenerationConfig.{field}" in message
    assert repr(value) in message
    assert "must be" in message


def test_generate_dispatches_on_strategy():
    model, prompt = TinyRNN(seed=6), torch.tensor([[1, 2], [3, 1]])
    config = GenerationConfig(strategy="greedy", max_new_tokens=9)
    assert torch.equal(generate(model.step, prompt, config, eos_id=EOS), greedy(model.step, prompt, 9, EOS))
    config = GenerationConfig(strategy="beam", max_new_tokens=9, num_beams=3, length_penalty=0.5)
    expected, _ = beam_search(model.step, prompt, 9, num_beams=3, length_penalty=0.5, eos_id=EOS)
    assert torch.equal(generate(model.step, prompt, config, eos_id=EOS), expected)
    config = GenerationConfig(max_new_tokens=9, temperature=1.2, top_k=4, top_p=0.9, seed=3)
    expected = sample(model.step, prompt, 9, 1.2, 4, 0.9, EOS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(generate(model.step, prompt, config, eos_id=EOS), expected)
    assert torch.equal(generate(model.step, prompt, config, eos_id=EOS), expected)


def test_decoding_builds_no_graph():
    weight = torch.randn(5, 5, requires_grad=True)

    def step(tokens, state):
        return weight[tokens[:, -1]], state

    prompt = torch.tensor([[1]])
    assert not greedy(step, prompt, 3).requires_grad
    assert not beam_search(step, prompt, 3, num_beams=2)[1].requires_grad


def test_a_prompt_whose_beams_have_all_finished_leaves_the_batch():
    # Token 1 is followed by EOS for sure; tokens 2 and 3 never lead to EOS. The first prompt is done after
    # one step, so every later call has the second prompt's K rows only, and its result is the same.
    log_table = torch.full((4, 4), -math.inf)
    log_table[1, EOS] = 0.0
    log_table[2:, 2:] = math.log(0.5)
    rows = []

    def step(tokens, state):
        rows.append(tokens.size(0))
        return markov_step(log_table)(tokens, state)

    prompts = torch.tensor([[1], [2]])
    tokens, scores = beam_search(step, prompts, 5, num_beams=3, length_penalty=0.0, eos_id=EOS)
    assert rows == [2, 3, 3, 3, 3]  # the prompts, then the second prompt's 3 beams alone
    assert tokens[0].tolist()[:1] == [EOS] and scores[0] == 0.0
    alone, alone_score = beam_search(markov_step(log_table), prompts[1:], 5, num_beams=3, length_penalty=0.0)
    assert tokens[1].tolist() == alone[0].tolist() and scores[1] == alone_score[0]

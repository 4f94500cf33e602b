"""AdditiveAttention equals the Bahdanau equation computed by hand, and ignores masked keys."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers import AdditiveAttention

B, S, Q, K, A = 2, 5, 3, 4, 6


def _layer() -> AdditiveAttention:
    torch.manual_seed(0)
    return AdditiveAttention(Q, K, A).double()


def _by_hand(layer: AdditiveAttention, s: list[float], h: list[list[float]], allowed: list[bool]):
    """e_j = v . tanh(W s + U h_j); a = softmax over allowed j (0 elsewhere); c = sum_j a_j h_j, in Python."""
    w, u = layer.query_proj.weight.tolist(), layer.key_proj.weight.tolist()
    v = layer.score.weight[0].tolist()
    ws = [sum(w[r][i] * s[i] for i in range(Q)) for r in range(A)]
    scores = []
    for hj in h:
        uh = [sum(u[r][i] * hj[i] for i in range(K)) for r in range(A)]
        scores.append(sum(v[r] * math.tanh(ws[r] + uh[r]) for r in range(A)))
    total = sum(math.exp(e) for e, ok in zip(scores, allowed, strict=True) if ok)
    weights = [math.exp(e) / total if ok else 0.0 for e, ok in zip(scores, allowed, strict=True)]
    context = [sum(weights[j] * h[j][i] for j in range(len(h))) for i in range(K)]
    return weights, context


def test_equals_the_equation_by_hand_and_masked_keys_get_zero_weight() -> None:
    layer = _layer()
    query, keys = torch.randn(B, Q, dtype=torch.float64), torch.randn(B, S, K, dtype=torch.float64)
    mask = torch.tensor([[True] * S, [True, True, True, False, False]])  # row 1: two padding keys
    context, weights = layer(query, keys, mask)
    assert context.shape == (B, K) and weights.shape == (B, S)
    for b in range(B):
        want_w, want_c = _by_hand(layer, query[b].tolist(), keys[b].tolist(), mask[b].tolist())
        torch.testing.assert_close(
            weights[b], torch.tensor(want_w, dtype=torch.float64), rtol=1e-12, atol=1e-14
        )
        torch.testing.assert_close(
            context[b], torch.tensor(want_c, dtype=torch.float64), rtol=1e-12, atol=1e-14
        )
    assert (weights[1, 3:] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, dtype=torch.float64))


def test_masked_keys_do_not_change_the_context() -> None:
    layer = _layer()
    query, keys = torch.randn(B, Q, dtype=torch.float64), torch.randn(B, S, K, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, True, False]] * B)
    changed = keys.clone()
    changed[:, [2, 4]] = 100.0  # what sits at masked positions (padding) does not matter
    torch.testing.assert_close(layer(query, keys, mask)[0], layer(query, changed, mask)[0])


def test_several_queries_and_precomputed_keys_agree_with_one_query_at_a_time() -> None:
    layer = _layer()
    queries, keys = torch.randn(B, 3, Q, dtype=torch.float64), torch.randn(B, S, K, dtype=torch.float64)
    mask = torch.ones(B, S, dtype=torch.bool)
    context, weights = layer(queries, keys, mask)  # (B, 3, K), (B, 3, S)
    projected = layer.project_keys(keys)
    for t in range(3):
        c, w = layer(queries[:, t], keys, mask, projected_keys=projected)
        torch.testing.assert_close(context[:, t], c)
        torch.testing.assert_close(weights[:, t], w)


def test_bad_sizes_are_input_errors() -> None:
    with pytest.raises(InputError, match="attn_dim=0"):
        AdditiveAttention(4, 4, 0)

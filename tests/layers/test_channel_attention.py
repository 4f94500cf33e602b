"""Channel attention: the query-conditioned gates of SCA-CNN (sigmoid form) follow their equation, lie in
(0, 1), depend on the query, and reweight every location's channels alike."""

from __future__ import annotations

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers.channel_attention import ConditionalChannelAttention, SqueezeExcitation


def test_conditional_channel_attention_follows_its_equation() -> None:
    torch.manual_seed(0)
    layer = ConditionalChannelAttention(query_dim=5, channels=6, attn_dim=4).double()
    h = torch.randn(3, 5, dtype=torch.double)
    a = torch.randn(3, 7, 6, dtype=torch.double)  # (B, L, C)
    out, beta = layer(h, a)
    # beta = sigmoid(W_o tanh(W_a mean_i a_i + b_1 + W_h h) + b_o), written out with the raw matrices
    w_a, b_1 = layer.feature_proj.weight, layer.feature_proj.bias
    w_h, w_o, b_o = layer.query_proj.weight, layer.gate.weight, layer.gate.bias
    hidden = torch.tanh(a.mean(1) @ w_a.T + b_1 + h @ w_h.T)  # (B, A)
    want = torch.sigmoid(hidden @ w_o.T + b_o)  # (B, C)
    torch.testing.assert_close(beta, want)
    assert beta.shape == (3, 6) and ((beta > 0) & (beta < 1)).all()
    torch.testing.assert_close(out, a * want[:, None, :])  # every location scaled by the same gates
    projected = layer.project_features(a)  # once per image, reused at every step
    torch.testing.assert_close(layer.gates(h, projected=projected), want)
    torch.testing.assert_close(layer(h, a, projected)[0], out)


def test_the_gates_depend_on_the_query_and_take_gradients() -> None:
    torch.manual_seed(0)
    layer = ConditionalChannelAttention(query_dim=5, channels=6, attn_dim=4)
    a = torch.randn(2, 7, 6)
    h = torch.randn(2, 5, requires_grad=True)
    beta = layer.gates(h, a)
    assert not torch.allclose(beta, layer.gates(torch.randn(2, 5), a))
    beta.sum().backward()
    assert h.grad.abs().sum() > 0
    assert all(p.grad is not None for p in layer.parameters())
    with pytest.raises(InputError, match="give the features or their projection"):
        layer.gates(h)


def test_squeeze_excitation_is_the_unconditioned_relative() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(16, reduction=4)
    x = torch.randn(2, 16, 5, 5)
    gates = se.gates(x)
    assert gates.shape == (2, 16) and ((gates > 0) & (gates < 1)).all()
    torch.testing.assert_close(se(x), x * gates[:, :, None, None])

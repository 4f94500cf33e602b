"""Linear attention: the O(N) forms agree with the explicit N x N kernel form and with each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_seq.errors import InputError
from lightning_seq.layers import (
    LinearAttention,
    elu_feature_map,
    linear_attention,
    linear_attention_reference,
)

B, HEADS, D, DV = 2, 3, 4, 5


def _qkv(n: int, nk: int | None = None, grad: bool = False) -> list[Tensor]:
    nk = n if nk is None else nk
    shapes = [(B, HEADS, n, D), (B, HEADS, nk, D), (B, HEADS, nk, DV)]
    return [torch.randn(s, dtype=torch.float64, requires_grad=grad) for s in shapes]


def _key_mask(n: int) -> Tensor:
    mask = torch.rand(B, n) > 0.3
    mask[:, 0] = True
    return mask


def test_feature_map_is_elu_plus_one_and_positive() -> None:
    x = torch.tensor([-30.0, -1.0, 0.0, 2.0])
    torch.testing.assert_close(
        elu_feature_map(x), torch.tensor([torch.exp(torch.tensor(-30.0)), 0.36787944, 1, 3])
    )
    assert (elu_feature_map(torch.randn(1000) * 10) > 0).all()


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize(
    "n", [1, 37, 150], ids=["n1", "n37", "n150"]
)  # 150: three chunks of 64, the last short
@pytest.mark.parametrize("masked", [False, True])
def test_matches_quadratic_reference_with_gradients(causal: bool, n: int, masked: bool) -> None:
    torch.manual_seed(n)
    inputs = _qkv(n, grad=True)
    key_mask = _key_mask(n) if masked else None
    out, _ = linear_attention(*inputs, causal=causal, key_mask=key_mask)
    ref = linear_attention_reference(*inputs, causal=causal, key_mask=key_mask)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64)
    for a, b in zip(
        torch.autograd.grad((out * w).sum(), inputs),
        torch.autograd.grad((ref * w).sum(), inputs),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_causal_result_does_not_depend_on_chunk_length(chunk: int) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(30)
    out, (s, z) = linear_attention(q, k, v, causal=True, chunk=chunk)
    torch.testing.assert_close(out, linear_attention_reference(q, k, v, causal=True), rtol=1e-10, atol=1e-12)
    # the final state is the plain sum over all keys
    phi_k = elu_feature_map(k)
    torch.testing.assert_close(s, phi_k.transpose(-2, -1) @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(z, phi_k.sum(dim=-2), rtol=1e-10, atol=1e-12)


def test_noncausal_cross_attention_with_its_own_key_length() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(6, nk=9)
    key_mask = _key_mask(9)[:, None, None, :]  # (B, 1, 1, Nk), the attention-mask layout
    out, _ = linear_attention(q, k, v, key_mask=key_mask)
    torch.testing.assert_close(
        out, linear_attention_reference(q, k, v, key_mask=key_mask), rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("first", [1, 5], ids=["token_by_token", "prompt_chunk_first"])
def test_recurrent_steps_equal_the_causal_parallel_form(first: int) -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(20)
    key_mask = _key_mask(20)
    parallel, final = linear_attention(q, k, v, causal=True, key_mask=key_mask)
    outs, state = [], None
    for start, stop in [(0, first), *((t, t + 1) for t in range(first, 20))]:
        out, state = linear_attention(
            q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], causal=True,
            key_mask=key_mask[:, :stop], state=state,
        )  # fmt: skip
        assert state[0].shape == (B, HEADS, D, DV) and state[1].shape == (B, HEADS, D)  # O(1) in length
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), parallel, rtol=1e-10, atol=1e-12)
    for a, b in zip(state, final, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_masked_keys_have_no_influence() -> None:
    torch.manual_seed(0)
    q, k, v = _qkv(8)
    key_mask = torch.ones(B, 8, dtype=torch.bool)
    key_mask[:, 3] = False
    for causal in (False, True):
        out, _ = linear_attention(q, k, v, causal=causal, key_mask=key_mask)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 3], v2[:, :, 3] = 40.0, -100.0
        torch.testing.assert_close(linear_attention(q, k2, v2, causal=causal, key_mask=key_mask)[0], out)


def test_long_causal_sequence_in_float32() -> None:
    """4096 positions: chunked prefix sums stay close to the float64 quadratic form."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4096, 16) for _ in range(3))
    out, _ = linear_attention(q, k, v, causal=True)
    ref = linear_attention_reference(q.double(), k.double(), v.double(), causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- module
def _module(**kwargs) -> LinearAttention:
    torch.manual_seed(0)
    return LinearAttention(12, HEADS, **kwargs).double()


def test_module_is_projections_around_the_kernel() -> None:
    net = _module()
    x = torch.randn(B, 7, 12, dtype=torch.float64)
    split = lambda t: t.view(B, 7, HEADS, 4).transpose(1, 2)  # noqa: E731  (B, heads, T, head_dim)
    q, k, v = split(net.q_proj(x)), split(net.k_proj(x)), split(net.v_proj(x))
    heads = linear_attention_reference(q, k, v, causal=True)  # (B, heads, T, head_dim)
    expected = net.out_proj(heads.transpose(1, 2).reshape(B, 7, 12))
    torch.testing.assert_close(net(x, causal=True), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first", [1, 4], ids=["token_by_token", "prompt_chunk_first"])
def test_module_cache_is_the_recurrent_state(first: int) -> None:
    net = _module()
    x = torch.randn(B, 9, 12, dtype=torch.float64)
    full = net(x, causal=True)
    outs, state = [], None
    for start, stop in [(0, first), *((t, t + 1) for t in range(first, 9))]:
        out, state = net(x[:, start:stop], causal=True, past_kv=state, use_cache=True)
        assert state[0].shape == (B, HEADS, 4, 4)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)


def test_module_cross_attention_with_projected_memory() -> None:
    net = _module(kdim=6)
    x, memory = torch.randn(B, 5, 12, dtype=torch.float64), torch.randn(B, 8, 6, dtype=torch.float64)
    mask = _key_mask(8)[:, None, None, :]
    torch.testing.assert_close(net(x, mask=mask, kv=net.project_kv(memory)), net(x, memory, mask=mask))


def test_module_rejects_what_a_kernel_cannot_do() -> None:
    net = _module()
    x = torch.randn(B, 4, 12, dtype=torch.float64)
    with pytest.raises(InputError, match="bias"):
        net(x, bias=torch.zeros(1, HEADS, 4, 4))
    with pytest.raises(InputError, match="key mask"):
        net(x, mask=torch.ones(B, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(InputError, match="heads=5"):
        LinearAttention(12, 5)


def test_module_trains() -> None:
    """Gradients flow to every projection."""
    net = _module()
    out = net(torch.randn(B, 5, 12, dtype=torch.float64), causal=True)
    F.mse_loss(out, torch.zeros_like(out)).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

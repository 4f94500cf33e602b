"""Fused attention (F.scaled_dot_product_attention) agrees with the step-by-step equation."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_seq.errors import InputError
from lightning_seq.layers import MultiHeadAttention, attention_fused, attention_reference, causal_mask

B, HEADS, TQ, TK, D = 2, 3, 5, 7, 4


def _qkv(tq: int = TQ, tk: int = TK) -> list[Tensor]:
    shapes = [(B, HEADS, tq, D), (B, HEADS, tk, D), (B, HEADS, tk, D)]
    return [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]


def _random_mask(tq: int = TQ, tk: int = TK) -> Tensor:
    """A (B, 1, Tq, Tk) boolean mask in which every query may attend to at least one key."""
    mask = torch.rand(B, 1, tq, tk) > 0.4
    mask[..., 0] = True
    return mask


def _outputs_and_grads(fn, inputs: list[Tensor], **kwargs) -> list[Tensor]:
    out = fn(*inputs[:3], **kwargs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return [out, *torch.autograd.grad((out * weights).sum(), inputs)]


def _assert_agree(inputs: list[Tensor], **kwargs) -> None:
    fused = _outputs_and_grads(attention_fused, inputs, **kwargs)
    ref = _outputs_and_grads(attention_reference, inputs, **kwargs)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tk", [TQ, TK], ids=["self", "cross"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_fused_matches_reference(tk: int, scale: float | None) -> None:
    torch.manual_seed(0)
    _assert_agree(_qkv(tk=tk), scale=scale)


def test_boolean_mask() -> None:
    torch.manual_seed(0)
    _assert_agree(_qkv(), mask=_random_mask())


@pytest.mark.parametrize("with_mask", [False, True])
def test_additive_bias_with_gradient(with_mask: bool) -> None:
    torch.manual_seed(0)
    bias = torch.randn(1, HEADS, TQ, TK, dtype=torch.float64, requires_grad=True)
    inputs = [*_qkv(), bias]
    mask = _random_mask() if with_mask else None
    fused = _outputs_and_grads(lambda q, k, v: attention_fused(q, k, v, mask=mask, bias=bias), inputs)
    ref = _outputs_and_grads(lambda q, k, v: attention_reference(q, k, v, mask=mask, bias=bias), inputs)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tq", [TK, 2], ids=["square", "suffix"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_causal(tq: int, with_mask: bool) -> None:
    torch.manual_seed(0)
    _assert_agree(_qkv(tq=tq), causal=True, mask=_random_mask(tq) if with_mask else None)


def test_causal_mask_is_bottom_right_aligned() -> None:
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())
    expected = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(causal_mask(2, 4), expected)


def test_causal_attention_ignores_the_future() -> None:
    torch.manual_seed(0)
    q, k, v = (t.detach() for t in _qkv(tq=TK))
    out = attention_fused(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:, :] += 1.0
    v2[..., 3:, :] -= 1.0
    torch.testing.assert_close(attention_fused(q, k2, v2, causal=True)[..., :3, :], out[..., :3, :])


def test_masked_keys_have_no_influence() -> None:
    torch.manual_seed(0)
    q, k, v = (t.detach() for t in _qkv())
    mask = torch.ones(1, TK, dtype=torch.bool)  # the same key padding for every query
    mask[:, 2] = False
    out = attention_fused(q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[..., 2, :] = -50.0
    v2[..., 2, :] = 100.0
    torch.testing.assert_close(attention_fused(q, k2, v2, mask=mask), out)


def _mha_pair(**kwargs) -> tuple[MultiHeadAttention, MultiHeadAttention]:
    torch.manual_seed(0)
    fused = MultiHeadAttention(12, HEADS, **kwargs).double()
    explicit = MultiHeadAttention(12, HEADS, impl="explicit", **kwargs).double()
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


@pytest.mark.parametrize("cross", [False, True])
def test_module_fused_matches_explicit(cross: bool) -> None:
    fused, explicit = _mha_pair(kdim=5 if cross else None, scale=0.5)
    x = torch.randn(B, TQ, 12, dtype=torch.float64, requires_grad=True)
    context = torch.randn(B, TK, 5, dtype=torch.float64) if cross else None
    mask = _random_mask(TQ, TK if cross else TQ)
    bias = torch.randn(HEADS, TQ, TK if cross else TQ, dtype=torch.float64)
    outs = []
    for net in (fused, explicit):
        out = net(x, context, mask=mask, bias=bias)
        assert out.shape == (B, TQ, 12)
        outs.append([out, *torch.autograd.grad(out.square().sum(), [x, *net.parameters()])])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_module_matches_torch_multihead_attention() -> None:
    """Our projections and head split are the standard ones: same numbers as nn.MultiheadAttention."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(12, HEADS).double().eval()
    ref = torch.nn.MultiheadAttention(12, HEADS, batch_first=True).double().eval()
    w_q, w_k, w_v = ref.in_proj_weight.chunk(3)
    b_q, b_k, b_v = ref.in_proj_bias.chunk(3)
    with torch.no_grad():
        for proj, w, b in ((ours.q_proj, w_q, b_q), (ours.k_proj, w_k, b_k), (ours.v_proj, w_v, b_v)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(ref.out_proj.state_dict())
    x = torch.randn(B, TQ, 12, dtype=torch.float64)
    keep = _random_mask(TQ, TQ)[:, 0]  # (B, Tq, Tk)
    expected, _ = ref(x, x, x, attn_mask=(~keep).repeat_interleave(HEADS, 0), need_weights=False)
    torch.testing.assert_close(ours(x, mask=keep[:, None]), expected)


def test_attention_dropout_only_in_training() -> None:
    fused, _ = _mha_pair(dropout=0.5)
    x = torch.randn(B, TQ, 12, dtype=torch.float64)
    evaluated = fused.eval()(x)
    torch.testing.assert_close(fused(x), evaluated)
    assert not torch.allclose(fused.train()(x), evaluated)


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="heads=5"):
        MultiHeadAttention(12, 5)
    with pytest.raises(InputError, match="impl='flash'"):
        MultiHeadAttention(12, 3, impl="flash")


# ------------------------------------------------------------------ KV cache, project_kv, padding
def _incremental(net: MultiHeadAttention, x: Tensor, first: int, mask: Tensor | None = None) -> Tensor:
    """Causal self-attention over ``x`` fed as a chunk of ``first`` positions, then one token at a time."""
    outs, past = [], None
    for start, stop in [(0, first), *((t, t + 1) for t in range(first, x.shape[1]))]:
        keys = None if mask is None else mask[..., :stop]  # the mask covers past + new keys
        out, past = net(x[:, start:stop], mask=keys, causal=True, past_kv=past, use_cache=True)
        assert past[0].shape == (x.shape[0], HEADS, stop, 4)  # (B, heads, t, head_dim)
        outs.append(out)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("first", [1, 3], ids=["token_by_token", "prompt_chunk_first"])
@pytest.mark.parametrize("impl", ["fused", "explicit"])
@pytest.mark.parametrize("padded", [False, True])
def test_kv_cache_matches_full_causal_pass(first: int, impl: str, padded: bool) -> None:
    fused, explicit = _mha_pair()
    net = (fused if impl == "fused" else explicit).eval()
    x = torch.randn(B, 8, 12, dtype=torch.float64)
    mask = None
    if padded:  # key padding (B, 1, 1, T): row 0 has padded keys at positions 2 and 5
        mask = torch.ones(B, 1, 1, 8, dtype=torch.bool)
        mask[0, ..., [2, 5]] = False
    full = fused.eval()(x, mask=mask, causal=True)  # the reference: fused, one pass
    torch.testing.assert_close(_incremental(net, x, first, mask), full, rtol=1e-10, atol=1e-12)


def test_fused_and_explicit_agree_with_cache_padding_and_causal_mask() -> None:
    """A prompt chunk after cached keys: bottom-right causal + key padding, gradients included."""
    fused, explicit = _mha_pair()
    x = torch.randn(B, 3, 12, dtype=torch.float64, requires_grad=True)
    past = [torch.randn(B, HEADS, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    mask = torch.ones(B, 1, 1, 8, dtype=torch.bool)
    mask[1, ..., [0, 3, 6]] = False
    outs = []
    for net in (fused, explicit):
        out, (k, v) = net(x, mask=mask, causal=True, past_kv=tuple(past), use_cache=True)
        assert k.shape == v.shape == (B, HEADS, 8, 4)
        outs.append([out, k, v, *torch.autograd.grad(out.square().sum(), [x, *past])])
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_project_kv_gives_the_same_cross_attention() -> None:
    fused, _ = _mha_pair(kdim=5)
    x = torch.randn(B, TQ, 12, dtype=torch.float64)
    memory = torch.randn(B, TK, 5, dtype=torch.float64)
    mask = torch.ones(B, 1, 1, TK, dtype=torch.bool)
    mask[0, ..., -2:] = False
    k, v = fused.project_kv(memory)
    assert k.shape == v.shape == (B, HEADS, TK, 4)
    expected = fused(x, memory, mask=mask)
    torch.testing.assert_close(fused(x, mask=mask, kv=(k, v)), expected)
    out, cached = fused(x[:, :2], mask=mask, kv=(k, v), use_cache=True)
    assert cached[0] is k  # a fixed memory: the cache is the projected memory itself
    torch.testing.assert_close(out, expected[:, :2])


@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_padded_key_never_changes_real_outputs(impl: str) -> None:
    fused, explicit = _mha_pair()
    net = fused if impl == "fused" else explicit
    x = torch.randn(B, 6, 12, dtype=torch.float64)
    mask = torch.ones(B, 1, 1, 6, dtype=torch.bool)
    mask[:, ..., 4:] = False  # the last two positions are padding
    out = net(x, mask=mask)
    x2 = x.clone()
    x2[:, 4:] = 1e3 * torch.randn(B, 2, 12, dtype=torch.float64)
    torch.testing.assert_close(net(x2, mask=mask)[:, :4], out[:, :4], rtol=1e-10, atol=1e-12)

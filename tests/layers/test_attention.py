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

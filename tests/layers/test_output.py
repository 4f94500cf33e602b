"""OutputLinear: nn.Linear's result and gradients, in column blocks only where they were measured to help."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.layers import OutputLinear
from lightning_seq.layers.output import BLOCK, MAX_ROWS
from lightning_seq.nets import RNNLM


def blocked(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "_BlockedLinearBackward"


@pytest.mark.parametrize(
    ("vocab", "bias"), [(4 * BLOCK + 3, True), (4 * BLOCK + 3, False), (9 * BLOCK - 1, True)]
)
def test_blocks_give_linear_result_and_gradients(vocab: int, bias: bool) -> None:
    torch.manual_seed(0)
    layer = OutputLinear(24, vocab, bias=bias)
    x = torch.randn(3, 7, 24, requires_grad=True)
    y = layer(x)
    assert blocked(y) and y.shape == (3, 7, vocab)
    grad = torch.randn_like(y)
    y.backward(grad)
    tensors = [x, *layer.parameters()]
    mine = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    expected = F.linear(x, layer.weight, layer.bias)
    expected.backward(grad)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    for got, t in zip(mine, tensors, strict=True):
        torch.testing.assert_close(got, t.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("vocab", "rows", "dtype"),
    [
        (4 * BLOCK, 8, torch.float32),  # a multiple of 16: rows aligned, one GEMM is as fast
        (4 * BLOCK - 3, 8, torch.float32),  # under four blocks wide
        (4 * BLOCK + 3, MAX_ROWS + 1, torch.float32),  # too many rows for blocks to fit the cache
        (4 * BLOCK + 3, 8, torch.bfloat16),
    ],
)
def test_one_gemm_where_blocks_do_not_help(vocab: int, rows: int, dtype: torch.dtype) -> None:
    layer = OutputLinear(4, vocab).to(dtype)
    x = torch.randn(rows, 4, dtype=dtype, requires_grad=True)
    y = layer(x)
    assert not blocked(y)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias))


def test_one_gemm_under_autocast_and_blocks_without_autograd() -> None:
    layer = OutputLinear(8, 4 * BLOCK + 3)
    x = torch.randn(5, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert not blocked(y) and y.dtype == torch.bfloat16
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-6)


def test_state_dict_is_nn_linear_s() -> None:
    plain = nn.Linear(8, 4 * BLOCK + 3)
    layer = OutputLinear(8, 4 * BLOCK + 3)
    layer.load_state_dict(plain.state_dict())
    assert list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 8)
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=1e-6)


def test_tied_output_weight_gets_both_gradients() -> None:
    """With tied weights the embedding's gradient is its own plus the output layer's, as with nn.Linear."""
    torch.manual_seed(0)
    net = RNNLM(4 * BLOCK + 3, "lstm", 16, 16, 1, dropout=0.0, tie_weights=True)
    tokens = torch.randint(0, net.vocab_size, (2, 6))
    logits, _ = net(tokens)
    assert blocked(logits) and net.out.weight is net.embedding.weight
    F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    mine = net.embedding.weight.grad.clone()

    net.zero_grad()
    plain = nn.Linear(16, net.vocab_size)
    plain.weight, plain.bias = net.embedding.weight, net.out.bias
    net.out = plain
    logits, _ = net(tokens)
    F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    torch.testing.assert_close(mine, net.embedding.weight.grad, rtol=1e-6, atol=1e-7)

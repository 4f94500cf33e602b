"""The explicit recurrent cells and layers agree with PyTorch's fused ones."""

from __future__ import annotations

import io

import pytest
import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers import GRUCell, LSTMCell, Recurrent, RNNCell

CELLS = ["rnn", "lstm", "gru"]
B, T, D_IN, H = 3, 5, 4, 6


def _flat(state: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(state) if isinstance(state, tuple) else (state,)


def _random_state(cell: str, num_layers: int, batch: int = B) -> Tensor | tuple[Tensor, Tensor]:
    def one() -> Tensor:
        return torch.randn(batch, num_layers, H, dtype=torch.float64, requires_grad=True)

    return (one(), one()) if cell == "lstm" else one()


# --------------------------------------------------------------------------- single-step cells


@pytest.mark.parametrize(
    ("ours_cls", "torch_cls", "has_c"),
    [(RNNCell, nn.RNNCell, False), (LSTMCell, nn.LSTMCell, True), (GRUCell, nn.GRUCell, False)],
)
def test_cell_matches_torch(ours_cls: type, torch_cls: type, has_c: bool) -> None:
    torch.manual_seed(0)
    ours = ours_cls(D_IN, H).double()
    ref = torch_cls(D_IN, H).double()
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    ours.load_state_dict(ref.state_dict())

    x = torch.randn(B, D_IN, dtype=torch.float64, requires_grad=True)
    state = tuple(
        torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(2 if has_c else 1)
    )
    arg = state if has_c else state[0]
    out_ours, out_ref = _flat(ours(x, arg)), _flat(ref(x, arg))
    for a, b in zip(out_ours, out_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    weights = [torch.randn_like(o) for o in out_ref]
    inputs_ours = [x, *state, *ours.parameters()]
    inputs_ref = [x, *state, *ref.parameters()]
    grads_ours = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(out_ours, weights, strict=True)), inputs_ours
    )
    grads_ref = torch.autograd.grad(
        sum((o * w).sum() for o, w in zip(out_ref, weights, strict=True)), inputs_ref
    )
    for a, b in zip(grads_ours, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell, GRUCell])
def test_cell_none_state_is_zeros(cls: type) -> None:
    cell = cls(D_IN, H)
    x = torch.randn(B, D_IN)
    zeros = torch.zeros(B, H)
    state = (zeros, zeros) if cls is LSTMCell else zeros
    for a, b in zip(_flat(cell(x)), _flat(cell(x, state)), strict=True):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- Recurrent


def _pair(cell: str, num_layers: int, dropout: float = 0.0) -> tuple[Recurrent, Recurrent]:
    torch.manual_seed(0)
    fused = Recurrent(cell, D_IN, H, num_layers=num_layers, dropout=dropout, impl="fused").double()
    explicit = Recurrent(cell, D_IN, H, num_layers=num_layers, dropout=dropout, impl="explicit").double()
    explicit.load_state_dict(fused.state_dict())
    return fused, explicit


def _run_and_grad(
    layer: Recurrent, x: Tensor, state: Tensor | tuple[Tensor, Tensor] | None
) -> tuple[list[Tensor], list[Tensor]]:
    out, final = layer(x, state)
    outputs = [out, *_flat(final)]
    gen = torch.Generator().manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    leaves = [x, *(_flat(state) if state is not None else ()), *layer.parameters()]
    return outputs, list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_explicit_matches_fused(cell: str, with_state: bool, dropout: float) -> None:
    num_layers = 3
    fused, explicit = _pair(cell, num_layers, dropout)
    fused.eval()
    explicit.eval()
    x = torch.randn(B, T, D_IN, dtype=torch.float64, requires_grad=True)
    state = _random_state(cell, num_layers) if with_state else None

    outs_f, grads_f = _run_and_grad(fused, x, state)
    outs_e, grads_e = _run_and_grad(explicit, x, state)

    assert outs_f[0].shape == (B, T, H)
    assert len(outs_f) == (3 if cell == "lstm" else 2)
    for s in outs_f[1:] + outs_e[1:]:
        assert s.shape == (B, num_layers, H)  # batch-first state
    for a, b in zip(outs_e, outs_f, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads_e, grads_f, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("cell", CELLS)
def test_state_is_batch_first(cell: str) -> None:
    """Row b of the state belongs to sequence b: reordering the batch reorders the state."""
    layer = Recurrent(cell, D_IN, H, num_layers=2).double()
    x = torch.randn(B, T, D_IN, dtype=torch.float64)
    _, state = layer(x)
    perm = torch.tensor([2, 0, 1])
    _, state_perm = layer(x.index_select(0, perm))
    for a, b in zip(_flat(state), _flat(state_perm), strict=True):
        torch.testing.assert_close(a.index_select(0, perm), b)
        assert a.is_contiguous()


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_interchangeable(cell: str) -> None:
    fused = Recurrent(cell, D_IN, H, num_layers=2, impl="fused")
    buffer = io.BytesIO()
    torch.save(fused.state_dict(), buffer)
    buffer.seek(0)
    explicit = Recurrent(cell, D_IN, H, num_layers=2, impl="explicit")
    explicit.load_state_dict(torch.load(buffer))
    assert fused.state_dict().keys() == explicit.state_dict().keys()
    assert "rnn.weight_ih_l1" in fused.state_dict()
    x = torch.randn(B, T, D_IN)
    torch.testing.assert_close(explicit(x)[0], fused(x)[0], rtol=1e-5, atol=1e-6)
    # and the other way round, by switching impl on one module
    explicit.impl = "fused"
    torch.testing.assert_close(explicit(x)[0], fused(x)[0])


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", ["fused", "explicit"])
def test_chunked_equals_whole(cell: str, impl: str) -> None:
    """Carrying the state across chunks (truncated BPTT) gives the same outputs."""
    torch.manual_seed(0)
    layer = Recurrent(cell, D_IN, H, num_layers=2, impl=impl).double()
    x = torch.randn(B, 2 * T + 1, D_IN, dtype=torch.float64)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :T])
    second, final_state = layer(x[:, T:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(_flat(final_state), _flat(whole_state), strict=True):
        torch.testing.assert_close(a, b)


def test_explicit_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    layer = Recurrent("lstm", D_IN, H, num_layers=2, dropout=0.5, impl="explicit")
    x = torch.randn(B, T, D_IN)
    layer.eval()
    eval_out = layer(x)[0]
    torch.testing.assert_close(layer(x)[0], eval_out)
    layer.train()
    assert not torch.allclose(layer(x)[0], eval_out)
    single = Recurrent("lstm", D_IN, H, num_layers=1, dropout=0.5, impl="explicit").train()
    torch.testing.assert_close(single(x)[0], single.eval()(x)[0])  # no dropout after the last layer


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"cell": "transformer"}, "cell"),
        ({"impl": "cudnn"}, "impl"),
        ({"input_size": 0}, "input_size"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"num_layers": 0}, "num_layers"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_args_raise_input_error(kwargs: dict, field: str) -> None:
    args = {"cell": "lstm", "input_size": D_IN, "hidden_size": H, **kwargs}
    with pytest.raises(InputError, match=field):
        Recurrent(**args)


def test_bad_impl_assignment_raises() -> None:
    layer = Recurrent("gru", D_IN, H)
    with pytest.raises(InputError, match="impl"):
        layer.impl = "fast"


def test_wrong_state_layout_is_rejected() -> None:
    layer = Recurrent("gru", D_IN, H, num_layers=2)
    x = torch.randn(B, T, D_IN)
    with pytest.raises(ValueError, match="batch-first"):
        layer(x, torch.zeros(2, B, H))  # torch's (num_layers, B, H) layout

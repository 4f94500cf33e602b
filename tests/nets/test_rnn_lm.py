"""RNNLM: shapes, weight tying, presets, fused/explicit agreement, and that it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_seq.errors import InputError
from lightning_seq.nets import RNNLM

V = 11


def _num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())  # shared Parameters are counted once


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_shapes_and_state(cell: str) -> None:
    net = RNNLM(V, cell=cell, embed_dim=8, hidden_size=12, num_layers=2, dropout=0.1)
    tokens = torch.randint(0, V, (3, 7))
    logits, state = net(tokens)
    assert logits.shape == (3, 7, V)
    for s in state if cell == "lstm" else (state,):
        assert s.shape == (3, 2, 12)  # (B, num_layers, H)
    logits2, _ = net(tokens[:, :1], state)
    assert logits2.shape == (3, 1, V)


@pytest.mark.parametrize(("embed_dim", "hidden_size"), [(16, 16), (8, 24)])
def test_tie_weights_shares_parameter(embed_dim: int, hidden_size: int) -> None:
    tied = RNNLM(V, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=1, tie_weights=True)
    untied = RNNLM(V, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=1, tie_weights=False)
    assert tied.out.weight is tied.embedding.weight
    assert untied.out.weight is not untied.embedding.weight
    assert (tied.proj is not None) == (embed_dim != hidden_size)
    assert _num_params(tied) < _num_params(untied)
    logits, _ = tied(torch.randint(0, V, (2, 5)))
    assert logits.shape == (2, 5, V)
    # a state_dict round trip keeps the tie
    clone = RNNLM(V, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=1, tie_weights=True)
    clone.load_state_dict(tied.state_dict())
    assert clone.out.weight is clone.embedding.weight
    torch.testing.assert_close(clone.out.weight, tied.embedding.weight)


def test_presets() -> None:
    assert set(RNNLM.PRESETS) >= {"nano", "small", "base"}
    nano = RNNLM.from_preset("nano", vocab_size=V)
    assert nano.rnn.num_layers == RNNLM.PRESETS["nano"]["num_layers"]
    assert nano(torch.randint(0, V, (2, 3)))[0].shape == (2, 3, V)
    gru = RNNLM.from_preset("nano", vocab_size=V, cell="gru", hidden_size=20)
    assert gru.rnn.cell == "gru" and gru.rnn.hidden_size == 20
    with pytest.raises(InputError, match=r"preset.*nano, small, base"):
        RNNLM.from_preset("huge", vocab_size=V)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_explicit_matches_fused(cell: str) -> None:
    torch.manual_seed(0)
    sizes = {"embed_dim": 8, "hidden_size": 12, "num_layers": 2, "dropout": 0.3, "tie_weights": True}
    fused = RNNLM(V, cell=cell, **sizes)
    explicit = RNNLM(V, cell=cell, impl="explicit", **sizes)
    explicit.load_state_dict(fused.state_dict())
    fused.double().eval()
    explicit.double().eval()
    tokens = torch.randint(0, V, (3, 9))
    logits_f, state_f = fused(tokens)
    logits_e, state_e = explicit(tokens)
    torch.testing.assert_close(logits_e, logits_f, rtol=1e-10, atol=1e-12)
    logits_f, _ = fused(tokens, state_f)
    logits_e, _ = explicit(tokens, state_e)
    torch.testing.assert_close(logits_e, logits_f, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"embed_dim": 0}, "embed_dim"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"cell": "lstmm"}, "cell"),
        ({"impl": "cuda"}, "impl"),
        ({"dropout": -0.1}, "dropout"),
    ],
)
def test_bad_args_raise_input_error(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        RNNLM(**{"vocab_size": V, **kwargs})


def test_tiny_lstm_learns_periodic_sequence() -> None:
    """A period-7 pattern with a repeated token (1 -> 4 or 5) needs memory; CE must fall < 0.1."""
    torch.manual_seed(0)
    pattern = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    stream = pattern.repeat(12)  # (84,)
    net = RNNLM.from_preset("nano", vocab_size=10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    seq_len, batch = 32, 16
    for _ in range(300):
        starts = torch.randint(0, len(stream) - seq_len - 1, (batch,))
        window = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])  # (B, T+1)
        logits, _ = net(window[:, :-1])  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, 10), window[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        tokens = stream[:-1].unsqueeze(0)  # (1, 83)
        logits, _ = net(tokens)  # (1, 83, V)
        final = F.cross_entropy(logits[0], stream[1:])
    assert final.item() < 0.1, f"cross-entropy {final.item():.3f} nats after training"

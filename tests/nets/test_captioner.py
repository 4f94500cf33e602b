"""Captioning nets: shapes and grids for every encoder, step-by-step decoding equals teacher forcing, the
attention is a distribution over locations, tiny nets overfit a few captions, and beam search over
``net.decode`` finds the known best caption (a hand-built decoder) and the exhaustive best (a random net)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.decoding import GenerationConfig, beam_search, generate
from lightning_seq.errors import InputError
from lightning_seq.nets import ResNet, ShowAttendTell, Swin, TransformerCaptioner, ViT, spatial_features

BOS, EOS = 0, 1
V = 11
KINDS = ("spatial", "channel", "both", "none")
NETS = {
    **{
        kind: lambda kind=kind, **kw: ShowAttendTell(V, attention=kind, preset="nano", **kw) for kind in KINDS
    },
    "spatial-plain-output-no-gate": lambda **kw: ShowAttendTell(
        V, preset="nano", deep_output=False, gate=False, **kw
    ),
    "transformer": lambda **kw: TransformerCaptioner(V, preset="nano", **kw),
    "transformer-postnorm-sinusoidal": lambda **kw: TransformerCaptioner(
        V, preset="nano", norm_first=False, image_positions="sinusoidal", positions="learned", **kw
    ),
}
SPATIAL = {
    "spatial",
    "both",
    "spatial-plain-output-no-gate",
    *(name for name in NETS if "transformer" in name),
}


def _net(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return NETS[name](image_size=16, **kwargs).double().eval()


def _batch(b: int = 3, t: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(b, 3, 16, 16, dtype=torch.double)
    tokens = torch.cat([torch.full((b, 1), BOS), torch.randint(2, V, (b, t - 1))], dim=1)  # (B, T)
    return images, tokens


@pytest.mark.parametrize("name", NETS)
def test_shapes_grid_and_attention_distribution(name: str) -> None:
    net = _net(name)
    images, tokens = _batch()
    with torch.no_grad():
        features = net.encode(images)
        logits, attention = net(images, tokens)
    assert net.grid == (8, 8) and net.num_locations == 64  # nano ResNet: 2 stages, cifar stem
    assert features.shape == (3, 64, 16)
    assert logits.shape == (3, 6, V)
    if name in SPATIAL:
        assert attention.shape == (3, 6, 64)
        assert (attention >= 0).all()
        torch.testing.assert_close(attention.sum(-1), torch.ones(3, 6, dtype=torch.double))
    else:
        assert attention is None


@pytest.mark.parametrize("name", NETS)
def test_step_by_step_decoding_equals_teacher_forcing(name: str) -> None:
    net = _net(name)
    images, tokens = _batch()
    with torch.no_grad():
        full, attention = net(images, tokens)
        state = net.start(net.encode(images))
        first, state = net.decode(tokens[:, :2], state)  # a two-token prompt, then one at a time
        steps = [first]
        for t in range(2, tokens.size(1)):
            logits, state = net.decode(tokens[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    if name in SPATIAL:
        torch.testing.assert_close(state["attention"], attention[:, -1])
    else:
        assert "attention" not in state


@pytest.mark.parametrize("name", ["spatial", "channel", "both", "spatial-plain-output-no-gate"])
def test_gates_lie_strictly_between_zero_and_one(name: str) -> None:
    net = _net(name)
    images, tokens = _batch()
    with torch.no_grad():
        state = net.start(net.encode(images))
        for t in range(tokens.size(1)):
            _, state = net.decode(tokens[:, t : t + 1], state)
            if net.context_gate is not None:
                assert state["gate"].shape == (3, 1)
                assert ((state["gate"] > 0) & (state["gate"] < 1)).all()
            else:
                assert "gate" not in state
            if net.channel_attention is not None:
                assert state["channel_gates"].shape == (3, 16)
                assert ((state["channel_gates"] > 0) & (state["channel_gates"] < 1)).all()
    if net.context_gate is not None:  # beta_t multiplies z_t: a gate of 0 removes the context entirely
        h = torch.randn(3, 32, dtype=torch.double)
        with torch.no_grad():
            net.context_gate.bias.fill_(-1e4)
            context, seen = net._context(h, net.start(net.encode(images)))
        assert seen["gate"].max() < 1e-30 and context.abs().max() < 1e-30


@pytest.mark.parametrize("name", NETS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    """Every parameter takes part in the loss (the default encoder's classification head is gone), so DDP
    needs no unused-parameter search. (Some gradients are zero at init: each ResNet block's last BN scale is.)
    """
    net = _net(name).float().train()
    images, tokens = _batch()
    logits, attention = net(images.float(), tokens)
    loss = logits.logsumexp(-1).mean() + (0.0 if attention is None else attention.square().mean())
    loss.backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert not dead


def _encoders() -> dict[str, tuple[nn.Module, tuple[int, int], int]]:
    """Each encoder at 32 x 32 pixels, with the grid and width its features should have."""
    return {
        "resnet-cifar": (ResNet(32, 3, preset="nano"), (16, 16), 16),
        "resnet-imagenet": (ResNet(32, 3, preset="nano", stem="imagenet"), (4, 4), 16),
        "vit": (ViT(32, 3, preset="nano"), (8, 8), 32),  # patch 4
        "deit-two-extra-tokens": (ViT(32, 3, preset="nano", patch_size=8, distillation=True), (4, 4), 32),
        "swin": (Swin(32, 3, preset="nano"), (8, 8), 32),  # patch 2, two stages
    }


@pytest.mark.parametrize("name", ["resnet-cifar", "resnet-imagenet", "vit", "deit-two-extra-tokens", "swin"])
@pytest.mark.parametrize("net_class", [ShowAttendTell, TransformerCaptioner])
def test_resnet_vit_and_swin_encoders_give_their_grid(name: str, net_class) -> None:
    torch.manual_seed(0)
    encoder, grid, width = _encoders()[name]
    images = torch.randn(2, 3, 32, 32)
    encoder.eval()
    features = spatial_features(encoder, images)
    assert features.shape == (2, grid[0] * grid[1], width)
    if name.startswith("resnet"):  # row-major flattening of the (B, C, h, w) map
        fmap = encoder.forward_features(images)
        torch.testing.assert_close(features[:, 5], fmap[:, :, 5 // grid[1], 5 % grid[1]])
    if name == "vit":  # the patch tokens, without the class token
        torch.testing.assert_close(features, encoder.forward_features(images)[:, 1:])
    encoder.train()
    net = net_class(V, image_size=32, encoder=encoder, preset="nano")
    assert net.encoder is encoder and net.grid == grid
    assert all(m.training for m in net.modules())  # the grid probe left every module's mode alone
    logits, attention = net(images, torch.zeros(2, 3, dtype=torch.long))
    assert logits.shape == (2, 3, V) and attention.shape == (2, 3, grid[0] * grid[1])


def test_an_encoder_without_a_feature_method_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"Sequential has no known feature method.*forward_features"):
        ShowAttendTell(V, encoder=nn.Sequential(nn.Conv2d(3, 8, 3)), preset="nano")
    with pytest.raises(InputError, match=r"attention='soft' is not supported; expected one of spatial"):
        ShowAttendTell(V, attention="soft", preset="nano")
    with pytest.raises(InputError, match=r"image_positions='rope'"):
        TransformerCaptioner(V, image_positions="rope", preset="nano")


def test_presets_and_sizes() -> None:
    small = ShowAttendTell(V, preset="small")
    sizes = (small.embedding.embedding_dim, small.hidden_size, small.spatial_attention.attn_dim)
    assert sizes == (64, 256, 128)
    assert small.grid == (8, 8) and small.feature_dim == 64  # a 3-stage ResNet on 32 x 32 images
    assert isinstance(small.encoder, ResNet) and isinstance(small.encoder.head, nn.Identity)
    transformer = TransformerCaptioner(V, preset="small")
    assert (transformer.dim, len(transformer.decoder.blocks)) == (128, 2)
    assert transformer.head.weight is transformer.embedding.weight
    with pytest.raises(InputError, match="preset='huge'"):
        TransformerCaptioner(V, preset="huge")


# ------------------------------------------------------------------------------------------ overfitting

OVERFIT_BOUND = 0.05  # nats per token; ignoring the image costs at least log 4 = 1.39 (see below)


@pytest.mark.parametrize("name", [*KINDS, "transformer"])
def test_a_tiny_net_overfits_four_captions(name: str) -> None:
    """Four images, four captions that differ at every word: a net that ignores the image cannot go
    below log 4 nats per token; each of these gets under ``OVERFIT_BOUND`` in under 200 Adam steps."""
    torch.manual_seed(0)
    net = NETS[name](image_size=8, dropout=0.0)
    images = torch.randn(4, 3, 8, 8)
    captions = torch.tensor([[2, 3, 4, 5, 1], [3, 4, 5, 6, 1], [4, 5, 6, 7, 1], [5, 6, 7, 8, 1]])  # (4, 5)
    inputs = torch.cat([torch.full((4, 1), BOS), captions[:, :-1]], dim=1)  # (4, 5)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for steps in range(200):  # noqa: B007 (reported on failure)
        logits, _ = net(images, inputs)
        loss = F.cross_entropy(logits.reshape(-1, V), captions.reshape(-1))
        if loss.item() < OVERFIT_BOUND:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < OVERFIT_BOUND, (steps, loss.item())


# ----------------------------------------------------------------------------------------- beam search


def _step(net: nn.Module):
    def step(tokens: torch.Tensor, state):
        logits, state = net.decode(tokens, state)
        return logits[:, -1], state  # (N, V)

    return step


def _markov_net(table: torch.Tensor) -> ShowAttendTell:
    """A ShowAttendTell whose next-token log-probabilities are ``table[previous token]``, whatever the
    image: the deep output ``L_o tanh(E y + L_h h + L_z z)`` with ``L_h = L_z = 0`` and ``E`` one-hot."""
    vocab = table.size(0)
    torch.manual_seed(0)
    net = ShowAttendTell(vocab, image_size=8, preset="nano", embed_dim=vocab).double().eval()
    with torch.no_grad():
        net.embedding.weight.copy_(10.0 * torch.eye(vocab))  # tanh(10) = 1 to double precision's 1e-8
        net.out_h.weight.zero_()
        net.out_h.bias.zero_()
        net.out_z.weight.zero_()
        net.out.weight.copy_(table.T / math.tanh(10.0))  # logits[v] = table[y, v]
        net.out.bias.zero_()
    return net


def test_beam_search_finds_the_best_caption_that_greedy_misses() -> None:
    a, b = 2, 3
    probs = torch.tensor(
        [
            [0.0001, 0.0001, 0.5498, 0.45],  # after BOS: "a" is likelier than "b"
            [0.0001, 0.9997, 0.0001, 0.0001],  # after EOS
            [0.0001, 0.35, 0.3299, 0.32],  # after "a": nothing is likely
            [0.0001, 0.9, 0.0499, 0.05],  # after "b": EOS is almost certain
        ],
        dtype=torch.double,
    )
    net = _markov_net(probs.log())
    images = torch.randn(2, 3, 8, 8, dtype=torch.double)
    prompt = torch.full((2, 1), BOS)
    with torch.no_grad():
        logits, _ = net(images, torch.tensor([[BOS, a, b]] * 2))
        torch.testing.assert_close(logits.log_softmax(-1)[0], probs.log()[[BOS, a, b]])
        state = net.start(net.encode(images))
        greedy = generate(_step(net), prompt, GenerationConfig("greedy", max_new_tokens=3), EOS, state)
        beam = generate(
            _step(net), prompt, GenerationConfig("beam", max_new_tokens=3, num_beams=2, length_penalty=0.0),
            EOS, state,
        )  # fmt: skip
    assert greedy.tolist() == [[a, EOS]] * 2  # p = 0.55 * 0.35 = 0.19
    assert beam.tolist() == [[b, EOS]] * 2  # p = 0.45 * 0.9 = 0.405


def _exhaustive_best(
    net, features: torch.Tensor, vocab: int, max_len: int, length_penalty: float
) -> tuple[list[int], float]:
    """The best ``sum log p / len**length_penalty`` over every caption of at most ``max_len`` tokens (ending
    at the first EOS, or cut at ``max_len``), each scored by one teacher-forced decode."""
    best, best_score = None, float("-inf")
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
                continue
            logits, _ = net.decode(torch.tensor([[BOS, *seq[:-1]]]), net.start(features))
            log_probs = logits.log_softmax(-1)[0]  # (n, V)
            score = sum(log_probs[i, token].item() for i, token in enumerate(seq)) / n**length_penalty
            if score > best_score:
                best, best_score = list(seq), score
    return best, best_score


@pytest.mark.parametrize("name", ["spatial", "both", "none", "transformer"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_over_a_random_net_finds_the_exhaustive_best(name: str, length_penalty: float) -> None:
    vocab, max_len = 4, 3  # 4 + 16 + 64 candidates; 64 beams never prune the best
    torch.manual_seed(4)
    if name == "transformer":
        net = TransformerCaptioner(vocab, image_size=8, preset="nano").double().eval()
    else:
        net = ShowAttendTell(vocab, image_size=8, preset="nano", attention=name).double().eval()
    images = torch.randn(2, 3, 8, 8, dtype=torch.double)
    with torch.no_grad():
        features = net.encode(images)
        tokens, scores = beam_search(
            _step(net), torch.full((2, 1), BOS), max_len, num_beams=vocab**max_len,
            length_penalty=length_penalty, eos_id=EOS, state=net.start(features),
        )  # fmt: skip
        for row in range(2):
            want, want_score = _exhaustive_best(net, features[row : row + 1], vocab, max_len, length_penalty)
            got = tokens[row].tolist()
            got = got[: got.index(EOS) + 1] if EOS in got else got
            assert got == want
            assert scores[row].item() == pytest.approx(want_score, abs=1e-5)  # beam search scores in float32

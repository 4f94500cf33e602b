"""Seq2seq nets: incremental decoding equals teacher forcing, padding is invisible, and beam search over
the net finds the best sequence that an exhaustive enumeration finds."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_seq.decoding import beam_search
from lightning_seq.errors import InputError
from lightning_seq.nets import RNNSeq2Seq, TransformerSeq2Seq
from lightning_seq.nets.seq2seq import reverse_within_length

PAD, BOS, EOS = 0, 2, 3
SRC_V, TGT_V = 11, 13

NETS = {
    "transformer": lambda **kw: TransformerSeq2Seq.from_preset("nano", SRC_V, TGT_V, **kw),
    "transformer-postnorm-learned": lambda **kw: TransformerSeq2Seq.from_preset(
        "nano", SRC_V, TGT_V, norm_first=False, positions="learned", **kw
    ),
    "gru": lambda **kw: RNNSeq2Seq.from_preset("nano", SRC_V, TGT_V, **kw),
    "lstm-2-layers": lambda **kw: RNNSeq2Seq.from_preset(
        "nano", SRC_V, TGT_V, cell="lstm", num_layers=2, **kw
    ),
    "gru-unidirectional": lambda **kw: RNNSeq2Seq.from_preset(
        "nano", SRC_V, TGT_V, bidirectional=False, **kw
    ),
}


def _net(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return NETS[name](**kwargs).double().eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.tensor([[4, 5, 6, 7, PAD, PAD], [5, 6, 7, 8, 9, 10], [9, PAD, PAD, PAD, PAD, PAD]])
    tgt_in = torch.cat([torch.full((3, 1), BOS), torch.randint(4, TGT_V, (3, 6))], dim=1)  # (3, 7)
    return src, tgt_in


@pytest.mark.parametrize("name", NETS)
def test_incremental_decoding_equals_teacher_forcing(name: str) -> None:
    net = _net(name)
    src, tgt_in = _batch()
    with torch.no_grad():
        full = net(src, tgt_in)  # (B, T, V)
        assert full.shape == (3, 7, TGT_V)
        state = net.encode(src)
        first, state = net.decode(tgt_in[:, :3], state)  # a prompt of 3 tokens, then one at a time
        steps = [first]
        for t in range(3, tgt_in.size(1)):
            logits, state = net.decode(tgt_in[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", NETS)
def test_padding_does_not_change_the_logits(name: str) -> None:
    net = _net(name)
    src, tgt_in = _batch()
    with torch.no_grad():
        padded = net(src, tgt_in)
        alone = [net(src[b : b + 1, : int((src[b] != PAD).sum())], tgt_in[b : b + 1]) for b in range(3)]
    torch.testing.assert_close(torch.cat(alone), padded, rtol=1e-9, atol=1e-10)


def test_reverse_within_length_keeps_padding_in_place() -> None:
    index = reverse_within_length(torch.tensor([3, 5, 1]), 5)
    assert index.tolist() == [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0], [0, 1, 2, 3, 4]]


def _exhaustive_best(net, src: torch.Tensor, vocab: int, max_len: int, length_penalty: float):
    """The best ``sum log p / len**length_penalty`` over every target of at most ``max_len`` tokens
    (ending at the first EOS, or cut at ``max_len``), each scored by one teacher-forced pass."""
    best, best_score = None, float("-inf")
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=n):
            if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
                continue
            tgt_in = torch.tensor([[BOS, *seq[:-1]]])
            log_probs = net(src, tgt_in).log_softmax(-1)[0]  # (n, V)
            score = sum(log_probs[i, tok].item() for i, tok in enumerate(seq)) / n**length_penalty
            if score > best_score:
                best, best_score = list(seq), score
    return best, best_score


@pytest.mark.parametrize("net_class", [TransformerSeq2Seq, RNNSeq2Seq])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_search_over_the_net_finds_the_exhaustive_best(net_class, length_penalty: float) -> None:
    vocab, max_len = 5, 3  # 5 + 25 + 125 candidate targets; 125 beams never prune the best
    torch.manual_seed(3)
    net = net_class.from_preset("nano", SRC_V, vocab).double().eval()
    src = torch.tensor([[4, 5, 6, PAD]])

    def step(tokens, state):
        logits, state = net.decode(tokens, state)
        return logits[:, -1], state

    with torch.no_grad():
        want, want_score = _exhaustive_best(net, src, vocab, max_len, length_penalty)
        tokens, score = beam_search(
            step, torch.tensor([[BOS]]), max_len, num_beams=vocab**max_len, length_penalty=length_penalty,
            eos_id=EOS, state=net.encode(src),
        )  # fmt: skip
    got = tokens[0].tolist()
    got = got[: got.index(EOS) + 1] if EOS in got else got
    assert got == want
    assert score.item() == pytest.approx(want_score, abs=1e-5)  # beam search scores in float32


def test_transformer_presets_share_and_tie_embeddings() -> None:
    base = TransformerSeq2Seq.PRESETS["base"]
    assert (base["dim"], base["encoder_depth"], base["decoder_depth"], base["heads"]) == (512, 6, 6, 8)
    assert base["dim"] * base["mlp_ratio"] == 2048
    net = TransformerSeq2Seq.from_preset("nano", 17, 17, share_embeddings=True)
    assert net.src_embedding is net.tgt_embedding and net.head.weight is net.tgt_embedding.weight
    untied = TransformerSeq2Seq.from_preset("nano", 17, 19, tie_weights=False)
    assert untied.head.weight is not untied.tgt_embedding.weight
    with pytest.raises(InputError, match="share_embeddings needs one joint vocabulary"):
        TransformerSeq2Seq.from_preset("nano", 17, 19, share_embeddings=True)
    with pytest.raises(InputError, match="positions='rotary'"):
        TransformerSeq2Seq.from_preset("nano", 17, 19, positions="rotary")
    with pytest.raises(InputError, match="preset='huge'"):
        RNNSeq2Seq.from_preset("huge", 17, 19)

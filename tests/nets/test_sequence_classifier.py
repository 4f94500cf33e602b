"""Sequence classifier and tagger nets: shapes, padding invariance, pooling, presets and their sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_seq.errors import InputError
from lightning_seq.nets import (
    RNNLM,
    RNNClassifier,
    RNNTagger,
    TransformerClassifier,
    TransformerLM,
    TransformerTagger,
)
from lightning_seq.nets.sequence_classifier import pool, reverse_padded

V, K = 40, 3

CLASSIFIERS = {
    "transformer-cls": (TransformerClassifier, {}),
    "transformer-mean": (TransformerClassifier, {"pooling": "mean"}),
    "transformer-last-causal": (TransformerClassifier, {"pooling": "last", "causal": True}),
    "transformer-learned-postnorm": (TransformerClassifier, {"positions": "learned", "norm_first": False}),
    "transformer-linear-attention": (TransformerClassifier, {"attention": "linear", "pooling": "mean"}),
    "lstm-last": (RNNClassifier, {}),
    "gru-mean": (RNNClassifier, {"cell": "gru", "pooling": "mean"}),
    "rnn-max-2layers": (RNNClassifier, {"cell": "rnn", "pooling": "max", "num_layers": 2}),
    "bilstm-last": (RNNClassifier, {"bidirectional": True}),
    "bigru-max": (RNNClassifier, {"cell": "gru", "bidirectional": True, "pooling": "max"}),
}
TAGGERS = {
    "transformer": (TransformerTagger, {}),
    "transformer-causal": (TransformerTagger, {"causal": True}),
    "lstm": (RNNTagger, {}),
    "bilstm-2layers": (RNNTagger, {"bidirectional": True, "num_layers": 2}),
}


def build(cls, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls.from_preset("nano", V, K, **kwargs).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three right-padded rows of 7, 4 and 1 real tokens (pad id 0)."""
    lengths = torch.tensor([7, 4, 1])
    mask = torch.arange(7)[None] < lengths[:, None]  # (3, 7)
    tokens = torch.randint(4, V, (3, 7), generator=torch.Generator().manual_seed(1))
    return tokens.masked_fill(~mask, 0), mask


def more_padding(
    tokens: torch.Tensor, mask: torch.Tensor, extra: int = 5
) -> tuple[torch.Tensor, torch.Tensor]:
    return F.pad(tokens, (0, extra)), F.pad(mask, (0, extra))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifiers_give_one_row_per_text_whatever_the_padding(name: str) -> None:
    net = build(*CLASSIFIERS[name])
    tokens, mask = batch()
    with torch.no_grad():
        logits = net(tokens, mask)
        padded = net(*more_padding(tokens, mask))
        alone = torch.cat([net(tokens[i : i + 1, :n], None) for i, n in enumerate(mask.sum(1).tolist())])
    assert logits.shape == (3, K)
    torch.testing.assert_close(padded, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, logits, atol=1e-5, rtol=1e-5)  # each text without any padding


@pytest.mark.parametrize("name", TAGGERS)
def test_taggers_give_one_row_per_token_whatever_the_padding(name: str) -> None:
    net = build(*TAGGERS[name])
    tokens, mask = batch()
    with torch.no_grad():
        logits = net(tokens, mask)
        padded = net(*more_padding(tokens, mask))
    assert logits.shape == (3, 7, K) and padded.shape == (3, 12, K)
    torch.testing.assert_close(padded[:, :7][mask], logits[mask], atol=1e-5, rtol=1e-5)
    for i, n in enumerate(mask.sum(1).tolist()):
        with torch.no_grad():
            alone = net(tokens[i : i + 1, :n])
        torch.testing.assert_close(alone[0], logits[i, :n], atol=1e-5, rtol=1e-5)


def test_the_class_token_comes_first_and_mean_pooling_averages_the_real_tokens() -> None:
    tokens, mask = batch()
    cls_net = build(TransformerClassifier, {"pooling": "cls"})
    mean_net = build(TransformerClassifier, {"pooling": "mean"})
    assert cls_net.cls_token.shape == (1, 1, 32) and mean_net.cls_token is None
    with torch.no_grad():
        prefix = cls_net.cls_token.expand(3, -1, -1)
        h_cls = cls_net.encode(tokens, mask, prefix=prefix)  # the class token, then 7 tokens
        h_mean = mean_net.encode(tokens, mask)
        assert h_cls.shape == (3, 8, 32) and h_mean.shape == (3, 7, 32)
        torch.testing.assert_close(cls_net(tokens, mask), cls_net.head(h_cls[:, 0]))
        by_hand = torch.stack([h_mean[i, :n].mean(0) for i, n in enumerate(mask.sum(1).tolist())])
        torch.testing.assert_close(mean_net(tokens, mask), mean_net.head(by_hand))


def test_pooling_and_padded_reversal_follow_their_definitions() -> None:
    h = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.allclose(pool(h, mask, "mean")[:2], torch.stack([h[0].mean(0), h[1, :3].mean(0)]))
    assert torch.equal(pool(h, mask, "max")[:2], torch.stack([h[0].amax(0), h[1, :3].amax(0)]))
    assert torch.equal(pool(h, mask, "last")[:2], torch.stack([h[0, 5], h[1, 2]]))
    assert torch.equal(pool(h, mask, "mean")[2], torch.zeros(4)) and torch.equal(
        pool(h, mask, "max")[2], torch.zeros(4)
    )
    lengths = mask.sum(1)
    flipped = reverse_padded(h, lengths)
    assert torch.equal(flipped[0], h[0].flip(0))
    assert torch.equal(flipped[1, :3], h[1, :3].flip(0)) and torch.equal(flipped[1, 3:], h[1, 3:])
    assert torch.equal(reverse_padded(flipped, lengths), h)


def test_bidirectional_rnn_reads_each_text_backwards_from_its_last_real_token() -> None:
    net = build(RNNClassifier, {"bidirectional": True})
    tokens, mask = batch()
    with torch.no_grad():
        forward, backward = net.encode(tokens, mask)
        row, n = tokens[1, :4], 4
        x = net.embedding(row)[None]  # (1, 4, E)
        expected_fwd, _ = net.rnn(x)
        expected_bwd, _ = net.rnn_reverse(x.flip(1))
        torch.testing.assert_close(forward[1, :n], expected_fwd[0])
        torch.testing.assert_close(backward[1, :n], expected_bwd[0].flip(0))
        pooled = torch.cat([expected_fwd[0, -1], expected_bwd[0, -1]])  # both directions' final states
        torch.testing.assert_close(net(tokens, mask)[1], net.head(pooled))


def test_tiny_presets_have_the_language_models_encoder_names_and_shapes() -> None:
    pairs = [
        (
            TransformerClassifier.from_preset("nano", V, K, pooling="last", causal=True),
            TransformerLM.from_preset("nano", V),
        ),
        (RNNTagger.from_preset("nano", V, K), RNNLM.from_preset("nano", V)),
    ]
    for net, lm in pairs:
        lm_shapes = {k: v.shape for k, v in lm.state_dict().items()}
        encoder = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("head.")}
        assert encoder and all(lm_shapes.get(k) == shape for k, shape in encoder.items()), set(encoder) - set(
            lm_shapes
        )


def block_params(d: int) -> int:
    """One encoder block, from its shapes: Q, K, V, O (d x d + d each), FFN d -> 4d -> d, 2 LayerNorms."""
    attention = 4 * (d * d + d)
    ffn = (d * 4 * d + 4 * d) + (4 * d * d + d)
    norms = 2 * 2 * d
    return attention + ffn + norms


@pytest.mark.parametrize(
    ("preset", "depth", "d", "published"),
    # Devlin et al. (2019), as counted in the released bert-base/large-uncased weights (vocabulary 30522,
    # 512 positions, 2 token types, embedding LayerNorm, pooler d x d)
    [("bert-base", 12, 768, 109_482_240), ("bert-large", 24, 1024, 335_141_888)],
)
def test_bert_presets_have_berts_size(preset: str, depth: int, d: int, published: int) -> None:
    vocab, k = 30522, 2
    with torch.device("meta"):
        net = TransformerClassifier.from_preset(preset, vocab, k)
    blocks = sum(p.numel() for p in net.transformer.parameters())
    assert blocks == depth * block_params(d)
    if preset == "bert-base":
        assert 84e6 < blocks < 86e6  # "about 85M in the blocks"
    total = sum(p.numel() for p in net.parameters())
    # ours has no token types (2 d) or embedding LayerNorm (2 d), but a class token (d); its head starts
    # with a d x d layer, as BERT's pooler, and ends with the d -> k classifier
    assert total == published - 2 * d - 2 * d + d + (d * k + k)
    assert net.positions.weight.shape == (512, d) and len(net.transformer.blocks) == depth


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(InputError, match=r"pooling='cls' with causal=True.*pooling='last'"):
        TransformerClassifier(V, K, causal=True)
    with pytest.raises(
        InputError, match=r"pooling='first' is not supported; expected one of cls, mean, last"
    ):
        TransformerClassifier(V, K, pooling="first")
    with pytest.raises(InputError, match="pooling='cls' is not supported"):
        RNNClassifier(V, K, pooling="cls")
    with pytest.raises(InputError, match="num_classes=0"):
        RNNTagger(V, 0)
    with pytest.raises(InputError, match="preset='huge' is unknown"):
        TransformerTagger.from_preset("huge", V, K)

"""Transformer block and stacks: the equations, incremental decoding with the cache, padding."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_seq.errors import InputError
from lightning_seq.layers import (
    LinearAttention,
    MultiHeadAttention,
    TransformerBlock,
    TransformerDecoder,
    TransformerEncoder,
    TransformerEncoderDecoder,
)

B, T, S, DIM, HEADS = 2, 9, 6, 16, 4
KINDS = ["softmax", "linear"]


def _x(t: int = T) -> Tensor:
    return torch.randn(B, t, DIM, dtype=torch.float64)


def _chunks(first: int, total: int) -> list[tuple[int, int]]:
    """A prompt chunk ``[0, first)``, then one position at a time."""
    return [(0, first), *((t, t + 1) for t in range(first, total))]


# ----------------------------------------------------------------------------------------- block
def test_block_keeps_its_state_dict_keys() -> None:
    """ViT checkpoints load: an encoder block has exactly the keys it always had."""
    keys = set(TransformerBlock(8, 2).state_dict())
    expected = {f"{m}.{p}" for m in ("norm1", "norm2") for p in ("weight", "bias")}
    expected |= {f"attn.{n}_proj.{p}" for n in "qkv" for p in ("weight", "bias")}
    expected |= {f"attn.out_proj.{p}" for p in ("weight", "bias")}
    expected |= {f"ffn.net.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")}
    assert keys == expected


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_decoder_block_equations(norm_first: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, cross_attention=True, norm_first=norm_first).double().eval()
    x, memory = _x(), _x(S)
    out = block(x, causal=True, memory=memory)
    sa = lambda h: block.attn(h, causal=True)  # noqa: E731
    ca = lambda h: block.cross_attn(h, memory)  # noqa: E731
    n1, nc, n2 = block.norm1, block.norm_cross, block.norm2
    if norm_first:
        h = x + sa(n1(x))
        h = h + ca(nc(h))
        expected = h + block.ffn(n2(h))
    else:
        h = n1(x + sa(x))
        h = nc(h + ca(h))
        expected = n2(h + block.ffn(h))
    torch.testing.assert_close(out, expected)


def test_block_attention_kinds_and_errors() -> None:
    assert isinstance(TransformerBlock(8, 2).attn, MultiHeadAttention)
    block = TransformerBlock(8, 2, attention="linear", cross_attention=True)
    assert isinstance(block.attn, LinearAttention) and isinstance(block.cross_attn, MultiHeadAttention)
    with pytest.raises(InputError, match="attention='performer'"):
        TransformerBlock(8, 2, attention="performer")
    with pytest.raises(InputError, match="needs a memory"):
        block(torch.randn(1, 3, 8))


def test_no_bias_anywhere() -> None:
    enc = TransformerEncoder(8, 2, 2, bias=False)
    assert not [name for name, _ in enc.named_parameters() if name.endswith("bias")]


def test_stochastic_depth_and_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(DIM, 3, HEADS, dropout=0.2, drop_path=0.4).double()
    assert [b.drop_path.p for b in enc.blocks] == pytest.approx([0.0, 0.2, 0.4])  # linear in depth
    x = _x()
    evaluated = enc.eval()(x)
    torch.testing.assert_close(enc(x), evaluated)
    enc.train()
    assert not torch.allclose(enc(x), evaluated)


# ------------------------------------------------------------------ incremental decoding == full
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("first", [1, 4], ids=["token_by_token", "prompt_chunk_first"])
@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_norm", "post_norm"])
def test_encoder_cache_matches_full_causal_pass(kind: str, first: int, norm_first: bool) -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(DIM, 2, HEADS, norm_first=norm_first, attention=kind).double().eval()
    x = _x()
    full = enc(x, causal=True)
    outs, cache = [], None
    for start, stop in _chunks(first, T):
        out, cache = enc(x[:, start:stop], causal=True, cache=cache, use_cache=True)
        assert len(cache) == 2 and set(cache[0]) == {"self"}
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("first", [1, 3], ids=["token_by_token", "prompt_chunk_first"])
def test_decoder_cache_matches_full_pass_with_cross_attention(kind: str, first: int) -> None:
    torch.manual_seed(0)
    dec = TransformerDecoder(DIM, 2, HEADS, attention=kind).double().eval()
    x, memory = _x(), _x(S)
    memory_key_mask = torch.ones(B, S, dtype=torch.bool)
    memory_key_mask[1, 4:] = False
    full = dec(x, memory, memory_key_mask)
    outs, cache = [], []  # an empty cache, as a seq2seq state starts
    for start, stop in _chunks(first, T):
        mem = memory if start == 0 else None  # later steps use the cached memory keys/values
        out, cache = dec(x[:, start:stop], mem, memory_key_mask, cache=cache, use_cache=True)
        assert cache[0]["cross"][0].shape == (B, HEADS, S, DIM // HEADS)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-12)


def test_decoder_cache_survives_beam_reordering() -> None:
    """Every cache tensor is batch-first: picking rows of the cache = decoding those rows alone."""
    torch.manual_seed(0)
    dec = TransformerDecoder(DIM, 2, HEADS).double().eval()
    x, memory = _x(4), _x(S)
    _, cache = dec(x[:, :3], memory, use_cache=True)
    rows = torch.tensor([1, 1, 0])
    picked = [{k: tuple(t[rows] for t in v) for k, v in layer.items()} for layer in cache]
    out, _ = dec(x[rows, 3:], None, cache=picked, use_cache=True)
    torch.testing.assert_close(out, dec(x[rows], memory[rows])[:, 3:], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", KINDS)
def test_padded_keys_never_change_real_positions(kind: str) -> None:
    torch.manual_seed(0)
    enc = TransformerEncoder(DIM, 2, HEADS, attention=kind).double().eval()
    dec = TransformerDecoder(DIM, 2, HEADS, attention=kind).double().eval()
    key_mask = torch.ones(B, T, dtype=torch.bool)
    key_mask[0, 6:], key_mask[1, 3:] = False, False
    x = _x()
    x2 = torch.where(key_mask[..., None], x, 1e3 * torch.randn_like(x))  # other garbage in the padding
    real = key_mask[..., None].expand_as(x)
    torch.testing.assert_close(enc(x2, key_mask)[real], enc(x, key_mask)[real], rtol=1e-10, atol=1e-12)
    y = _x(5)
    torch.testing.assert_close(dec(y, x2, key_mask), dec(y, x, key_mask), rtol=1e-10, atol=1e-12)


def test_encoder_decoder_is_decoder_over_encoder() -> None:
    torch.manual_seed(0)
    model = TransformerEncoderDecoder(DIM, 2, 3, HEADS).double().eval()
    assert len(model.encoder.blocks) == 2 and len(model.decoder.blocks) == 3
    src, tgt = _x(S), _x()
    src_key_mask = torch.ones(B, S, dtype=torch.bool)
    src_key_mask[0, -2:] = False
    memory = model.encoder(src, key_mask=src_key_mask)
    expected = model.decoder(tgt, memory, memory_key_mask=src_key_mask)
    torch.testing.assert_close(model(src, tgt, src_key_mask), expected)
    # causal: a later target token never changes earlier outputs
    tgt2 = tgt.clone()
    tgt2[:, -1] += 5.0
    torch.testing.assert_close(model(src, tgt2, src_key_mask)[:, :-1], expected[:, :-1])

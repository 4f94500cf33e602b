"""The DDPM U-Net's blocks: each against its equation by hand, the zero-initialised branches, the
sinusoidal time embedding, GroupNorm group picking and the resampling shapes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.layers import (
    Downsample,
    ResBlock,
    SpatialSelfAttention,
    TimeEmbedding,
    Upsample,
    group_count,
    group_norm,
    sinusoidal_embedding,
    sinusoidal_table,
)


def randomise_zeros_(module: nn.Module) -> nn.Module:
    """Give the zero-initialised weights random values, so that every path carries signal."""
    torch.manual_seed(1)
    for p in module.parameters():
        if p.dim() > 1 and not p.any():
            nn.init.xavier_uniform_(p.data)
    return module


@pytest.mark.parametrize(
    ("channels", "groups", "expected"),
    [(128, 32, 32), (256, 32, 32), (8, 32, 8), (12, 8, 6), (24, 32, 24), (7, 4, 1), (6, 4, 3), (1, 32, 1)],
)
def test_group_count_is_the_largest_divisor_up_to_groups(channels, groups, expected):
    assert group_count(channels, groups) == expected
    norm = group_norm(channels, groups)
    assert (norm.num_groups, norm.num_channels, norm.eps) == (expected, channels, 1e-6)


def test_sinusoidal_embedding_is_the_table_at_any_positions():
    torch.testing.assert_close(
        sinusoidal_embedding(torch.arange(50), 8), sinusoidal_table(50, 8), rtol=0, atol=0
    )
    t = torch.tensor([999, 3, 0])
    emb = sinusoidal_embedding(t, 6)
    assert emb.shape == (3, 6) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, sinusoidal_table(1000, 6)[t], rtol=0, atol=0)  # long timesteps, any order
    torch.testing.assert_close(sinusoidal_embedding(t.double(), 6), emb, rtol=0, atol=0)  # float the same
    half = sinusoidal_embedding(torch.tensor([2.5]), 4)[0]  # between the rows of the table
    expected = [math.sin(2.5), math.cos(2.5), math.sin(2.5 / 100), math.cos(2.5 / 100)]
    torch.testing.assert_close(half, torch.tensor(expected))


def test_time_embedding_is_an_mlp_of_the_sinusoids():
    torch.manual_seed(0)
    embed = TimeEmbedding(16, 64)
    t = torch.tensor([0, 1, 500, 999])
    out = embed(t)
    assert out.shape == (4, 64)
    pe = sinusoidal_embedding(t, 16)
    torch.testing.assert_close(out, embed.linear2(F.silu(embed.linear1(pe))))
    assert all((out[i] - out[j]).abs().max() > 1e-3 for i in range(4) for j in range(i))  # t changes it
    assert (embed.linear1.in_features, embed.linear2.out_features) == (16, 64)


def test_resblock_starts_as_its_skip_path():
    torch.manual_seed(0)
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 32)
    same = ResBlock(8, 8, 32, groups=4)
    assert isinstance(same.skip, nn.Identity)
    torch.testing.assert_close(same(x, emb), x)  # the second conv starts at zero: the identity
    wider = ResBlock(8, 16, 32, groups=4)
    assert isinstance(wider.skip, nn.Conv2d) and wider.skip.kernel_size == (1, 1)
    torch.testing.assert_close(wider(x, emb), wider.skip(x))


def test_resblock_is_its_equation():
    torch.manual_seed(0)
    block = randomise_zeros_(ResBlock(8, 16, 32, dropout=0.5, groups=4)).eval()
    x, emb = torch.randn(3, 8, 5, 5), torch.randn(3, 32)
    h = F.conv2d(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias, 1e-6)),
                 block.conv1.weight, block.conv1.bias, padding=1)  # fmt: skip
    h = h + (F.silu(emb) @ block.embed.weight.T + block.embed.bias)[:, :, None, None]
    h = F.silu(F.group_norm(h, 4, block.norm2.weight, block.norm2.bias, 1e-6))
    h = F.conv2d(h, block.conv2.weight, block.conv2.bias, padding=1)
    expected = F.conv2d(x, block.skip.weight, block.skip.bias) + h
    out = block(x, emb)
    assert out.shape == (3, 16, 5, 5)
    torch.testing.assert_close(out, expected)
    assert (block(x, emb.flip(0)) - out).abs().max() > 1e-3  # the embedding reaches the output
    block.train()
    assert (block(x, emb) - block(x, emb)).abs().max() > 0  # dropout, in training only


def test_spatial_self_attention_is_attention_over_the_pixels():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 4, 3)
    attention = SpatialSelfAttention(8, heads=1, groups=4)
    torch.testing.assert_close(attention(x), x)  # the output projection starts at zero
    randomise_zeros_(attention)
    mha = attention.attention
    tokens = F.group_norm(x, 4, attention.norm.weight, attention.norm.bias, 1e-6).reshape(2, 8, 12).mT
    q, k, v = mha.q_proj(tokens), mha.k_proj(tokens), mha.v_proj(tokens)  # (B, HW, C) each
    weights = (q @ k.mT / math.sqrt(8)).softmax(-1)  # (B, HW, HW): every pixel to every pixel
    expected = x + mha.out_proj(weights @ v).mT.reshape(2, 8, 4, 3)
    torch.testing.assert_close(attention(x), expected)


def test_spatial_self_attention_is_equivariant_to_moving_the_pixels():
    torch.manual_seed(0)
    attention = randomise_zeros_(SpatialSelfAttention(16, heads=4, groups=8))
    x = torch.randn(2, 16, 5, 5)
    perm = torch.randperm(25)

    def shuffle(images: torch.Tensor) -> torch.Tensor:
        return images.flatten(2)[:, :, perm].reshape(images.shape)

    out = attention(x)
    assert out.shape == x.shape and (out - x).abs().max() > 1e-3
    torch.testing.assert_close(attention(shuffle(x)), shuffle(out))  # no position: a set of pixels


def test_resampling_halves_and_doubles_the_side():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    down, up = Downsample(4), Upsample(4)
    assert down(x).shape == (2, 4, 4, 4) and down.conv.stride == (2, 2)
    assert down(torch.randn(1, 4, 7, 7)).shape == (1, 4, 4, 4)
    assert up(x).shape == (2, 4, 16, 16)
    nn.init.dirac_(up.conv.weight)  # identity conv: the output is the nearest-neighbour upsampling
    torch.testing.assert_close(up(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))

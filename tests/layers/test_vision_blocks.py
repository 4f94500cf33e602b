"""Patch embedding, stochastic depth, Transformer block and Squeeze-and-Excitation."""

from __future__ import annotations

import pytest
import torch

from lightning_seq.errors import InputError
from lightning_seq.layers import DropPath, FeedForward, PatchEmbedding, SqueezeExcitation, TransformerBlock

# --------------------------------------------------------------------------- PatchEmbedding


def test_patch_embedding_conv_equals_linear_with_copied_weights() -> None:
    torch.manual_seed(0)
    conv = PatchEmbedding(3, 8, patch_size=4, kind="conv")
    linear = PatchEmbedding(3, 8, patch_size=4, kind="linear")
    linear.load_state_dict(conv.state_dict())  # the kernel (8, 3, 4, 4) is the linear weight (8, 48)
    images = torch.randn(2, 3, 8, 12)
    tokens, grid = conv(images)
    tokens_linear, grid_linear = linear(images)
    assert tokens.shape == (2, 6, 8)
    assert grid == grid_linear == (2, 3)
    torch.testing.assert_close(tokens_linear, tokens)
    # token 4 is patch row 1, column 1: W vec(patch) + b
    patch = images[:, :, 4:8, 4:8].flatten(1)  # (B, C*p*p), channel-major
    expected = patch @ conv.proj.weight.flatten(1).T + conv.proj.bias
    torch.testing.assert_close(tokens[:, 4], expected)


def test_patch_embedding_rejects_untiled_images() -> None:
    with pytest.raises(InputError, match="patch_size=4"):
        PatchEmbedding(3, 8, 4)(torch.randn(1, 3, 10, 8))
    with pytest.raises(InputError, match="kind='pixel'"):
        PatchEmbedding(3, 8, 4, kind="pixel")


# --------------------------------------------------------------------------- DropPath


def test_drop_path_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(4, 5, 6)
    assert torch.equal(DropPath(0.5).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_path_drops_whole_samples_and_preserves_the_mean() -> None:
    torch.manual_seed(0)
    p, n = 0.25, 20_000
    out = DropPath(p).train()(torch.ones(n, 3, 2))
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] > 0
    assert torch.equal(per_sample, kept[:, None].float().expand_as(per_sample) / (1 - p))  # all or nothing
    # Binomial(n, p): the standard deviation of the dropped fraction is 0.003; allow ~4 sigma.
    assert abs((~kept).float().mean().item() - p) < 0.013
    assert abs(out.mean().item() - 1.0) < 0.02


def test_drop_path_rejects_bad_probability() -> None:
    with pytest.raises(InputError, match=r"p=1\.0"):
        DropPath(1.0)


# --------------------------------------------------------------------------- TransformerBlock


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_block_equations(norm_first: bool) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, mlp_ratio=2.0, norm_first=norm_first).eval()
    x = torch.randn(3, 5, 8)
    if norm_first:
        h = x + block.attn(block.norm1(x))
        expected = h + block.ffn(block.norm2(h))
    else:
        h = block.norm1(x + block.attn(x))
        expected = block.norm2(h + block.ffn(h))
    torch.testing.assert_close(block(x), expected)


def test_transformer_block_causal() -> None:
    torch.manual_seed(0)
    block = TransformerBlock(8, 2).eval()
    x = torch.randn(2, 6, 8)
    changed = x.clone()
    changed[:, 4:] += 1.0
    torch.testing.assert_close(block(changed, causal=True)[:, :4], block(x, causal=True)[:, :4])
    assert not torch.allclose(block(changed)[:, :4], block(x)[:, :4])


def test_feed_forward_shape_and_activation() -> None:
    ffn = FeedForward(6, 24, activation=torch.nn.ReLU)
    assert isinstance(ffn.net[1], torch.nn.ReLU)
    assert ffn(torch.randn(2, 3, 6)).shape == (2, 3, 6)


# --------------------------------------------------------------------------- SqueezeExcitation


def test_squeeze_excitation_gates() -> None:
    torch.manual_seed(0)
    se = SqueezeExcitation(32, reduction=16, min_hidden=8)
    assert se.fc1.out_features == 8  # max(32 // 16, 8)
    assert SqueezeExcitation(256).fc1.out_features == 16
    x = torch.randn(4, 32, 5, 7) * 3
    gates = se.gates(x)
    assert gates.shape == (4, 32)
    assert ((gates > 0) & (gates < 1)).all()
    out = se(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * gates[:, :, None, None])
    # the gates see only the channel means
    torch.testing.assert_close(se.gates(x.mean(dim=(2, 3), keepdim=True)), gates)

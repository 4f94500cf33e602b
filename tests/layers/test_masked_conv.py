"""Masked convolutions and the gated block: masks, causality (exact zero gradients), no blind spot."""

import pytest
import torch
import torch.nn.functional as F
from autoregressive import blind_spots, raster_jacobian
from torch import nn

from lightning_seq.errors import InputError
from lightning_seq.layers.masked_conv import GatedBlock, MaskedConv2d, raster_mask, shift_down


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernel", [3, 5, (1, 3)])
def test_masks_a_and_b_differ_exactly_at_the_centre(channels, kernel):
    a = raster_mask(6, 9, kernel, "A", channels)
    b = raster_mask(6, 9, kernel, "B", channels)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    differ = (a != b).any(0).any(0)  # (kh, kw)
    expected = torch.zeros(kh, kw, dtype=torch.bool)
    expected[kh // 2, kw // 2] = True
    assert torch.equal(differ, expected)
    # at the centre B adds exactly each output channel's own colour group
    own = (torch.arange(6)[:, None] % channels) == (torch.arange(9)[None, :] % channels)  # (out, in)
    assert torch.equal((b - a)[:, :, kh // 2, kw // 2].bool(), own)
    assert a[:, :, kh // 2 + 1 :].sum() == 0 and a[:, :, kh // 2, kw // 2 + 1 :].sum() == 0  # nothing after
    assert a[:, :, : kh // 2].all() and a[:, :, kh // 2, : kw // 2].all()  # everything before


def test_colour_ordering_at_the_centre():
    a = raster_mask(3, 3, 1, "A", 3)[:, :, 0, 0]  # (out R G B, in R G B)
    b = raster_mask(3, 3, 1, "B", 3)[:, :, 0, 0]
    assert torch.equal(a, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))  # R sees nothing; B sees R, G
    assert torch.equal(b, torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))


def test_masked_conv_is_a_same_padded_convolution_with_the_masked_kernel():
    torch.manual_seed(0)
    conv = MaskedConv2d(3, 6, 5, "A", channels=3)
    x = torch.randn(2, 3, 9, 7)
    expected = F.conv2d(x, conv.weight * conv.mask, conv.bias, padding=2)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    conv(x).sum().backward()
    assert conv.weight.grad[conv.mask == 0].abs().sum() == 0  # masked entries never learn
    assert conv.effective_parameters() == int(conv.mask.sum()) + 6


def test_off_centre_kernel_pads_only_before():
    """The horizontal stack's ``1 x 3`` kernel with its centre on the last column reads columns j-2..j."""
    conv = MaskedConv2d(1, 1, (1, 3), "B", centre=(0, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 10.0, 100.0]).view(1, 1, 1, 3))
    x = torch.zeros(1, 1, 2, 5)
    x[0, 0, 0, 2] = 1.0
    assert conv(x)[0, 0, 0].tolist() == [0.0, 0.0, 100.0, 10.0, 1.0]
    assert conv(x)[0, 0, 1].abs().sum() == 0


@pytest.mark.parametrize("channels", [1, 3])
def test_masked_conv_stack_is_causal(channels):
    torch.manual_seed(1)
    net = _Stack(MaskedConv2d(channels, 6, 3, "A", channels), MaskedConv2d(6, channels, 3, "B", channels))
    jac = raster_jacobian(net, channels, 5)
    assert jac.triu().abs().sum() == 0  # every output: zero gradient w.r.t. itself and all after it
    assert jac.tril(-1).count_nonzero() > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_gated_blocks_are_causal_and_have_no_blind_spot(channels):
    torch.manual_seed(2)
    size, reach = 9, 3  # first kernel 3 (1 row / column) + two kernel-3 blocks (1 each)
    net = _GatedStack(channels, kernel=3, depth=3)
    jac = raster_jacobian(net, channels, size)
    assert jac.triu().abs().sum() == 0
    assert blind_spots(jac, 5, 4, reach, channels, size) == []


def test_vertical_stack_never_sees_the_current_row():
    torch.manual_seed(3)
    block = GatedBlock(1, 4, kernel_size=3, first=True)
    v = torch.zeros(1, 1, 6, 6, requires_grad=True)
    _, h = block(v, torch.zeros(1, 1, 6, 6))  # the horizontal input is not v: only the vertical path
    (grad,) = torch.autograd.grad(h[0, :, 3, 2].sum(), v)
    assert grad[0, 0, 3:].abs().sum() == 0  # rows at and below the output
    assert grad[0, 0, :3].abs().sum() > 0


def test_class_bias_changes_the_output():
    torch.manual_seed(4)
    block = GatedBlock(1, 4, first=True, num_classes=3)
    x = torch.randn(2, 1, 5, 5)
    _, h0 = block(x, x, torch.tensor([0, 0]))
    _, h1 = block(x, x, torch.tensor([1, 2]))
    assert not torch.allclose(h0, h1)


def test_shift_down():
    x = torch.arange(6.0).view(1, 1, 3, 2)
    assert shift_down(x)[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0], [2.0, 3.0]]


def test_bad_arguments():
    with pytest.raises(InputError, match="multiples of the 3 colour groups"):
        MaskedConv2d(3, 8, 3, "B", channels=3)
    with pytest.raises(InputError, match="mask_type must be 'A' or 'B'"):
        MaskedConv2d(1, 4, 3, "C")
    with pytest.raises(InputError, match="odd"):
        GatedBlock(1, 4, kernel_size=4)


class _Stack(nn.Sequential):
    def forward(self, x):
        out = super().forward(x)
        return out[:, None]  # (B, 1, C, H, W): one parameter per value


class _GatedStack(nn.Module):
    def __init__(self, channels: int, kernel: int, depth: int):
        super().__init__()
        width = 2 * channels
        blocks = [GatedBlock(channels, width, kernel, True, channels)]
        blocks += [GatedBlock(width, width, kernel, False, channels) for _ in range(depth - 1)]
        self.blocks = nn.ModuleList(blocks)
        self.out = MaskedConv2d(width, channels, 1, "B", channels)

    def forward(self, x):
        v = h = x
        for block in self.blocks:
            v, h = block(v, h)
        return self.out(h)[:, None]  # (B, 1, C, H, W)

"""ViT (and DeiT), Swin and ResNet classifiers: the shared contract, presets, features, learning."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.errors import InputError
from lightning_seq.nets import ResNet, Swin, ViT

FAMILIES = [ViT, Swin, ResNet]


def _images(batch: int, channels: int, size: int) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- classifier contract


@pytest.mark.parametrize("cls", FAMILIES)
def test_constructor_contract(cls: type[nn.Module]) -> None:
    params = inspect.signature(cls).parameters
    for name in ("image_size", "in_channels", "num_classes"):
        assert params[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert params[name].default is not inspect.Parameter.empty
    assert "nano" in cls.PRESETS
    net = cls.from_preset("nano", image_size=16, in_channels=1, num_classes=3)
    assert (net.image_size, net.in_channels, net.num_classes) == (16, 1, 3)  # read by ImageClassifier
    with pytest.raises(InputError, match="preset='huge'"):
        cls.from_preset("huge")


@pytest.mark.parametrize("cls", FAMILIES)
@pytest.mark.parametrize(("channels", "size", "classes"), [(3, 32, 10), (1, 16, 7)])
def test_forward_shapes(cls: type[nn.Module], channels: int, size: int, classes: int) -> None:
    torch.manual_seed(0)
    net = cls.from_preset("nano", image_size=size, in_channels=channels, num_classes=classes)
    logits = net(_images(3, channels, size))
    assert logits.shape == (3, classes)
    assert logits.isfinite().all()


@pytest.mark.parametrize("cls", FAMILIES)
def test_channels_last_input_gives_the_same_logits(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    net = cls.from_preset("nano", image_size=16).eval()
    images = _images(2, 3, 16)
    expected = net(images)
    torch.testing.assert_close(net(images.to(memory_format=torch.channels_last)), expected)
    torch.testing.assert_close(net.to(memory_format=torch.channels_last)(images), expected)


def test_published_preset_sizes() -> None:
    """The named presets have the published parameter counts (ImageNet heads, 224 pixels)."""
    counts = {}
    with torch.device("meta"):  # shapes only, no memory or init cost
        counts["vit-b/16"] = ViT.from_preset("base", image_size=224, patch_size=16, num_classes=1000)
        counts["vit-s/16"] = ViT.from_preset("small", image_size=224, patch_size=16, num_classes=1000)
        counts["swin-t"] = Swin.from_preset("tiny", image_size=224, num_classes=1000)
        counts["swin-b"] = Swin.from_preset("base", image_size=224, num_classes=1000)
        counts["resnet18"] = ResNet.from_preset("resnet18", se=False, num_classes=1000)
    millions = {k: round(sum(p.numel() for p in net.parameters()) / 1e6, 1) for k, net in counts.items()}
    assert millions == {"vit-b/16": 86.6, "vit-s/16": 22.1, "swin-t": 28.3, "swin-b": 87.8, "resnet18": 11.7}


# --------------------------------------------------------------------------- ViT / DeiT


def test_vit_structure_and_init() -> None:
    torch.manual_seed(0)
    net = ViT(image_size=16, patch_size=4, dim=24, depth=3, heads=2, drop_path=0.2)
    assert [block.drop_path.p for block in net.blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert net.pos_embed.shape == (1, 1 + 16, 24)
    assert net.forward_features(_images(2, 3, 16)).shape == (2, 1 + 16, 24)
    for module in net.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.abs().max() <= 0.04  # truncated at two standard deviations
            assert not module.bias.any()
    assert net.cls_token.abs().max() <= 0.04
    assert 0.01 < net.pos_embed.std() < 0.02


def test_vit_linear_patch_embedding_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    conv = ViT.from_preset("nano", image_size=16).eval()
    linear = ViT.from_preset("nano", image_size=16, patch_embed="linear").eval()
    linear.load_state_dict(conv.state_dict())
    images = _images(2, 3, 16)
    torch.testing.assert_close(linear(images), conv(images))


@pytest.mark.parametrize("distillation", [False, True])
def test_vit_loads_position_embeddings_from_another_image_size(distillation: bool) -> None:
    torch.manual_seed(0)
    small = ViT.from_preset("nano", image_size=32, distillation=distillation)
    extra = 2 if distillation else 1
    with torch.no_grad():  # a grid embedding that is constant per channel stays constant when resized
        small.pos_embed[:, extra:] = torch.linspace(-1, 1, 32)
    large = ViT.from_preset("nano", image_size=48, distillation=distillation)
    large.load_state_dict(small.state_dict())
    assert large.pos_embed.shape == (1, extra + 12 * 12, 32)
    torch.testing.assert_close(large.pos_embed[:, :extra], small.pos_embed[:, :extra])  # tokens kept
    torch.testing.assert_close(large.pos_embed[:, extra:], torch.linspace(-1, 1, 32).expand(1, 144, 32))
    torch.testing.assert_close(large.head.weight, small.head.weight)
    assert large(_images(2, 3, 48)).shape == (2, 10)


def test_vit_resized_position_embedding_is_bicubic_on_the_grid() -> None:
    torch.manual_seed(0)
    small = ViT.from_preset("nano", image_size=16)  # 4 x 4 grid
    large = ViT.from_preset("nano", image_size=32)  # 8 x 8 grid
    large.load_state_dict(small.state_dict())
    grid = small.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)  # (1, dim, 4, 4)
    expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    torch.testing.assert_close(large.pos_embed[0, 1:].reshape(8, 8, 32).permute(2, 0, 1), expected[0])


def test_deit_forward_is_the_mean_of_the_two_heads() -> None:
    torch.manual_seed(0)
    net = ViT.from_preset("nano", image_size=16, num_classes=5, distillation=True).eval()
    images = _images(3, 3, 16)
    cls_logits, dist_logits = net.forward_heads(images)
    assert cls_logits.shape == dist_logits.shape == (3, 5)
    assert not torch.allclose(cls_logits, dist_logits)
    torch.testing.assert_close(net(images), (cls_logits + dist_logits) / 2)
    assert net.forward_features(images).shape == (3, 2 + 16, 32)
    plain = ViT.from_preset("nano", image_size=16, num_classes=5).eval()
    cls_logits, dist_logits = plain.forward_heads(images)  # no distillation token: the class head twice
    assert dist_logits is cls_logits
    torch.testing.assert_close(plain(images), cls_logits)


def test_vit_rejects_untiled_images() -> None:
    with pytest.raises(InputError, match="image_size=30 is not divisible by patch_size=4"):
        ViT(image_size=30)


# --------------------------------------------------------------------------- Swin


def test_swin_stage_shapes() -> None:
    torch.manual_seed(0)
    net = Swin.from_preset("nano", image_size=32)
    maps = net.forward_stages(_images(2, 3, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 8, 8, 32)]
    deeper = Swin(image_size=32, patch_size=2, dim=8, depths=(2, 1, 1), heads=(1, 2, 2), window_size=4)
    assert [m.shape[1:] for m in deeper.forward_stages(_images(1, 3, 32))] == [
        (16, 16, 8),
        (8, 8, 16),
        (4, 4, 32),
    ]


def test_swin_blocks_alternate_shifts_and_shrink_small_windows() -> None:
    net = Swin(image_size=32, patch_size=2, dim=8, depths=(2, 2, 2), heads=(1, 1, 1), window_size=4)
    blocks = [[(b.window_size, b.shift) for b in stage if hasattr(b, "shift")] for stage in net.stages]
    assert blocks == [[(4, 0), (4, 2)], [(4, 0), (4, 2)], [(4, 0), (4, 0)]]  # stage 3 map is 4 x 4


def test_swin_rejects_grids_it_cannot_tile() -> None:
    with pytest.raises(
        InputError, match=r"window_size=7 .* image_size=32 / patch_size=4 .* use window_size=4"
    ):
        Swin.from_preset("tiny", image_size=32)
    with pytest.raises(InputError, match=r"image_size=24 with patch_size=4 .* multiple of .* = 32"):
        Swin(image_size=24, window_size=3)
    suggested = Swin(image_size=32, dim=8, depths=(1, 1, 1, 1), heads=(1, 1, 1, 1), window_size=4)
    assert suggested(_images(1, 3, 32)).shape == (1, 10)


# --------------------------------------------------------------------------- ResNet


@pytest.mark.parametrize(("stem", "side"), [("cifar", 16), ("imagenet", 4)])
def test_resnet_feature_map(stem: str, side: int) -> None:
    net = ResNet(image_size=32, widths=(8, 16), depths=(1, 2), stem=stem)
    assert net.forward_features(_images(2, 3, 32)).shape == (2, 16, side, side)


def test_resnet_blocks() -> None:
    net = ResNet.from_preset("nano")
    first, second = net.blocks
    assert isinstance(first.shortcut, nn.Identity)  # same width, stride 1
    assert isinstance(second.shortcut, nn.Sequential)  # width 8 -> 16, stride 2
    assert second.conv1.stride == (2, 2)
    assert all(not block.bn2.weight.any() for block in net.blocks)  # zero-init last BN scale
    assert isinstance(ResNet.from_preset("nano", se=False).blocks[0].se, nn.Identity)
    with pytest.raises(InputError, match="stem='vgg'"):
        ResNet(stem="vgg")


# --------------------------------------------------------------------------- learning


def _stripes(n: int = 32, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal (label 0) or vertical (label 1) stripes of period 4, random phase, noise std 0.5.

    The label is in local texture, not position, so every family can see it (Swin has no
    absolute position embedding, and left-vs-right tasks are only learnable there from edge
    effects).
    """
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    phase = torch.rand(n, 1, 1, generator=gen) * 2 * math.pi
    wave = torch.arange(size) * (2 * math.pi / 4)
    horizontal = torch.sin(wave[None, :, None] + phase).expand(n, size, size)  # varies down the rows
    vertical = torch.sin(wave[None, None, :] + phase).expand(n, size, size)  # varies along the columns
    stripes = torch.where(labels[:, None, None].bool(), vertical, horizontal)  # (n, size, size)
    noise = 0.5 * torch.randn(n, 3, size, size, generator=gen)
    return stripes[:, None] + noise, labels


@pytest.mark.parametrize(("cls", "lr"), [(ViT, 1e-3), (Swin, 3e-3), (ResNet, 3e-3)])
def test_nano_net_learns_stripe_orientation(cls: type[nn.Module], lr: float) -> None:
    """100 full-batch AdamW steps on 32 images reach >= 95% training accuracy (chance: 50%)."""
    torch.manual_seed(0)
    images, labels = _stripes()
    net = cls.from_preset("nano", image_size=16, num_classes=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr)
    for _ in range(100):
        loss = F.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = (net.eval()(images).argmax(-1) == labels).float().mean().item()
    assert accuracy >= 0.95

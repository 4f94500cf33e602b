"""DCGAN net: the paper's layers, sizes and initialisation for every valid image side, both ways of
conditioning the discriminator (one-hot maps, projection), spectral normalisation, and one clear error
for every argument or size it cannot be built with."""

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightning_seq.errors import InputError
from lightning_seq.layers import ClassConditionalBatchNorm
from lightning_seq.nets import DCGAN
from lightning_seq.nets.gan import DCGANDiscriminator, DCGANGenerator

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def images(b: int, c: int, s: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def largest_singular_value(weight: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(weight.detach().reshape(weight.shape[0], -1), 2).item()


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("image_size", "k"), [(8, 1), (16, 2), (32, 3), (64, 4)])
def test_shapes_for_every_side_and_channel_count(image_size, k, in_channels):
    torch.manual_seed(0)
    net = DCGAN(image_size=image_size, in_channels=in_channels, preset="nano")
    z = torch.randn(5, 16)
    fake = net.generator(z)
    assert fake.shape == (5, in_channels, image_size, image_size)
    assert fake.abs().max() <= 1 and fake.std() > 0  # tanh, and not collapsed at initialisation
    logits = net.discriminator(fake)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    net.eval()
    assert torch.equal(net(z), net.generator(z))
    assert net.discriminator.features(fake).shape == (5, 8 * 2 ** (k - 1), 4, 4)  # phi(x) at 4 x 4
    deconvs = [m for m in net.generator.modules() if isinstance(m, nn.ConvTranspose2d)]
    convs = [m for m in net.discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert len(deconvs) == len(convs) == k + 1  # 4x4 map, k - 1 doublings / halvings, the output layer
    assert (net.image_size, net.in_channels, net.latent_size, net.num_classes) == (
        image_size,
        in_channels,
        16,
        None,
    )


def test_the_layers_are_the_papers():
    net = DCGAN(image_size=32, preset="nano")
    g = list(net.generator.net)
    assert isinstance(g[-1], nn.Tanh) and isinstance(g[-2], nn.ConvTranspose2d)  # no BN on the output
    for i, module in enumerate(g[:-2]):  # every other transposed conv: BN then ReLU
        if isinstance(module, nn.ConvTranspose2d):
            assert isinstance(g[i + 1], nn.BatchNorm2d) and isinstance(g[i + 2], nn.ReLU)
            assert module.bias is None and module.kernel_size == (4, 4)
    strides = [m.stride for m in g if isinstance(m, nn.ConvTranspose2d)]
    assert strides == [(1, 1), (2, 2), (2, 2), (2, 2)]
    d = list(net.discriminator.blocks)
    assert isinstance(d[0], nn.Conv2d) and isinstance(d[1], nn.LeakyReLU)  # no BN on the input layer
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d) == 2  # on every later halving
    slopes = {m.negative_slope for m in net.discriminator.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.2}
    assert not any(isinstance(m, nn.ReLU | nn.Tanh | nn.Linear) for m in net.discriminator.modules())
    assert not any(isinstance(m, POOLS) for m in net.modules())  # strided convolutions only
    head = net.discriminator.head
    assert (head.kernel_size, head.stride, head.padding, head.out_channels) == ((4, 4), (1, 1), (0, 0), 1)


def test_the_initialisation_is_the_papers():
    torch.manual_seed(0)
    net = DCGAN.from_preset("dcgan64", image_size=64, num_classes=10)
    big = net.generator.net[3].weight  # 512 x 256 x 4 x 4: two million draws
    assert abs(big.std().item() - 0.02) < 0.0005 and abs(big.mean().item()) < 0.0005
    big = net.discriminator.blocks[8].weight  # 256 -> 512
    assert abs(big.std().item() - 0.02) < 0.0005
    for embed in (net.generator.embed, net.discriminator.embed):
        assert abs(embed.weight.std().item() - 0.02) < 0.003
    scales = torch.cat([m.weight for m in net.modules() if isinstance(m, nn.BatchNorm2d)])  # 1920 of them
    assert abs(scales.mean().item() - 1) < 0.003 and abs(scales.std().item() - 0.02) < 0.003
    shifts = [m.bias for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.equal(b, torch.zeros_like(b)) for b in shifts)
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))
    conditional = DCGAN.from_preset(
        "dcgan64", image_size=64, num_classes=10, generator_conditioning="batch_norm"
    )
    norms = [m for m in conditional.generator.modules() if isinstance(m, ClassConditionalBatchNorm)]
    scales = torch.cat([m.gain.weight.flatten() for m in norms])  # each class's scales: as the paper's
    assert abs(scales.mean().item() - 1) < 0.003 and abs(scales.std().item() - 0.02) < 0.003
    assert all(torch.equal(m.shift.weight, torch.zeros_like(m.shift.weight)) for m in norms)


def test_dcgan64_has_the_papers_shape_and_parameter_counts():
    net = DCGAN.from_preset("dcgan64", image_size=64)
    shapes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        for m in net.generator.net
        if isinstance(m, nn.ConvTranspose2d)
    ]
    fake = net(torch.randn(2, 100))
    for hook in hooks:
        hook.remove()
    assert shapes == [(512, 4, 4), (256, 8, 8), (128, 16, 16), (64, 32, 32), (3, 64, 64)]
    # the PyTorch examples' DCGAN with nz=100, ngf=ndf=64, nc=3
    assert count(net.generator) == 3_576_704
    assert count(net.discriminator) == 2_765_568
    assert net.discriminator(fake).shape == (2,)
    assert count(DCGAN.from_preset("dcgan64", image_size=64, disc_width=32).discriminator) < 2_765_568


@pytest.mark.parametrize(
    ("conditioning", "generator_conditioning"), [("concat", "concat"), ("projection", "batch_norm")]
)
def test_the_label_changes_the_sample_and_the_logit(conditioning, generator_conditioning):
    torch.manual_seed(0)
    net = DCGAN(image_size=16, in_channels=1, num_classes=4, conditioning=conditioning, preset="nano",
                generator_conditioning=generator_conditioning)  # fmt: skip
    net.eval()  # batch norm from running statistics: each example on its own
    z = torch.randn(3, 16)
    a = net(z, torch.tensor([0, 1, 2]))
    b = net(z, torch.tensor([3, 1, 2]))
    assert not torch.allclose(a[0], b[0]) and torch.equal(a[1:], b[1:])
    x = images(3, 1, 16)
    la = net.discriminator(x, torch.tensor([0, 1, 2]))
    lb = net.discriminator(x, torch.tensor([3, 1, 2]))
    assert la[0] != lb[0] and torch.equal(la[1:], lb[1:])
    first = net.discriminator.blocks[0]
    assert first.in_channels == (1 + 4 if conditioning == "concat" else 1)
    assert (net.discriminator.embed is not None) == (conditioning == "projection")
    if generator_conditioning == "concat":
        assert net.generator.net[0].in_channels == 16 + 16  # z and its class embedding (latent_size wide)
        small = DCGAN(image_size=16, num_classes=4, embedding_size=5, preset="nano")
        assert small.generator.net[0].in_channels == 16 + 5
    else:  # z alone; every batch norm has a scale and a shift per class
        assert net.generator.net[0].in_channels == 16 and net.generator.embed is None
        norms = [m for m in net.generator.modules() if isinstance(m, ClassConditionalBatchNorm)]
        affine = [m for m in net.generator.modules() if type(m) is nn.BatchNorm2d and m.affine]
        assert len(norms) == 2 and not affine  # at 4x4 and 8x8 (the output layer has none)
        assert [n.gain.weight.shape for n in norms] == [(4, 16), (4, 8)]  # one row per class


def test_the_projection_logit_is_the_unconditional_part_plus_the_class_inner_product():
    torch.manual_seed(0)
    d = DCGANDiscriminator(image_size=16, in_channels=3, width=8, num_classes=5, conditioning="projection")
    with torch.no_grad():
        d.embed.weight.normal_()  # a projection of the size training gives it
    d.eval()
    x, y = images(4, 3, 16), torch.tensor([0, 4, 2, 2])
    phi = d.features(x)  # (B, F, 4, 4)
    unconditional = d.head(phi).flatten()
    pooled = phi.sum((2, 3))  # (B, F)
    inner = torch.stack([d.embed.weight[label] @ pooled[i] for i, label in enumerate(y.tolist())])
    torch.testing.assert_close(d(x, y), unconditional + inner)
    assert (inner.abs() > 1e-3).all()  # the class term is there, not negligible


@pytest.mark.parametrize("conditioning", ["concat", "projection"])
def test_spectral_norm_makes_every_discriminator_weight_1_lipschitz(conditioning):
    torch.manual_seed(0)
    net = DCGAN(image_size=32, num_classes=3, conditioning=conditioning, spectral_norm=True, preset="nano")
    d = net.discriminator
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.generator.modules())  # G keeps its own
    x, y = images(4, 3, 32), torch.tensor([0, 1, 2, 0])
    for _ in range(20):  # one power iteration per training-mode forward pass
        d(x, y)
    d.eval()
    normalised = [m for m in d.modules() if isinstance(m, nn.Conv2d | nn.Embedding)]
    assert len(normalised) == 4 + (conditioning == "projection")
    for module in normalised:
        assert hasattr(module, "parametrizations") and "weight" in module.parametrizations
        assert largest_singular_value(module.weight) == pytest.approx(1.0, abs=0.03)
    plain = DCGAN(image_size=32, num_classes=3, conditioning=conditioning, preset="nano").discriminator
    assert largest_singular_value(plain.blocks[0].weight) < 0.5  # N(0, 0.02) weights are far from 1


def test_gradients_reach_every_parameter_of_both_nets():
    torch.manual_seed(0)
    net = DCGAN(image_size=16, in_channels=1, num_classes=3, spectral_norm=True, preset="nano")
    labels = torch.tensor([0, 1, 2, 1])
    loss = nn.functional.softplus(-net.discriminator(net(torch.randn(4, 16), labels), labels)).mean()
    loss.backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_a_recipe_builds_it_by_preset_and_a_dotted_override():
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    recipe = {"class_path": "lightning_seq.nets.DCGAN", "init_args": {"image_size": 16, "preset": "small"}}
    config = parser.parse_args([f"--net={recipe}".replace("'", '"'), "--net.init_args.conditioning=concat"])
    net = parser.instantiate(config).net
    assert isinstance(net, DCGAN) and net.latent_size == 64
    assert net.generator.net[-2].in_channels == 32  # small: width 32
    assert net.discriminator.concat is False  # unconditional: no label maps whatever the conditioning


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"latent_size": 0}, r"net.init_args.latent_size: a latent size of 0 "),
        ({"width": 0}, r"net.init_args.width: expected a positive number of channels, got 0"),
        ({"disc_width": -1}, r"net.init_args.disc_width: expected a positive number of channels, got -1"),
        (
            {"image_size": 28},
            r"net.init_args.image_size: the generator doubles a 4x4 map, so the side must be 4 \* 2\*\*k "
            r"\(8, 16, 32, 64...\), got 28. Fix: set data.init_args.image_size=32",
        ),
        ({"image_size": 4}, r"image_size: .*got 4. Fix: set data.init_args.image_size=8"),
        ({"image_size": 100}, r"image_size: .*got 100. Fix: set data.init_args.image_size=128"),
        ({"image_size": 48}, r"image_size: .*got 48. Fix: set data.init_args.image_size=64"),
        ({"in_channels": 0}, r"net.init_args.in_channels: expected at least 1 channel, got 0"),
        ({"num_classes": 0}, r"net.init_args.num_classes: expected None \(unconditional\) or at least 1"),
        ({"embedding_size": 0}, r"net.init_args.embedding_size: expected a positive"),
        (
            {"generator_conditioning": "projection"},
            r"net.init_args.generator_conditioning: expected concat or batch_norm, got 'projection'",
        ),
        (
            {"conditioning": "hinge"},
            r"net.init_args.conditioning: expected concat or projection, got 'hinge'",
        ),
        ({"preset": "huge"}, r"DCGAN: preset='huge' is unknown; expected one of nano, small, dcgan64"),
    ],
)
def test_arguments_it_cannot_be_built_with_are_one_clear_error(kwargs, message):
    with pytest.raises(InputError, match=message) as error:
        DCGAN(**kwargs)
    assert "\n" not in str(error.value)


def test_labels_are_refused_by_an_unconditional_net_and_required_by_a_conditional_one():
    plain = DCGAN(image_size=8, preset="nano")
    labels = torch.tensor([0, 1])
    with pytest.raises(InputError, match=r"DCGANGenerator: labels were given, but the net is unconditional"):
        plain(torch.randn(2, 16), labels)
    with pytest.raises(InputError, match=r"DCGANDiscriminator: labels were given"):
        plain.discriminator(images(2, 3, 8), labels)
    conditional = DCGAN(image_size=8, num_classes=2, preset="nano")
    with pytest.raises(InputError, match=r"DCGANGenerator: the net is conditional \(num_classes=2\)"):
        conditional(torch.randn(2, 16))
    with pytest.raises(InputError, match=r"DCGANDiscriminator: the net is conditional"):
        conditional.discriminator(images(2, 3, 8))
    with pytest.raises(InputError, match=r"DCGANDiscriminator: expected labels of shape \(2,\)"):
        conditional.discriminator(images(2, 3, 8), torch.tensor([[0, 1]]))
    with pytest.raises(InputError, match=r"net.init_args.image_size: .*got 12"):
        DCGANGenerator(image_size=12)

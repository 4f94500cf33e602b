"""DDPM U-Net: the paper's layout and parameter count, time and class conditioning (with the null label of
classifier-free guidance), gradients to every parameter, learning to denoise, and one clear error for
every argument or input it cannot take."""

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightning_seq.errors import InputError
from lightning_seq.layers import ResBlock, SpatialSelfAttention, sinusoidal_embedding, sinusoidal_table
from lightning_seq.nets import UNet

FIELD = "model.init_args.net.init_args"


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomise_zeros_(net: nn.Module) -> nn.Module:
    """Give the zero-initialised weights (output conv, last conv of each branch) random values, as a few
    training steps would, so that the output depends on every input."""
    torch.manual_seed(1)
    for p in net.parameters():
        if p.dim() > 1 and not p.any():
            nn.init.xavier_uniform_(p.data)
    return net


def nano(**kwargs) -> UNet:
    torch.manual_seed(0)
    return UNet(**{"image_size": 16, "preset": "nano", **kwargs})


@pytest.mark.parametrize("in_channels", [1, 3])
def test_shapes_and_the_zero_output_at_initialisation(in_channels):
    net = nano(in_channels=in_channels)
    x, t = torch.randn(2, in_channels, 16, 16), torch.tensor([0, 999])
    out = net(x, t)
    assert out.shape == (2, in_channels, 16, 16)
    assert not out.any()  # the output conv starts at zero, as in Ho et al.'s code
    assert (net.image_size, net.in_channels, net.num_classes, net.null_label) == (16, in_channels, None, None)
    out = randomise_zeros_(net)(x, t)
    assert out.shape == (2, in_channels, 16, 16) and out.std() > 0.01


def test_the_layout_is_the_papers():
    net = UNet(image_size=32, base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=2,
               attention_resolutions=(16,), groups=8)  # fmt: skip
    res = [m for m in net.modules() if isinstance(m, ResBlock)]
    assert len(res) == 3 * 2 + 2 + 3 * 3  # down n per level, two in the middle, up n + 1 per level
    attention = [m for m in net.modules() if isinstance(m, SpatialSelfAttention)]
    assert len(attention) == 2 + 1 + 3  # the 16 x 16 level down and up, and the middle
    assert [len(level.stages) for level in net.down] == [2, 2, 2]
    assert [len(level.stages) for level in net.up] == [3, 3, 3]
    assert [type(level.resample).__name__ for level in net.down] == ["Downsample", "Downsample", "NoneType"]
    assert [type(level.resample).__name__ for level in net.up] == ["Upsample", "Upsample", "NoneType"]
    sides = []
    hooks = [s.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1])) for s in net.down[1].stages]
    net(torch.randn(1, 3, 32, 32), torch.tensor([5]))
    assert sides == [16, 16] and all(s.attention is not None for s in net.down[1].stages)
    assert all(s.attention is None for s in net.down[0].stages + net.down[2].stages)
    for hook in hooks:
        hook.remove()
    assert net.up[0].stages[0].res.in_channels == 32 + 32  # the lowest level's output and its skip
    assert net.up[-1].stages[-1].res.in_channels == 16 + 16  # conv_in's output is the last skip
    assert net.time_embedding.linear1.in_features == 16 and net.time_embedding.linear2.out_features == 64


def test_the_ddpm_cifar10_preset_has_the_papers_35_7m_parameters():
    net = UNet(image_size=32, in_channels=3, preset="ddpm-cifar10")
    assert abs(count(net) - 35.7e6) < 0.1e6
    assert count(net) == 35_746_307  # the count of Ho et al.'s TF model converted to PyTorch
    assert net.time_embedding.linear1.in_features == 128 and net.time_embedding.linear2.out_features == 512
    assert 1_000_000 < count(UNet(image_size=32, preset="small")) < 3_000_000


def test_the_timestep_changes_the_output_through_sinusoids():
    net = randomise_zeros_(nano()).eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    out = net(x, torch.tensor([0, 1, 500]))
    assert (out[0] - out[1]).abs().max() > 1e-4 and (out[1] - out[2]).abs().max() > 1e-4
    torch.testing.assert_close(sinusoidal_embedding(torch.arange(1000), 8), sinusoidal_table(1000, 8))
    t = torch.tensor([0, 1, 500])
    embedding = net.time_embedding
    torch.testing.assert_close(
        embedding(t), embedding.linear2(nn.functional.silu(embedding.linear1(sinusoidal_table(1000, 8)[t])))
    )


def test_labels_change_the_output_and_the_null_label_is_its_own():
    net = randomise_zeros_(nano(num_classes=3)).eval()
    assert net.null_label == 3 and net.class_embedding.num_embeddings == 4
    x, t = torch.randn(1, 3, 16, 16).expand(4, -1, -1, -1), torch.full((4,), 250)
    out = net(x, t, torch.tensor([0, 1, 2, 3]))
    for i in range(4):
        for j in range(i):
            assert (out[i] - out[j]).abs().max() > 1e-4, (i, j)  # every class, and the null one, differ
    torch.testing.assert_close(net(x, t), out[3:].expand(4, -1, -1, -1))  # no labels: the null label


def test_gradients_reach_every_parameter_in_one_backward():
    net = nano(num_classes=3, dropout=0.1).train()
    x, t, labels = torch.randn(4, 3, 16, 16), torch.tensor([3, 40, 500, 999]), torch.tensor([0, 1, 2, 3])
    net(x, t, labels).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())  # all in the graph: DDP finds none unused
    net.zero_grad(set_to_none=True)
    randomise_zeros_(net)(x, t, labels).square().mean().backward()
    silent = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert not silent  # once the zero-initialised layers have moved, every one gets a gradient


def test_a_nano_unet_learns_to_predict_the_noise():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    net = UNet(image_size=8, preset="nano")
    x0 = torch.randn(4, 3, 8, 8, generator=g).sign()  # four fixed binary images
    t = torch.tensor([0, 100, 200, 300])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        eps = torch.randn(x0.shape, generator=g)
        loss = (net(0.8 * x0 + 0.6 * eps, t) - eps).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    eps = torch.randn(16, 3, 8, 8, generator=g)  # fresh noise on the same images
    with torch.no_grad():
        mse = (net(0.8 * x0.repeat(4, 1, 1, 1) + 0.6 * eps, t.repeat(4)) - eps).square().mean().item()
    # 1.0 at the start (the output is zero); 0.64 for the best linear guess 0.6 x_t; about 0.2 in a run
    assert mse < 0.35


def test_a_recipe_builds_it_with_lists_for_tuples():
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    recipe = {"class_path": "lightning_seq.nets.UNet", "init_args": {"image_size": 16, "preset": "nano"}}
    override = "--net.init_args.attention_resolutions=[8]"
    config = parser.parse_args([f"--net={recipe}".replace("'", '"'), override])
    net = parser.instantiate(config).net
    assert isinstance(net, UNet) and net.num_classes is None
    assert len([m for m in net.modules() if isinstance(m, SpatialSelfAttention)]) == 1 + 1 + 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # (1, 2, 2) is the default, which the preset's (1, 2) would replace: the recipe sets other levels
        (
            {"image_size": 30, "channel_mults": (1, 2, 2, 2)},
            r"image_size: .*by 2\*\*3 = 8; got 30.*e\.g\. 32",
        ),
        ({"image_size": 18, "channel_mults": (1, 1, 2)}, r"image_size: .*2\*\*2 = 4; got 18.*e\.g\. 20"),
        (
            {"attention_resolutions": (16, 6)},
            r"attention_resolutions: no level runs at side 6.*sides are 16, 8",
        ),
        ({"image_size": 0}, r"image_size: expected a positive integer, got 0"),
        ({"in_channels": 0}, r"in_channels: expected a positive integer"),
        ({"base_channels": -8}, r"base_channels: expected a positive integer"),
        ({"num_res_blocks": 0}, r"num_res_blocks: expected a positive integer"),
        ({"channel_mults": ()}, r"channel_mults: expected one positive multiple"),
        ({"channel_mults": (1, 0)}, r"channel_mults: expected one positive multiple"),
        ({"dropout": 1.0}, r"dropout: expected a rate in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout: expected a rate in \[0, 1\)"),
        ({"heads": 3}, r"heads: 3 heads do not divide the 8 channels"),
        ({"heads": 0}, r"heads: expected a positive integer"),
        ({"num_classes": 0}, r"num_classes: expected None \(unconditional\) or at least 1 class"),
        ({"groups": 0}, r"groups: expected a positive integer"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, message):
    with pytest.raises(InputError, match=rf"{FIELD}\.{message}") as error:
        UNet(**{"image_size": 16, "preset": "nano", **kwargs})
    assert "Fix:" in str(error.value)


def test_bad_inputs_say_what_was_expected():
    net = nano()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(InputError, match=r"expected images \(B, 3, 16, 16\), got \(2, 1, 16, 16\)"):
        net(torch.randn(2, 1, 16, 16), t)
    with pytest.raises(InputError, match=rf"got \(2, 3, 8, 8\).*{FIELD}\.image_size"):
        net(torch.randn(2, 3, 8, 8), t)
    for bad_t in (torch.tensor(1), torch.tensor([[1], [2]]), torch.tensor([1, 2, 3])):
        with pytest.raises(InputError, match=r"expected timesteps t of shape \(2,\)"):
            net(x, bad_t)
    with pytest.raises(InputError, match=rf"labels were given, but the net is unconditional.*{FIELD}"):
        net(x, t, torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"expected labels of shape \(2,\).*null_label=3"):
        nano(num_classes=3)(x, t, torch.tensor([0]))

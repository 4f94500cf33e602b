"""Pixel conventions: ranges, dtypes, the way back to [0, 1], and seeded dynamic binarisation."""

import pytest
import torch

from lightning_seq.data import pixels as px
from lightning_seq.data.pixels import PIXELS, binarize, from_uint8, from_unit, item_uniforms, to_unit

ALL = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)  # every 8-bit value once, (1, 1, 16, 16)


@pytest.mark.parametrize(
    ("pixels", "dtype", "low", "high"),
    [
        ("unit", torch.float32, 0.0, 1.0),
        ("symmetric", torch.float32, -1.0, 1.0),
        ("uint8", torch.int64, 0, 255),
        ("binary", torch.float32, 0.0, 1.0),
    ],
)
def test_each_convention_has_its_range_and_dtype_and_comes_back_to_unit(pixels, dtype, low, high):
    images = from_uint8(ALL, pixels)
    assert images.dtype == dtype and images.shape == ALL.shape
    assert images.min() == low and images.max() == high
    back = to_unit(images, pixels)
    assert back.dtype == torch.float32 and back.min() >= 0.0 and back.max() <= 1.0
    if pixels == "binary":
        assert torch.equal(back, (ALL >= 128).float())
    else:
        assert torch.allclose(back, ALL.float() / 255.0, atol=1e-6)
    if pixels == "uint8":
        assert torch.equal(images, ALL.long())  # exact
    if pixels == "symmetric":
        assert torch.allclose(images, ALL.float() / 127.5 - 1.0, atol=1e-6)


def test_normalized_uses_the_mean_and_std_per_channel():
    rgb = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.1, 0.2, 0.3])
    images = from_uint8(rgb, "normalized", mean, std)
    expected = (rgb.float() / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert images.dtype == torch.float32 and torch.allclose(images, expected, atol=1e-6)
    assert torch.allclose(to_unit(images, "normalized", mean.tolist(), std.tolist()), rgb / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="needs the per-channel mean and std"):
        from_uint8(rgb, "normalized")


def test_static_binarisation_is_an_exact_threshold_at_half_intensity():
    ones = from_uint8(ALL, "binary").flatten()
    assert ones[:128].sum() == 0 and ones[128:].sum() == 128  # 127 -> 0, 128 -> 1
    assert torch.equal(binarize(ALL.float() / 255.0), ones.view(ALL.shape))


def test_to_unit_clamps_model_outputs_and_keeps_float_dtypes():
    wild = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5)
    assert to_unit(wild, "symmetric").flatten().tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert to_unit(wild, "unit").flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert to_unit(wild.bfloat16(), "unit").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown pixels 'rgb'"):
        to_unit(wild, "rgb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown pixels 'rgb'"):
        from_unit(wild, "rgb")  # type: ignore[arg-type]
    assert set(PIXELS) == {"normalized", "unit", "symmetric", "uint8", "binary"}


def test_dynamic_binarisation_draws_bernoulli_of_the_intensity():
    intensity = torch.linspace(0.0, 1.0, 11).view(11, 1, 1, 1).expand(11, 1, 64, 64)  # one level per item
    ones = binarize(intensity, torch.arange(11), seed=3, epoch=0)
    assert ones.dtype == torch.float32 and set(ones.unique().tolist()) <= {0.0, 1.0}
    means = ones.mean(dim=(1, 2, 3))  # 4096 draws per item: standard error <= 0.008
    assert torch.allclose(means, intensity[:, 0, 0, 0], atol=0.03)
    assert means[0] == 0.0 and means[-1] == 1.0  # intensity 0 is never on, 1 always


def test_dynamic_draws_depend_on_seed_epoch_item_and_stream_alone():
    images = torch.full((6, 3, 16, 16), 0.5)
    index = torch.tensor([5, 9, 11, 20, 21, 40])
    first = binarize(images, index, seed=1, epoch=2)
    assert torch.equal(first, binarize(images, index, seed=1, epoch=2))  # resumed: the same draws
    alone = binarize(images[2:3], index[2:3], seed=1, epoch=2)
    assert torch.equal(alone, first[2:3])  # whatever batch the item is in
    for other in (
        binarize(images, index, seed=1, epoch=3),
        binarize(images, index, seed=2, epoch=2),
        binarize(images, index + 1, seed=1, epoch=2),
        binarize(images, index, seed=1, epoch=2, stream=1),
    ):
        assert (other != first).float().mean() > 0.3  # about half the pixels differ
    assert (first[0] != first[1]).float().mean() > 0.3  # items differ from each other


def test_uniforms_are_uniform_and_uncorrelated_between_neighbours():
    u = item_uniforms(torch.arange(64), (3, 32, 32), seed=0, epoch=0)  # (64, 3, 32, 32)
    assert u.shape == (64, 3, 32, 32) and u.min() >= 0.0 and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
    assert torch.allclose(counts, torch.full((10,), 0.1), atol=0.005)
    right = torch.corrcoef(torch.stack([u[..., :-1].flatten(), u[..., 1:].flatten()]))[0, 1]
    below = torch.corrcoef(torch.stack([u[:, :, :-1].flatten(), u[:, :, 1:].flatten()]))[0, 1]
    items = torch.corrcoef(torch.stack([u[:-1].flatten(), u[1:].flatten()]))[0, 1]
    assert max(abs(float(right)), abs(float(below)), abs(float(items))) < 0.02


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_dynamic_draws_are_the_same_on_the_gpu():
    images = torch.rand(8, 3, 32, 32)
    index = torch.arange(100, 108)
    on_cpu = binarize(images, index, seed=7, epoch=4)
    on_gpu = binarize(images.cuda(), index.cuda(), seed=7, epoch=4)
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_item_normals_are_standard_normal_and_depend_on_the_item_alone():
    index = torch.arange(4000)
    z = px.item_normals(index, (3, 5), seed=7, epoch=2, stream=1)  # (4000, 3, 5)
    assert z.shape == (4000, 3, 5)
    flat = z.flatten()
    assert abs(flat.mean()) < 0.02 and abs(flat.std() - 1) < 0.02
    # quantiles of N(0, 1): 2.3%, 15.9%, 50%, 84.1%, 97.7% below -2, -1, 0, 1, 2
    below = [(flat < t).float().mean().item() for t in (-2.0, -1.0, 0.0, 1.0, 2.0)]
    assert all(abs(b - e) < 0.01 for b, e in zip(below, (0.0228, 0.1587, 0.5, 0.8413, 0.9772), strict=True))
    # the same items in another batch order, alone: the same draws
    order = torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:64]
    assert torch.equal(px.item_normals(index[order], (3, 5), seed=7, epoch=2, stream=1), z[order])
    assert not torch.equal(px.item_normals(index[:64], (3, 5), seed=7, epoch=3, stream=1), z[:64])
    assert not torch.equal(px.item_normals(index[:64], (3, 5), seed=7, epoch=2, stream=0), z[:64])
    # apart from the binarisation draws of the same items
    u = px.item_uniforms(index, (3, 5), seed=7, epoch=2, stream=0).flatten()
    assert abs(torch.corrcoef(torch.stack([u, flat]))[0, 1]) < 0.03

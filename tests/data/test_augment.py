import pytest
import torch
import torch.nn.functional as F

from lightning_seq.data.augment import BatchAugment, ImageAugment
from lightning_seq.errors import InputError


def constant_images(batch: int, channels: int = 3, size: int = 16) -> torch.Tensor:
    """Image ``i`` is filled with the value ``i`` (so a pixel tells which image it came from)."""
    return (
        torch.arange(batch, dtype=torch.float32)
        .view(batch, 1, 1, 1)
        .expand(batch, channels, size, size)
        .clone()
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_augmentation_keeps_shape_dtype_and_range_and_changes_images(channels):
    torch.manual_seed(0)
    images = torch.rand(16, channels, 32, 32)
    augment = BatchAugment(ImageAugment(randaugment_n=2, randaugment_m=9), image_size=32)
    for _ in range(
        5
    ):  # RandAugment draws different operations each time: the colour op must not fail on grey
        out = augment(images)
        assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert not torch.allclose(out, images)


def test_no_augmentation_is_the_identity():
    images = torch.rand(4, 3, 32, 32)
    augment = BatchAugment(ImageAugment(crop_scale=None, hflip=False), image_size=32)
    assert torch.equal(augment(images), images)


def test_flip_alone_mirrors_some_images():
    torch.manual_seed(0)
    images = torch.rand(32, 3, 8, 8)
    out = BatchAugment(ImageAugment(crop_scale=None, hflip=True), image_size=8)(images)
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, images, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and any(flipped) and any(kept)


def test_mixup_targets_are_the_lam_weighted_one_hots_of_the_mixed_images():
    torch.manual_seed(0)
    batch, classes = 8, 10
    images, labels = constant_images(batch), torch.arange(batch)
    augment = BatchAugment(ImageAugment(mixup_alpha=0.4), image_size=16)
    for _ in range(5):
        mixed, targets = augment.mix(images, labels, classes)
        assert targets.shape == (batch, classes) and targets.dtype == torch.float32
        assert torch.allclose(targets.sum(1), torch.ones(batch))
        # image i = lam * i + (1 - lam) * perm(i): its value is the targets' expected class id
        expected = targets @ torch.arange(classes, dtype=torch.float32)
        assert torch.allclose(mixed[:, 0, 0, 0], expected, atol=1e-5)
        assert torch.allclose(mixed, mixed[:, :1, :1, :1].expand_as(mixed))  # a convex mix is uniform here


def test_cutmix_lambda_is_one_minus_the_pasted_area():
    torch.manual_seed(1)
    batch = 8
    images, labels = constant_images(batch, size=20), torch.arange(batch)
    augment = BatchAugment(ImageAugment(cutmix_alpha=1.0), image_size=20)
    seen = 0
    for _ in range(10):
        mixed, targets = augment.mix(images, labels, batch)
        assert torch.allclose(targets.sum(1), torch.ones(batch))
        for i in range(batch):
            kept = (mixed[i] == i).float().mean()  # share of image i still its own
            other = targets[i].clone()
            other[i] = 0
            if other.sum() > 0:  # image i got a box from another image j: that box is j's share
                j = int(other.argmax())
                assert torch.allclose(targets[i, i], kept, atol=1e-6)
                assert torch.allclose(targets[i, j], (mixed[i] == j).float().mean(), atol=1e-6)
                seen += 1
            values = set(mixed[i].unique().tolist())
            assert values <= {float(i), float(j if other.sum() > 0 else i)}
    assert seen > 10


def test_mixing_only_on_mix_prob_of_batches():
    images, labels = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    off = BatchAugment(ImageAugment(mixup_alpha=1.0, mix_prob=0.0), image_size=8)
    out, targets = off.mix(images, labels, 3)
    assert torch.equal(out, images) and torch.equal(targets, F.one_hot(labels, 3).float())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5,)}, "crop_scale"),
        ({"crop_ratio": (2.0, 1.0)}, "crop_ratio"),
        ({"randaugment_n": 13}, "randaugment_n"),
        ({"randaugment_m": 30}, "randaugment_m"),
        ({"mixup_alpha": -1.0}, "mixup_alpha"),
        ({"cutmix_alpha": -0.1}, "cutmix_alpha"),
        ({"mix_prob": 1.5}, "mix_prob"),
        ({"switch_prob": -0.5}, "switch_prob"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, field):
    with pytest.raises(InputError, match=f"data.augment.{field}"):
        ImageAugment(**kwargs)

"""PixelCNN, Gated PixelCNN and Row LSTM: the autoregressive contract, exactly (gradients), and sizes."""

import pytest
import torch
from autoregressive import blind_spots, raster_jacobian

from lightning_seq.errors import InputError
from lightning_seq.layers.likelihoods import Bernoulli, Categorical
from lightning_seq.nets import GatedPixelCNN, PixelCNN, RowLSTM
from lightning_seq.nets.pixelcnn import effective_parameters

NETS = [PixelCNN, GatedPixelCNN, RowLSTM]


def _nano(cls, channels: int, **overrides):
    likelihood = "bernoulli" if channels == 1 else "categorical"
    return cls.from_preset("nano", image_size=8, in_channels=channels, likelihood=likelihood, **overrides)


@pytest.mark.parametrize("cls", NETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_every_output_ignores_itself_and_everything_after_it(cls, channels):
    """d params(c, i, j) / d x(c', i', j') is exactly 0 for every input at or after (c, i, j) in raster
    order, colours R -> G -> B inside a pixel; and the output does depend on earlier inputs."""
    torch.manual_seed(0)
    wider = {"width": 12, "hidden": 12} if cls is RowLSTM else {"width": 12}  # 4 channels per colour
    net = _nano(cls, channels, **(wider if channels == 3 else {}))
    jac = raster_jacobian(net, channels, 6, images=8)
    assert jac.triu().abs().sum() == 0
    # every value but the very first sees something earlier (on some of 8 images: ReLUs switch paths off)
    assert (jac.tril(-1).sum(1)[1:] > 0).all()


def test_class_conditioned_net_stays_causal():
    torch.manual_seed(1)
    net = _nano(GatedPixelCNN, 1, num_classes=4)
    labels = torch.tensor([2])
    jac = raster_jacobian(lambda x: net(x, labels.expand(x.size(0))), 1, 6)
    assert jac.triu().abs().sum() == 0
    x = torch.randn(2, 1, 6, 6)
    assert not torch.allclose(net(x, torch.tensor([0, 0])), net(x, torch.tensor([1, 3])))


def test_gated_net_has_no_blind_spot_and_the_plain_one_has():
    """The same test: every earlier pixel within the receptive field's square influences the output."""
    torch.manual_seed(2)
    size, i, j = 11, 6, 5
    gated = _nano(GatedPixelCNN, 1)  # first kernel 5 (reach 2) + two kernel-3 blocks (1 each)
    plain = _nano(PixelCNN, 1)  # first kernel 5 (reach 2) + two blocks with a 3 x 3 (1 each)
    assert blind_spots(raster_jacobian(gated, 1, size), i, j, 4, 1, size) == []
    missing = blind_spots(raster_jacobian(plain, 1, size), i, j, 4, 1, size)
    assert (0, i - 1, j + 3, 0) in missing  # above-right, beyond the stacked kernels' diagonal
    assert all(pj > j + 2 for _, _, pj, _ in missing)  # only on the right


@pytest.mark.parametrize("cls", NETS)
def test_shapes_and_likelihoods(cls):
    grey = _nano(cls, 1)
    rgb = _nano(cls, 3)
    assert isinstance(grey.likelihood, Bernoulli) and isinstance(rgb.likelihood, Categorical)
    assert grey(torch.zeros(2, 1, 7, 9)).shape == (2, 1, 1, 7, 9)
    assert rgb(torch.zeros(2, 3, 5, 5)).shape == (2, 256, 3, 5, 5)
    assert (grey.image_size, grey.in_channels, rgb.in_channels) == (8, 1, 3)


def test_scenes_presets_have_equal_effective_parameters():
    """The three ``scenes`` sizes match within 2% in the parameters the masks keep (about 119k)."""
    counts = [effective_parameters(cls(preset="scenes")) for cls in NETS]
    assert max(counts) / min(counts) < 1.02, counts
    plain = PixelCNN(preset="scenes")
    assert effective_parameters(plain) < sum(p.numel() for p in plain.parameters())  # masks zero some
    assert PixelCNN.from_preset("nano", depth=3).blocks.__len__() == 3


def test_bad_arguments():
    with pytest.raises(InputError, match=r"net.init_args.likelihood: expected bernoulli .* got 'logistic'"):
        PixelCNN(likelihood="logistic")
    with pytest.raises(
        InputError, match=r"net.init_args.width: expected a positive multiple of in_channels=3"
    ):
        GatedPixelCNN(in_channels=3, width=8, likelihood="categorical")
    with pytest.raises(InputError, match=r"net.init_args.num_classes"):
        RowLSTM(num_classes=0)
    with pytest.raises(InputError, match="labels given, but the net has no num_classes"):
        PixelCNN(preset="nano")(torch.zeros(1, 1, 4, 4), torch.tensor([0]))
    with pytest.raises(InputError, match="preset='huge' is unknown"):
        RowLSTM(preset="huge")

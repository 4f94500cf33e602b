"""Pixel-by-pixel sampling: the recorded per-step probabilities are the model's likelihood of the image."""

import math

import pytest
import torch

from lightning_seq.decoding import sample_pixels
from lightning_seq.decoding.pixels import support, value_log_probs
from lightning_seq.layers.likelihoods import make_likelihood
from lightning_seq.nets import GatedPixelCNN, PixelCNN, RowLSTM


def _model(cls, channels: int, seed: int = 0):
    torch.manual_seed(seed)
    likelihood = "bernoulli" if channels == 1 else "categorical"
    net = cls.from_preset("nano", in_channels=channels, likelihood=likelihood).eval()
    pixels = "binary" if channels == 1 else "uint8"

    def logits_fn(images, labels):
        unit = images.float() if pixels == "binary" else images.float() / 255.0
        return net(unit * 2 - 1, labels)

    return net, logits_fn


@pytest.mark.parametrize(("cls", "channels"), [(GatedPixelCNN, 1), (PixelCNN, 3), (RowLSTM, 1)])
@pytest.mark.parametrize("filters", [{}, {"temperature": 0.7, "top_k": 3, "top_p": 0.9}])
def test_recorded_log_probs_sum_to_the_images_likelihood(cls, channels, filters):
    """The log-probability recorded for each drawn value, summed, equals log p(x) of the finished image
    from one teacher-forced pass: the net saw at each step exactly the values it conditions on."""
    net, logits_fn = _model(cls, channels)
    shape = (4, channels, 6, 6)
    images, log_probs = sample_pixels(
        logits_fn, shape, net.likelihood, generator=torch.Generator().manual_seed(1), record=True, **filters
    )
    with torch.no_grad():
        exact = net.likelihood.log_prob(logits_fn(images, None), images)  # (B,)
    assert images.shape == shape and log_probs.shape == shape
    assert torch.allclose(log_probs.flatten(1).sum(1), exact, atol=1e-4, rtol=1e-5)
    assert (log_probs <= 0).all()


def test_values_are_in_the_pixel_convention():
    net, logits_fn = _model(PixelCNN, 3)
    rgb = sample_pixels(logits_fn, (2, 3, 4, 4), net.likelihood, generator=torch.Generator().manual_seed(0))
    assert rgb.dtype == torch.int64 and rgb.min() >= 0 and rgb.max() <= 255
    net, logits_fn = _model(GatedPixelCNN, 1)
    grey = sample_pixels(logits_fn, (2, 1, 4, 4), net.likelihood, generator=torch.Generator().manual_seed(0))
    assert grey.dtype == torch.float32 and set(grey.unique().tolist()) <= {0.0, 1.0}


def test_seeded_whole_batch_and_row_cropping():
    net, logits_fn = _model(GatedPixelCNN, 1)
    calls = []

    def counting(images, labels):
        calls.append(images.shape)
        return logits_fn(images, labels)

    draw = lambda seed, **kw: sample_pixels(  # noqa: E731
        counting, (5, 1, 6, 6), net.likelihood, generator=torch.Generator().manual_seed(seed), **kw
    )
    a = draw(3)
    assert len(calls) == 36 and all(s[0] == 5 for s in calls)  # one call per value, for the whole batch
    assert [s[2] for s in calls[::6]] == [1, 2, 3, 4, 5, 6]  # row i sees rows 0..i only
    assert torch.equal(a, draw(3))
    assert torch.equal(a, draw(3, crop_rows=False))  # later rows never matter
    assert not torch.equal(a, draw(4))


def test_top_k_one_is_greedy():
    """With ``top_k=1`` every value is the most likely one given the finished image's earlier values."""
    net, logits_fn = _model(PixelCNN, 3, seed=2)
    images = sample_pixels(logits_fn, (2, 3, 5, 5), net.likelihood, top_k=1)
    with torch.no_grad():
        params = logits_fn(images, None)  # (B, 256, C, H, W)
    assert torch.equal(params.argmax(1), images)


def test_frequencies_follow_the_filtered_distribution():
    """Constant logits: a Bernoulli of p = 0.25 is drawn at that rate; the nucleus of mass 0.5 of
    (0.6, 0.3, 0.1) is the first value alone; temperature 0.5 squares and renormalises."""
    bern = make_likelihood("bernoulli")
    logit = math.log(0.25 / 0.75)
    draw = sample_pixels(
        lambda x, y: torch.full((x.size(0), 1, 1, x.size(2), 8), logit), (500, 1, 8, 8), bern,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert abs(draw.mean().item() - 0.25) < 0.01  # 32000 draws: std 0.0024
    cat = make_likelihood("categorical")
    logits = torch.full((256,), -1e4)
    logits[:3] = torch.tensor([0.6, 0.3, 0.1]).log()

    def constant(x, y):
        return logits.view(1, 256, 1, 1, 1).expand(x.size(0), 256, 1, x.size(2), 4)

    gen = torch.Generator().manual_seed(0)
    assert (sample_pixels(constant, (100, 1, 4, 4), cat, top_p=0.5, generator=gen) == 0).all()
    cold = sample_pixels(constant, (400, 1, 4, 4), cat, temperature=0.5, generator=gen)
    frequencies = torch.bincount(cold.flatten(), minlength=3)[:3] / cold.numel()
    expected = torch.tensor([0.36, 0.09, 0.01]) / 0.46
    assert (frequencies - expected).abs().max() < 0.02  # 6400 draws: std <= 0.006


def test_value_log_probs_normalise_over_the_support():
    params = torch.randn(3, 2)
    for name, pixels in (("bernoulli", "binary"), ("logistic", "uint8")):
        likelihood = make_likelihood(name)
        log_p = value_log_probs(likelihood, params[:, : likelihood.params], support(pixels))
        assert torch.allclose(log_p.exp().sum(1), torch.ones(3), atol=1e-4)

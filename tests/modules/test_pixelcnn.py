"""PixelCNNModel: it learns the scenes, its likelihoods are exact, it samples, it refuses bad input."""

import math

import pytest
import torch
from trainers import quiet_trainer

from lightning_seq.data import ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.modules import PixelCNNModel
from lightning_seq.nets import GatedPixelCNN, PixelCNN, RowLSTM

SMALL = {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 32, "num_workers": 0}


def _scenes(**overrides) -> ImageDataModule:
    args = {"image_size": 16, "channels": 1, "pixels": "binary", "labels": "none", "scene_style": "mono"}
    return ImageDataModule(**{**args, **SMALL, **overrides})


def _model(cls=GatedPixelCNN, lr: float = 1e-2, **kwargs) -> PixelCNNModel:
    net = cls.from_preset("nano", image_size=16, in_channels=1, num_classes=kwargs.pop("net_classes", None))
    optimizer = lambda p: torch.optim.AdamW(p, lr=lr)  # noqa: E731
    return PixelCNNModel(net, pixels="binary", optimizer=optimizer, warmup_steps=0, **kwargs)


def _images(data: ImageDataModule, split: str) -> torch.Tensor:
    data.setup("fit" if split != "test" else "test")
    loader = {"train": data.train_dataloader, "val": data.val_dataloader, "test": data.test_dataloader}[split]
    return torch.cat([data.on_after_batch_transfer(b, 0)["image"] for b in loader()])  # (N, 1, 16, 16)


def test_a_nano_gated_pixelcnn_learns_the_binary_scenes(tmp_path):
    """64 steps take val/nll from ~173 nats (random init) to below 60, well under the 104 nats of the
    best model of independent pixels (each pixel's training-set frequency): the net uses the context."""
    torch.manual_seed(0)
    data = _scenes()
    model = _model()
    trainer = quiet_trainer(tmp_path, max_epochs=8)
    before = trainer.validate(model, data, verbose=False)[0]["val/nll"]
    trainer.fit(model, data)
    after = trainer.validate(model, data, verbose=False)[0]
    train = _images(data, "train")
    frequency = train.mean(0).clamp(1e-3, 1 - 1e-3)  # (1, 16, 16)
    val = _images(data, "val")
    independent = -(val * frequency.log() + (1 - val) * (1 - frequency).log()).flatten(1).sum(1).mean()
    assert before > 150
    assert after["val/nll"] < 60 < 0.6 * independent, (before, after["val/nll"], independent.item())
    assert math.isclose(after["val/bpd"], after["val/nll"] / (256 * math.log(2)), rel_tol=1e-5)
    assert after["val/loss"] == pytest.approx(after["val/nll"], rel=1e-6)
    # samples: binary images (a few lit pixels, as the data has) that the model scores as it recorded
    samples, log_probs = model.sample_with_log_probs(6, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (6, 1, 16, 16) and set(samples.unique().tolist()) <= {0.0, 1.0}
    with model.evaluating():
        assert torch.allclose(log_probs.flatten(1).sum(1), model.log_prob(samples), atol=1e-3)
    assert 0.02 < samples.mean() < 0.6  # the data's mean intensity is about 0.2
    again = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(samples, again)


def test_test_nll_is_the_exact_likelihood(tmp_path):
    torch.manual_seed(1)
    data = _scenes()
    model = _model(RowLSTM)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    trainer.fit(model, data)
    logged = trainer.test(model, data, verbose=False)[0]
    with model.evaluating():
        exact = -model.log_prob(_images(data, "test")).mean()  # log p(x) from the net's own outputs
    assert logged["test/nll"] == pytest.approx(exact.item(), rel=1e-5)
    assert logged["test/bpd"] == pytest.approx(exact.item() / (256 * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("cls", [PixelCNN, RowLSTM])
def test_every_net_trains_through_the_module(tmp_path, cls):
    torch.manual_seed(2)
    data = _scenes()
    model = _model(cls)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=1)
    trainer.fit(model, data)
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/nll", "train/bpd", "val/nll", "val/bpd"} <= set(metrics)
    assert model.sample(2).shape == (2, 1, 16, 16)


def test_class_conditional_model(tmp_path):
    torch.manual_seed(3)
    data = _scenes(labels="class")
    data.prepare_data()
    k = data.num_classes
    model = _model(conditional=True, num_classes=k, net_classes=k)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(model, data)
    samples = model.sample(k, generator=torch.Generator().manual_seed(0))  # one of each class
    assert samples.shape == (k, 1, 16, 16)
    with pytest.raises(InputError, match="labels given, but the model is not class-conditional"):
        _model().sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(InputError, match=r"net.init_args.num_classes: a conditional model of 3 classes"):
        _model(conditional=True, num_classes=3)
    unlabelled = quiet_trainer(tmp_path, max_steps=1)
    with pytest.raises(
        InputError, match=r"model.init_args.conditional: .* Fix: set data.init_args.labels=class"
    ):
        unlabelled.fit(_model(conditional=True, num_classes=k, net_classes=k), _scenes())


def test_bad_settings():
    with pytest.raises(
        InputError, match=r"a bernoulli likelihood is a distribution of binary pixels, but the data"
    ):
        PixelCNNModel(GatedPixelCNN(preset="nano"), pixels="uint8")
    with pytest.raises(InputError, match=r"a categorical likelihood .* Fix: set data.init_args.pixels=uint8"):
        PixelCNNModel(GatedPixelCNN(preset="nano", likelihood="categorical"), pixels="binary")
    with pytest.raises(InputError, match=r"model.init_args.temperature: expected a positive temperature"):
        PixelCNNModel(GatedPixelCNN(preset="nano"), temperature=0.0)
    with pytest.raises(InputError, match=r"model.init_args.top_p"):
        PixelCNNModel(GatedPixelCNN(preset="nano"), top_p=1.5)
    with pytest.raises(
        InputError, match=r"model.init_args.net: a PixelCNNModel needs a net with a `likelihood`"
    ):
        PixelCNNModel(torch.nn.Conv2d(1, 1, 1))

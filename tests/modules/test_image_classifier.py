"""ImageClassifier: it learns, its losses follow their equations, and distillation uses a frozen teacher."""

import copy
import functools
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from trainers import quiet_trainer

from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.errors import InputError
from lightning_seq.modules import ImageClassifier
from lightning_seq.modules._optim import SharedFactory, param_groups
from lightning_seq.nets import ResNet, ViT

SMALL = {"num_train": 384, "num_val": 96, "num_test": 96, "batch_size": 32, "num_workers": 0}


def test_learns_the_colours_of_the_embedded_scenes(tmp_path):
    torch.manual_seed(0)
    dm = ImageDataModule(label_by="color", image_size=16, augment=ImageAugment(crop_scale=None), **SMALL)
    dm.prepare_data()
    net = ResNet.from_preset("nano", image_size=16, num_classes=dm.num_classes)
    model = ImageClassifier(
        net, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), warmup_steps=5, classes=dm.classes
    )
    run = quiet_trainer(tmp_path, max_epochs=12)
    run.fit(model, dm)
    acc = run.validate(model, dm, verbose=False)[0]["val/acc"]
    assert acc >= 0.9, f"val/acc {acc:.3f} after 144 steps on 6 colours; expected >= 0.9"


def test_mixed_targets_and_label_smoothing_follow_the_cross_entropy_equation():
    model = ImageClassifier(ResNet.from_preset("nano", num_classes=4), label_smoothing=0.1)
    logits = torch.randn(5, 4)
    targets = torch.softmax(torch.randn(5, 4), -1)  # a MixUp / CutMix row: sums to 1
    smoothed = targets * 0.9 + 0.1 / 4
    expected = -(smoothed * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(model.compute_loss(logits, targets), expected, atol=1e-6)
    labels = torch.tensor([0, 1, 2, 3, 0])
    one_hot = F.one_hot(labels, 4).float()
    assert torch.allclose(model.compute_loss(logits, labels), model.compute_loss(logits, one_hot), atol=1e-6)


def test_distillation_terms_follow_their_equations():
    logits, teacher = torch.randn(6, 5), torch.randn(6, 5)
    hard = ImageClassifier(ResNet.from_preset("nano", num_classes=5), distillation="hard")
    assert torch.allclose(
        hard.distillation_loss(logits, teacher), F.cross_entropy(logits, teacher.argmax(-1))
    )
    soft = ImageClassifier(
        ResNet.from_preset("nano", num_classes=5), distillation="soft", distill_temperature=3.0
    )
    p_teacher = F.softmax(teacher / 3.0, -1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(logits / 3.0, -1))).sum(-1).mean()
    assert torch.allclose(soft.distillation_loss(logits, teacher), kl * 9.0, atol=1e-5)


class Constant(nn.Module):
    """A 'teacher' that always predicts class ``k``."""

    def __init__(self, num_classes: int, k: int):
        super().__init__()
        self.num_classes, self.k = num_classes, k

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.one_hot(torch.full(images.shape[:1], self.k), self.num_classes).float() * 10


def test_a_deit_student_learns_the_teachers_answers_in_its_distillation_head(tmp_path):
    """The class head learns the labels; the distillation head learns what the teacher says."""
    torch.manual_seed(0)
    dm = ImageDataModule(label_by="color", image_size=16, augment=ImageAugment(crop_scale=None), **SMALL)
    dm.prepare_data()
    net = ViT.from_preset("nano", image_size=16, patch_size=4, num_classes=dm.num_classes, distillation=True)
    model = ImageClassifier(net, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3), warmup_steps=5,
                            classes=dm.classes, distill_alpha=0.5)  # fmt: skip
    model.use_teacher(Constant(dm.num_classes, k=2))
    quiet_trainer(tmp_path, max_epochs=4).fit(model, dm)
    images = dm.transform(next(iter(dm.val_dataloader())), train=False)["image"]
    with torch.no_grad():
        cls_logits, dist_logits = model.net.forward_heads(images)
    assert (dist_logits.argmax(-1) == 2).float().mean() >= 0.95  # the teacher's constant answer
    assert (cls_logits.argmax(-1) == 2).float().mean() < 0.6  # the labels are spread over 6 colours
    assert not any(k.startswith("teacher") for k in model.state_dict())
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_position_embeddings_and_class_tokens_get_no_weight_decay():
    net = ViT.from_preset("nano", num_classes=3, distillation=True)
    decay, no_decay = param_groups(net)
    names = {id(p): n for n, p in net.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "dist_token", "pos_embed"} <= skipped
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert "head.weight" not in skipped


def test_predictions_name_the_classes():
    model = ImageClassifier(ResNet.from_preset("nano", num_classes=3), classes=["cat", "dog", "fox"]).eval()
    rows = model.predict_step({"image": torch.randn(2, 3, 16, 16), "label": torch.tensor([0, 2])}, 0)
    assert [r["label"] for r in rows] == ["cat", "fox"]
    assert all(r["pred"] in ("cat", "dog", "fox") and r["top5"][0] == r["pred"] for r in rows)
    assert all(0 < r["prob"] <= 1 for r in rows)


def test_bad_settings_and_teachers_are_clear_errors(tmp_path):
    net = ResNet.from_preset("nano", num_classes=3)
    with pytest.raises(InputError, match="label_smoothing"):
        ImageClassifier(net, label_smoothing=1.0)
    with pytest.raises(InputError, match="distillation"):
        ImageClassifier(net, distillation="medium")
    with pytest.raises(InputError, match=r"no checkpoint at .*Fix: train the teacher first"):
        ImageClassifier(net, teacher=str(tmp_path / "runs/*/best.ckpt")).setup("fit")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk\.ckpt' is not a readable checkpoint"):
        ImageClassifier(net, teacher=str(junk)).setup("fit")
    with pytest.raises(InputError, match="teacher predicts 4 classes"):
        ImageClassifier(net, classes=["a", "b", "c"]).use_teacher(Constant(4, 0))


def test_copies_of_the_module_share_its_optimizer_factory():
    """EMAWeightAveraging deep-copies the module; under DDP the CLI's factory refers to locks."""
    model = ImageClassifier(ResNet.from_preset("nano", num_classes=3))
    lock = threading.Lock()  # as held, deep inside, by the factory that LightningCLI builds
    model.optimizer = SharedFactory(
        functools.partial(lambda params, guard: torch.optim.SGD(params, 0.1), guard=lock)
    )
    twin = copy.deepcopy(model)
    assert twin.optimizer is model.optimizer and twin.net is not model.net
    assert isinstance(twin.optimizer(twin.parameters()), torch.optim.SGD)

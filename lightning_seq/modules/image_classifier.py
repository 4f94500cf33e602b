"""ImageClassifier: supervised image classification, with optional distillation from a teacher.

Any net with the classifier contract plugs in: ``net(images (B, C, H, W)) -> logits (B, K)``. The
DataModule hands over normalised (and, in training, augmented) images, integer labels, and for
MixUp / CutMix batches soft targets ``(B, K)`` that the loss uses instead of the labels.

Distillation follows DeiT (Touvron et al., 2021). A teacher is any classifier checkpoint written by
``lightning fit`` (e.g. ``recipes/resnet_se.yaml``); it is loaded for ``fit`` only, frozen, and kept
out of this module's checkpoints. With a net that has a distillation token (``forward_heads``), the
class head learns from the targets and the distillation head from the teacher; otherwise both
terms apply to the one head::

    hard:  L = (1 - a) CE(z_cls, y) + a CE(z_dist, argmax z_teacher)
    soft:  L = (1 - a) CE(z_cls, y) + a tau^2 KL(softmax(z_teacher / tau) || softmax(z_dist / tau))
"""

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_seq.checkpointing import load_module, newest_match
from lightning_seq.errors import InputError
from lightning_seq.modules._base import NetModule

Distillation = Literal["hard", "soft"]


class ImageClassifier(NetModule):
    """Trains an image classifier; logs ``stage/loss``, ``stage/acc`` and ``stage/acc_top5``.

    Args:
        net: the network, ``net(images) -> logits``, e.g. :class:`~lightning_seq.nets.Swin`.
        label_smoothing: mass spread uniformly over the classes in the cross-entropy targets.
        classes: class names, in label order (linked from the DataModule; saved in checkpoints).
        teacher: checkpoint of a trained classifier to distil from during ``fit``.
        distillation: ``hard`` (teacher's argmax as label) or ``soft`` (teacher's tempered distribution).
        distill_alpha: weight ``a`` of the distillation term.
        distill_temperature: temperature ``tau`` of soft distillation.
        channels_last: run the net in the channels-last memory format (faster convs on GPUs).
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        label_smoothing: float = 0.0,
        classes: list[str] | None = None,
        teacher: str | None = None,
        distillation: Distillation = "hard",
        distill_alpha: float = 0.5,
        distill_temperature: float = 1.0,
        channels_last: bool = False,
        min_lr_ratio: float = 0.01,
        **kwargs,
    ):
        _check_settings(label_smoothing, distillation, distill_alpha)
        super().__init__(net, min_lr_ratio=min_lr_ratio, **kwargs)
        self.classes = list(classes) if classes is not None else None
        num_classes = len(self.classes) if self.classes is not None else getattr(net, "num_classes", None)
        if not num_classes:
            raise InputError(
                "model.classes: the number of classes is unknown. Fix: train with an image DataModule "
                "(it links the class names), or pass model.classes or a net with a num_classes attribute."
            )
        self.num_classes = int(num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        # one set of metrics per stage, so that validation inside an epoch never mixes with test
        self.metrics = nn.ModuleDict({stage: self._accuracies() for stage in ("val", "test")})
        self.__dict__["teacher"] = None  # not a submodule: never saved, averaged or trained

    def _accuracies(self) -> nn.ModuleDict:
        top_k = {"acc": 1, "acc_top5": 5} if self.num_classes > 5 else {"acc": 1}
        return nn.ModuleDict(
            {
                name: MulticlassAccuracy(self.num_classes, top_k=k, average="micro")
                for name, k in top_k.items()
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    # -------------------------------------------------------------------------------- training
    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross entropy with label smoothing.

        Args:
            logits: ``(B, K)`` scores.
            targets: ``(B,)`` class indices, or ``(B, K)`` class probabilities (MixUp / CutMix).
        """
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.hparams.label_smoothing)

    def distillation_loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher term: hard (CE on the teacher's argmax) or soft (tempered KL, times tau^2)."""
        if self.hparams.distillation == "hard":
            return F.cross_entropy(logits.float(), teacher_logits.argmax(-1))
        tau = self.hparams.distill_temperature
        kl = F.kl_div(
            F.log_softmax(logits.float() / tau, -1), F.log_softmax(teacher_logits.float() / tau, -1),
            reduction="batchmean", log_target=True,
        )  # fmt: skip
        return kl * tau**2

    def _train_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        if self.teacher is None:
            return self.compute_loss(self.net(images), targets)
        heads = getattr(self.net, "forward_heads", None)
        cls_logits, dist_logits = heads(images) if heads else (self.net(images),) * 2
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        alpha = self.hparams.distill_alpha
        base, distil = (
            self.compute_loss(cls_logits, targets),
            self.distillation_loss(dist_logits, teacher_logits),
        )
        self.log_dict({"train/loss_cls": base, "train/loss_distill": distil}, on_step=True, on_epoch=False)
        return (1 - alpha) * base + alpha * distil

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        images, labels = batch["image"], batch["label"]  # (B, C, H, W), (B,)
        size = images.size(0)
        if stage == "train":
            loss = self._train_loss(images, batch.get("target", labels))
            self.log_loss(stage, loss, size)
            return {"loss": loss}
        logits = self(images)  # (B, K)
        loss = self.compute_loss(logits, labels)
        self.log_loss(stage, loss, size)
        for name, metric in self.metrics[stage].items():
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", on_epoch=True, batch_size=size)
        return {"loss": loss, "logits": logits.detach()}

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> list[dict]:
        """Top-5 class names and probabilities per image (and the true class when the batch has one)."""
        probs = self(batch["image"]).float().softmax(-1)  # (B, K)
        top = probs.topk(min(5, self.num_classes), dim=-1)
        names = self.classes or [str(i) for i in range(self.num_classes)]
        rows = []
        for i, (p, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
            row = {"pred": names[idx[0]], "prob": round(p[0], 4), "top5": [names[j] for j in idx]}
            if "label" in batch:
                row["label"] = names[int(batch["label"][i])]
            rows.append(row)
        return rows

    # -------------------------------------------------------------------------------- teacher
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.teacher and self.teacher is None:
            self.use_teacher(self.load_teacher(self.hparams.teacher))

    def use_teacher(self, net: nn.Module) -> None:
        """Distil from ``net`` (``images -> logits``), frozen; it is not saved with this module."""
        classes = getattr(net, "num_classes", self.num_classes)
        if classes != self.num_classes:
            raise InputError(
                f"model.teacher: the teacher predicts {classes} classes, this model {self.num_classes}. "
                "Fix: use a teacher trained on the same data."
            )
        self.__dict__["teacher"] = net.eval().requires_grad_(False)

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device, memory_format=self.memory_format)

    def load_teacher(self, path: str) -> nn.Module:
        """The net of a classifier checkpoint (a path, or a glob: its newest match), checked to predict
        this run's classes."""
        path = newest_match(path, "model.teacher", _train_first("model.teacher"))
        teacher = load_classifier(path)
        if self.classes is not None and teacher.classes is not None and teacher.classes != self.classes:
            raise InputError(
                f"model.teacher: '{path}' was trained on classes {teacher.classes}, but this run's data has "
                f"{self.classes}. Fix: use a teacher trained on the same dataset and label column."
            )
        return teacher.net


def load_classifier(path: str | Path, *, field: str = "model.teacher") -> ImageClassifier:
    """An :class:`ImageClassifier` from a ``lightning fit`` checkpoint, on the CPU, in eval mode.

    ``path`` may be a glob (``runs/resnet_se/version_*/checkpoints/best.ckpt``): the newest match
    is used. The checkpoint holds the net's ``class_path`` config, so nothing else is needed; it is read
    with ``weights_only=True``. Raises :class:`InputError` naming ``field`` and the file when it is
    missing, unreadable or the checkpoint of another kind of model.
    """
    path = newest_match(path, field, _train_first(field))
    return load_module(path, ImageClassifier, field=field)


def _check_settings(label_smoothing: float, distillation: str, alpha: float) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"model.label_smoothing: expected a value in [0, 1), got {label_smoothing}.")
    if distillation not in ("hard", "soft") or not 0.0 <= alpha <= 1.0:
        raise InputError(
            "model.distillation / model.distill_alpha: expected 'hard' or 'soft' and 0 <= alpha <= 1, "
            f"got '{distillation}' and {alpha}."
        )


def _train_first(field: str) -> str:
    """The fix when no checkpoint matches ``field``'s path."""
    what = "the teacher" if field == "model.teacher" else "a classifier"
    return (
        f"train {what} first (lightning fit --config recipes/resnet_se.yaml) or pass the path of its .ckpt."
    )

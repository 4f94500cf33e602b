"""Image training throughput: a plain PyTorch loop vs our ImageClassifier + Trainer, and the data wait.

Both sides train fresh copies of one initial network (the net of a recipe, ``swin`` by default) on
the embedded 32x32 shapes through the same ImageDataModule: PIL decoding in worker processes,
kornia augmentation on the batch (random resized crop + flip, as in the recipes), normalisation,
cross entropy with label smoothing 0.1, backward, gradient-norm clipping at 1.0, AdamW and the
warmup + cosine schedule. They run alternately in rounds inside one process, so machine noise hits
both; the first steps of each run (worker start-up) are not timed.

The data wait is the time the training loop spends blocked on the DataLoader for the next batch,
as a share of the wall time of the timed steps (augmentation runs on the device in the step and
is counted as step time, shown separately).

    python benchmarks/images.py                 # swin
    python benchmarks/images.py --recipe resnet_se

Prints a Markdown table (paste it into benchmarks/RESULTS.md).
"""

import argparse
import copy
import importlib
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from _common import bench_trainer, plain_optimization, print_step_table

from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.modules import ImageClassifier

REPO = Path(__file__).resolve().parents[1]


def recipe_net(recipe: str, dm: ImageDataModule) -> torch.nn.Module:
    """The net of ``recipes/<recipe>.yaml``, sized for ``dm``."""
    config = yaml.safe_load((REPO / "recipes" / f"{recipe}.yaml").read_text())["model"]["init_args"]["net"]
    module, name = config["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    sizes = {"image_size": dm.image_size, "in_channels": dm.in_channels, "num_classes": dm.num_classes}
    return cls(**config.get("init_args", {}), **sizes)


class Timed:
    """Wall time of the timed steps and the part of it spent waiting for the DataLoader."""

    def __init__(self, warmup: int):
        self.warmup, self.start = warmup, None
        self.wait, self.augment, self.steps = 0.0, 0.0, 0

    def record(self, step: int, waited: float, augmented: float) -> None:
        if step == self.warmup:
            self.start = time.perf_counter() - waited - augmented  # this step's loading counts
        if step >= self.warmup:
            self.wait, self.augment, self.steps = self.wait + waited, self.augment + augmented, self.steps + 1

    def finish(self) -> dict[str, float]:
        total = time.perf_counter() - self.start
        return {"ms": 1e3 * total / self.steps, "wait": self.wait / total, "augment": self.augment / total}


def optimizer(params, lr: float = 2e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.05)


def plain_loop(net: torch.nn.Module, dm: ImageDataModule, steps: int, warmup: int) -> dict[str, float]:
    """A hand-written training loop over the same DataModule's loader and batch transform."""
    opt, sched = plain_optimization(net, optimizer, steps, 10, 0.01)
    timed, net = Timed(warmup), net.train()
    batches = iter(dm.train_dataloader())
    for step in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = dm.transform(batch, train=True)
        timed.record(step, t1 - t0, time.perf_counter() - t1)
        loss = F.cross_entropy(net(batch["image"]), batch["label"], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return timed.finish()


class TimedData(ImageDataModule):
    """The DataModule, stamping when each batch comes out of the loader and when it is augmented."""

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        self.got = time.perf_counter()
        return batch

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        batch = super().on_after_batch_transfer(batch, dataloader_idx)
        self.augmented = time.perf_counter()
        return batch


class StepTimer(L.Callback):
    """Per step: the time from the end of the previous step to the batch leaving the loader."""

    def __init__(self, warmup: int):
        self.timed, self.last_end = Timed(warmup), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        dm = trainer.datamodule
        waited = dm.got - self.last_end if self.last_end is not None else 0.0
        self.timed.record(trainer.global_step, waited, dm.augmented - dm.got)  # batch_idx restarts each epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_end = time.perf_counter()


def lightning_loop(net: torch.nn.Module, dm: ImageDataModule, steps: int, warmup: int) -> dict[str, float]:
    """Our ImageClassifier + Trainer (gradient clipping callback) on the same data."""
    model = ImageClassifier(
        net, optimizer=optimizer, warmup_steps=10, label_smoothing=0.1, classes=dm.classes
    )
    timer = StepTimer(warmup)
    bench_trainer(steps, timer).fit(model, dm)
    return timer.timed.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="swin", help="whose net to train: swin, vit, resnet_se, deit")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    augment = ImageAugment(crop_scale=(0.6, 1.0), hflip=True)
    dm = TimedData(batch_size=args.batch, num_workers=args.workers, augment=augment)
    dm.prepare_data()
    dm.setup("fit")
    net = recipe_net(args.recipe, dm)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
        ours.append(lightning_loop(copy.deepcopy(net), dm, args.steps, args.warmup))

    def median(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    threads = torch.get_num_threads()
    setup = f"{args.recipe} net, batch {args.batch}, {args.workers} workers, {threads} threads"
    print_step_table(setup, "ImageClassifier", [r["ms"] for r in plain], [r["ms"] for r in ours], args.batch)
    print(
        f"waiting for the DataLoader: {100 * median(ours, 'wait'):.1f}% of step time with the Trainer, "
        f"{100 * median(plain, 'wait'):.1f}% in the plain loop; on-device augmentation + normalisation: "
        f"{100 * median(ours, 'augment'):.1f}% / {100 * median(plain, 'augment'):.1f}%"
    )


if __name__ == "__main__":
    main()

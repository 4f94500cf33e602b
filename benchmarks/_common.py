"""What the side-by-side benchmarks share: the plain loop's optimizer set-up and the quiet Trainer."""

import statistics
import tempfile
import time
from collections.abc import Callable

import lightning as L
import torch

from lightning_seq.callbacks import GradientClipping, NonFiniteLoss
from lightning_seq.modules._optim import OptimizerFactory, configure_optimization


def plain_optimization(
    net: torch.nn.Module, optimizer: OptimizerFactory, steps: int, warmup_steps: int, min_lr_ratio: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and per-step schedule that our modules build, for a hand-written loop."""
    setup = configure_optimization(net, optimizer, steps, warmup_steps, "cosine", min_lr_ratio)
    return setup["optimizer"], setup["lr_scheduler"]["scheduler"]


def bench_trainer(steps: int, *callbacks: L.Callback, clip_val: float | None = 1.0) -> L.Trainer:
    """A Trainer for timing: CPU, no logger, checkpoints, progress bar or validation; clipping at
    ``clip_val`` (None: none) and the NaN/Inf guard (with its host sync), as `lightning fit` adds it.

    Its run folder (where the DataModule copies the tokenizer) is a new temporary folder."""
    clipping = [] if clip_val is None else [GradientClipping(clip_val=clip_val)]
    return L.Trainer(
        default_root_dir=tempfile.mkdtemp(prefix="lightning_seq_bench-"),
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[*clipping, NonFiniteLoss(), *callbacks],
    )  # fmt: skip


def print_step_table(setup: str, ours_name: str, plain: list[float], ours: list[float], batch: int) -> None:
    """The Markdown row of a side-by-side step timing (medians of the rounds' ms per step) and the rounds."""
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"| setup | plain PyTorch ms/step | {ours_name} + Trainer ms/step | ratio | images/s (ours) |")
    print("|---|---|---|---|---|")
    print(f"| {setup} | {p:.1f} | {o:.1f} | {o / p:.3f} | {1e3 * batch / o:.0f} |")
    rounds = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(plain, ours, strict=True))
    print(f"\nrounds (plain / ours, ms): {rounds}")


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 0) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

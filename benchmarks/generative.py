"""Generative image models: framework overhead, IWAE evaluation, PixelCNN sampling and the pixel nets.

Four measurements, each side by side in one process, on the embedded 28x28 one-object mono scenes,
dynamically binarised (the data of recipes/vae.yaml, vae_conv.yaml and pixelcnn.yaml; no augmentation):

* ``overhead``: a training step through our module + Trainer vs a hand-written PyTorch loop on fresh
  copies of one initial net and the same DataModule, for the conv VAE (``VAE`` preset ``conv_small``,
  ``VariationalAutoencoder``, batch 128) and the gated PixelCNN (``GatedPixelCNN`` preset ``scenes``,
  ``PixelCNNModel``, batch 32). The plain loop does the same math by hand: the batch transform
  (dynamic binarisation), the negative ELBO with one reparameterised sample and the analytic KL (VAE)
  or the exact negative log-likelihood (PixelCNN), backward, gradient-norm clipping at 1.0 and Adam at
  a constant rate (the recipes': 1e-3 VAE, 3e-3 PixelCNN). The Trainer side runs as ``lightning fit``
  does (clipping callback, NaN/Inf guard); the module draws the VAE's noise per item
  (``data.pixels.item_normals``, 128 x 16 numbers a step), the plain loop with ``torch.randn``. The two
  sides alternate in rounds; the first ``--warmup`` steps of each run are not timed; medians.
* ``iwae``: ``-IWAE_k`` (k = 1000) of 32 validation images under a conv VAE trained briefly (100 steps):
  ``VariationalAutoencoder.iwae_nll`` batched over samples (``iwae_batch`` 1000, 100 and 1) vs k
  forward passes one sample at a time (encode, draw, decode, log weight; then the same logsumexp), in
  ms per image, and whether the estimates agree (each with its own noise: the mean per-image
  difference within 3 standard errors).
* ``sampling``: ``PixelCNNModel.sample`` of the (untrained) gated ``scenes`` net, 784 net calls per
  image: a batch of 64 at once vs single images one after another (per image), images/s, with
  ``crop_rows`` on (what ``sample`` does: the net sees rows ``0..i`` only) and off (the whole image).
* ``nets``: gated PixelCNN vs plain PixelCNN vs Row LSTM, presets ``scenes`` (about equal effective
  parameters), each trained ``--steps`` steps at batch 32 with Adam 3e-3 (constant, no warmup), the
  same seed and data order, through ``PixelCNNModel`` + a quiet Trainer; then exact val nll and bits/dim
  on 500 validation images, and ms/step.

    python benchmarks/generative.py                      # all four, in this order
    python benchmarks/generative.py --only overhead
    python benchmarks/generative.py --only iwae
    python benchmarks/generative.py --only sampling
    python benchmarks/generative.py --only nets          # --steps 400 by default

Prints Markdown tables (paste them into benchmarks/RESULTS.md).
"""

import argparse
import copy
import functools
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import lightning as L
import torch
from _common import bench_trainer, plain_optimization
from images import StepTimer, Timed, TimedData
from torch import Tensor, nn

from lightning_seq.data import ImageAugment
from lightning_seq.data import pixels as px
from lightning_seq.decoding.pixels import sample_pixels
from lightning_seq.layers.gaussian import (
    diagonal_normal_log_prob,
    kl_diagonal_standard,
    reparameterize,
    standard_normal_log_prob,
)
from lightning_seq.modules import PixelCNNModel, VariationalAutoencoder
from lightning_seq.modules._base import NetModule
from lightning_seq.modules._optim import OptimizerFactory
from lightning_seq.nets import VAE, GatedPixelCNN, PixelCNN, RowLSTM
from lightning_seq.nets.pixelcnn import effective_parameters

PARTS = ("overhead", "iwae", "sampling", "nets")


# ------------------------------------------------------------------------------------ shared
def adam(lr: float) -> OptimizerFactory:
    """Adam at ``lr`` (no weight decay), as the generative recipes train."""
    return functools.partial(torch.optim.Adam, lr=lr)


def scenes_data(batch: int, workers: int, eval_batch: int | None = None) -> TimedData:
    """The recipes' data (28x28 mono scenes, dynamically binarised, unlabelled), set up for fitting."""
    dm = TimedData(
        image_size=28, channels=1, scene_style="mono", pixels="binary", binarize="dynamic", labels="none",
        augment=ImageAugment(crop_scale=None, hflip=False), batch_size=batch, eval_batch_size=eval_batch,
        num_workers=workers,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


def vae_net() -> VAE:
    return VAE(preset="conv_small", likelihood="bernoulli")


def vae_module(net: nn.Module, lr: float) -> VariationalAutoencoder:
    """The VAE module as recipes/vae_conv.yaml builds it, without KL warm-up (the plain ELBO)."""
    return VariationalAutoencoder(
        net, optimizer=adam(lr), warmup_steps=0, lr_schedule="constant", pixels="binary"
    )


def pixel_module(net: nn.Module, lr: float) -> PixelCNNModel:
    """``PixelCNNModel`` over ``net`` at a constant rate ``lr`` (no warmup)."""
    return PixelCNNModel(net, optimizer=adam(lr), warmup_steps=0, lr_schedule="constant", pixels="binary")


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def seconds(fn: Callable[[], object]) -> tuple[object, float]:
    """``fn()``'s result and its wall time in seconds."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ------------------------------------------------------------------------------------ overhead
def vae_loss(net: VAE, x: Tensor) -> Tensor:
    """The negative ELBO by hand: one reparameterised sample per image, the analytic KL."""
    mu, logvar = net.encode(px.to_unit(x, "binary"))  # (B, Z) each
    z = mu + torch.exp(logvar / 2) * torch.randn_like(mu)
    recon = net.likelihood.log_prob(net.decode(z), x)  # (B,)
    kl = kl_diagonal_standard(mu, logvar).sum(-1)  # (B,)
    return -(recon - kl).mean()


def pixelcnn_loss(net: nn.Module, x: Tensor) -> Tensor:
    """The exact negative log-likelihood by hand: one teacher-forced pass over ``2x - 1``."""
    return -net.likelihood.log_prob(net(2 * x - 1), x).mean()


@dataclass
class Case:
    """One net of the overhead comparison: how to build it, its module, its loss by hand, batch, rate."""

    name: str
    net: Callable[[], nn.Module]
    module: Callable[[nn.Module, float], NetModule]
    loss: Callable[[nn.Module, Tensor], Tensor]
    batch: int
    lr: float


CASES = (
    Case("conv VAE (conv_small)", vae_net, vae_module, vae_loss, 128, 1e-3),
    Case(
        "gated PixelCNN (scenes)", lambda: GatedPixelCNN(preset="scenes", likelihood="bernoulli"),
        pixel_module, pixelcnn_loss, 32, 3e-3,
    ),
)  # fmt: skip


def train_batches(dm: TimedData) -> Iterator[dict]:
    """Training batches out of the DataModule's loader, epoch after epoch."""
    while True:
        yield from dm.train_dataloader()


def plain_loop(net: nn.Module, case: Case, dm: TimedData, steps: int, warmup: int) -> dict[str, float]:
    """A hand-written training loop over the same DataModule's loader and batch transform."""
    opt, sched = plain_optimization(net, adam(case.lr), steps, 0, 1.0)  # cosine to 1.0 x peak: constant
    timed, net = Timed(warmup), net.train()
    batches = train_batches(dm)
    for step in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        batch = dm.transform(batch, train=True, epoch=0)
        timed.record(step, t1 - t0, time.perf_counter() - t1)
        loss = case.loss(net, batch["image"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return timed.finish()


def lightning_loop(net: nn.Module, case: Case, dm: TimedData, steps: int, warmup: int) -> dict[str, float]:
    """Our module + Trainer (clipping callback, NaN/Inf guard) on the same data."""
    timer = StepTimer(warmup)
    bench_trainer(steps, timer).fit(case.module(net, case.lr), dm)
    return timer.timed.finish()


def overhead_note(name: str, plain: list[dict], ours: list[dict]) -> str:
    """The rounds of one net and the shares of step time spent waiting for data and transforming it."""
    rounds = ", ".join(f"{a['ms']:.1f}/{b['ms']:.1f}" for a, b in zip(plain, ours, strict=True))
    wait = f"{100 * median(ours, 'wait'):.1f}% / {100 * median(plain, 'wait'):.1f}%"
    transform = f"{100 * median(ours, 'augment'):.1f}% / {100 * median(plain, 'augment'):.1f}%"
    return (
        f"{name}: rounds (plain / ours, ms) {rounds}; share of step time waiting for the DataLoader "
        f"{wait} (ours / plain), in the batch transform {transform}."
    )


def overhead(args: argparse.Namespace) -> None:
    """Print the plain-loop vs module + Trainer table of the conv VAE and the gated PixelCNN."""
    rows, notes = [], []
    for case in CASES:
        torch.manual_seed(args.seed)
        batch = args.batch or case.batch
        dm = scenes_data(batch, args.workers)
        net = case.net()
        plain, ours = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop(copy.deepcopy(net), case, dm, args.overhead_steps, args.warmup))
            ours.append(lightning_loop(copy.deepcopy(net), case, dm, args.overhead_steps, args.warmup))
        p, o = median(plain, "ms"), median(ours, "ms")
        times = f"{p:.1f} | {o:.1f} | {o / p:.3f} | {1e3 * batch / o:.0f}"
        rows.append(f"| {case.name}, batch {batch} | {times} |")
        notes.append(overhead_note(case.name, plain, ours))
    steps = f"{args.overhead_steps} steps ({args.warmup} not timed) x {args.rounds} rounds"
    threads = torch.get_num_threads()
    print(f"\n### Training step: plain PyTorch vs module + Trainer ({steps}, {threads} threads)\n")
    print("| setup | plain PyTorch ms/step | module + Trainer ms/step | ratio | images/s (ours) |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n" + "\n".join(notes))


# ------------------------------------------------------------------------------------ IWAE
@torch.no_grad()
def iwae_one_at_a_time(net: VAE, x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``-IWAE_k`` per image ``(B,)`` by ``k`` passes of one sample per image: encode, draw, decode."""
    x_unit, log_w = px.to_unit(x, "binary"), []
    for _ in range(k):
        mu, logvar = net.encode(x_unit)  # (B, Z) each
        z = reparameterize(mu, logvar, torch.randn(mu.shape, generator=generator))
        log_px = net.likelihood.log_prob(net.decode(z), x)  # (B,)
        log_w.append(log_px + standard_normal_log_prob(z) - diagonal_normal_log_prob(z, mu, logvar))
    return -(torch.logsumexp(torch.stack(log_w).float(), dim=0) - math.log(k))


def iwae_model(args: argparse.Namespace) -> tuple[VariationalAutoencoder, Tensor]:
    """A conv VAE trained ``--iwae-train-steps`` steps, and ``--iwae-images`` validation images."""
    torch.manual_seed(args.seed)
    dm = scenes_data(128, args.workers, eval_batch=args.iwae_images)
    model = vae_module(vae_net(), 1e-3)
    if args.iwae_train_steps > 0:
        bench_trainer(args.iwae_train_steps).fit(model, dm)
    batch = dm.transform(next(iter(dm.val_dataloader())), train=False)
    return model, batch["image"]


ONE_AT_A_TIME = "one sample at a time (encode + decode per pass)"


def iwae(args: argparse.Namespace) -> None:
    """Print ms per image of the batched IWAE evaluations and of the one-at-a-time loop, and agreement."""
    model, x = iwae_model(args)
    k = args.iwae_k
    runs: dict[str, tuple[Tensor, float]] = {}
    for number, chunk in enumerate(args.iwae_batches):  # each with its own noise
        model.hparams.iwae_batch = chunk
        generator = torch.Generator().manual_seed(args.seed + 1 + number)
        runs[f"`iwae_nll`, iwae_batch={chunk}"] = seconds(
            functools.partial(model.iwae_nll, x, k, generator=generator)
        )
    generator = torch.Generator().manual_seed(args.seed)
    with model.evaluating():
        runs[ONE_AT_A_TIME] = seconds(lambda: iwae_one_at_a_time(model.net, x, k, generator))
    print(f"\n### IWAE evaluation, k = {k}, {x.shape[0]} images ({args.iwae_train_steps} training steps)\n")
    print_iwae(runs)


def print_iwae(runs: dict[str, tuple[Tensor, float]]) -> None:
    """The table of :func:`iwae`: per evaluation, its time and its estimate against the first row's."""
    print("| evaluation | ms/image | one-at-a-time / this | mean -IWAE (nats) | vs first row (nats) |")
    print("|---|---|---|---|---|")
    reference, one = next(iter(runs.values()))[0], runs[ONE_AT_A_TIME][1]
    size = reference.numel()
    for name, (nll, took) in runs.items():
        diff = nll - reference  # (B,): per image
        error = diff.std().item() / math.sqrt(size) if size > 1 else math.nan
        verdict = "agrees" if abs(diff.mean()) <= 3 * error else "DIFFERS"
        agree = "" if diff.abs().max() == 0 else f" ({verdict})"
        print(
            f"| {name} | {1e3 * took / size:.2f} | {one / took:.1f} | {nll.mean():.3f} | "
            f"{diff.mean():+.3f} +- {error:.3f}{agree} |"
        )
    print(
        "\nEach row draws its own noise; a difference is the mean over the images of the per-image "
        "difference, +- its standard error; it agrees when within 3 standard errors."
    )


# ------------------------------------------------------------------------------------ sampling
def draw(model: PixelCNNModel, n: int, crop_rows: bool, seed: int) -> Tensor:
    """``n`` images as ``model.sample`` draws them, with ``crop_rows`` on or off."""
    generator = torch.Generator().manual_seed(seed)
    if crop_rows:  # what sample() does
        return model.sample(n, generator=generator)
    net, shape = model.net, (n, model.net.in_channels, model.net.image_size, model.net.image_size)
    with model.evaluating():
        return sample_pixels(
            lambda x, y: net(model.net_input(x), y), shape, model.likelihood, generator=generator,
            record=True, device=model.device, crop_rows=False,
        )[0]  # fmt: skip


def sampling(args: argparse.Namespace) -> None:
    """Print the per-image time and images/s of batched vs one-at-a-time PixelCNN sampling."""
    torch.manual_seed(args.seed)
    model = pixel_module(GatedPixelCNN(preset="scenes", likelihood="bernoulli"), 3e-3)
    with torch.no_grad(), model.evaluating():  # one pass at each size before timing
        model(torch.zeros(args.sample_batch, 1, 28, 28))
        model(torch.zeros(1, 1, 28, 28))
    rows, images = [], {}
    for crop in (True, False):
        images[crop], batch = seconds(functools.partial(draw, model, args.sample_batch, crop, args.seed))
        one = [functools.partial(draw, model, 1, crop, args.seed + i) for i in range(args.single)]
        single = sum(seconds(fn)[1] for fn in one)
        per_batch, per_single = batch / args.sample_batch, single / args.single
        rows.append(
            f"| {'on' if crop else 'off'} | {batch:.1f} | {1e3 * per_batch:.0f} | {1 / per_batch:.2f} | "
            f"{1e3 * per_single:.0f} | {1 / per_single:.2f} | {per_single / per_batch:.1f} |"
        )
    same = sum(torch.equal(a, b) for a, b in zip(images[True], images[False], strict=True))
    n, threads = args.sample_batch, torch.get_num_threads()
    print(f"\n### Gated PixelCNN (scenes) sampling: 28x28 binary, 784 net calls a draw, {threads} threads\n")
    one_by_one = f"one at a time ({args.single} images): ms/image"
    print(f"| crop_rows | batch of {n}: s | ms/image | images/s | {one_by_one} | images/s | single / batch |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nSame seed, crop_rows on vs off: {same} of {n} images identical.")


# ------------------------------------------------------------------------------------ nets
NETS = {"gated PixelCNN": GatedPixelCNN, "PixelCNN": PixelCNN, "Row LSTM": RowLSTM}


def validate(model: PixelCNNModel, dm: TimedData, batches: int) -> dict[str, float]:
    """``val/nll`` and ``val/bpd`` over the first ``batches`` validation batches, by a quiet Trainer."""
    trainer = L.Trainer(
        default_root_dir=tempfile.mkdtemp(prefix="lightning_seq_bench-"), accelerator="cpu", devices=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=batches,
    )  # fmt: skip
    metrics = trainer.validate(model, dm, verbose=False)[0]
    return {name: float(metrics[f"val/{name}"]) for name in ("nll", "bpd")}


def nets(args: argparse.Namespace) -> None:
    """Train the three pixel nets alike and print their parameters, ms/step, val nll and bits/dim."""
    eval_batch = 100 if args.val_images % 100 == 0 else args.val_images
    dm = scenes_data(args.nets_batch, args.workers, eval_batch=eval_batch)
    rows = []
    for name, cls in NETS.items():
        torch.manual_seed(args.seed)
        net = cls(preset="scenes", likelihood="bernoulli")
        total, effective = sum(p.numel() for p in net.parameters()), effective_parameters(net)
        model, timer = pixel_module(net, args.nets_lr), StepTimer(args.warmup)
        bench_trainer(args.steps, timer).fit(model, dm)
        ms = timer.timed.finish()["ms"]
        val = validate(model, dm, args.val_images // eval_batch)
        scores = f"{val['nll']:.2f} | {val['bpd']:.4f}"
        rows.append(f"| {name} | {total:,} | {effective:,} | {ms:.0f} | {scores} |")
    print(
        f"\n### Pixel nets (scenes presets): {args.steps} steps at batch {args.nets_batch}, Adam "
        f"{args.nets_lr:g} constant, seed {args.seed}; exact likelihood of {args.val_images} val images\n"
    )
    print("| net | parameters | effective | ms/step | val nll (nats) | val bits/dim |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


# ------------------------------------------------------------------------------------ main
def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run (default all)")
    add("--seed", type=int, default=0)
    add("--workers", type=int, default=2, help="DataLoader workers")
    add("--warmup", type=int, default=10, help="first training steps of a run not timed (overhead, nets)")
    add("--rounds", type=int, default=3, help="overhead: alternating plain / Trainer rounds")
    add("--overhead-steps", type=int, default=50, help="overhead: training steps of each run")
    add("--batch", type=int, default=None, help="overhead: batch of both nets (default VAE 128, PixelCNN 32)")
    add("--iwae-k", type=int, default=1000, help="iwae: importance samples per image")
    add("--iwae-images", type=int, default=32, help="iwae: validation images evaluated")
    add("--iwae-batches", type=int, nargs="+", default=[1000, 100, 1], help="iwae: iwae_batch values")
    add("--iwae-train-steps", type=int, default=100, help="iwae: training steps of the VAE first (0: none)")
    add("--sample-batch", type=int, default=64, help="sampling: images drawn at once")
    add("--single", type=int, default=3, help="sampling: images drawn one at a time")
    add("--steps", type=int, default=400, help="nets: training steps of each net")
    add("--nets-batch", type=int, default=32, help="nets: training batch")
    add("--nets-lr", type=float, default=3e-3, help="nets: Adam's learning rate")
    add("--val-images", type=int, default=500, help="nets: validation images scored at the end")
    args = parser.parse_args()
    timed = {"overhead": args.overhead_steps, "nets": args.steps}
    for part, steps in timed.items():
        if part in args.only and steps <= args.warmup:
            parser.error(f"{part}: expected more training steps than --warmup={args.warmup}, got {steps}")
    return args


def main() -> None:
    args = parse()
    for name in ("lightning.pytorch", "lightning.fabric"):  # the Trainer's start-up lines
        logging.getLogger(name).setLevel(logging.WARNING)
    parts = {"overhead": overhead, "iwae": iwae, "sampling": sampling, "nets": nets}
    for part in PARTS:
        if part in args.only:
            parts[part](args)


if __name__ == "__main__":
    main()

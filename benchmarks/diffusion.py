"""Diffusion: the training step against a hand-written loop, and DDIM against DDPM on a trained model.

``step``: both sides train fresh copies of one initial ``UNet`` (``--preset``, ``small`` by default: the
net of recipes/ddpm_cond.yaml) on the embedded colour shapes (16x16, or ``--image-size``) with their
class labels, through the same ImageDataModule (PIL decoding in a worker process, horizontal flips,
pixels in [-1, 1]). One step: a uniform timestep and Gaussian noise per image, 10% of the labels
replaced by the null label, x_t in closed form, the MSE of the predicted noise (the module's default
parameterisation; the recipes' ``v`` costs the same), an Adam step (lr 2e-4, constant) and the moving
average of the weights (decay 0.995 with the module's warm-up). The plain loop draws its numbers with
``torch.randint``/``randn``/``rand``; the module draws them per item (what makes DDP and resume exact).
No gradient clipping; the Trainer side has the NaN/Inf guard that ``lightning fit`` adds. The sides
alternate in rounds inside one process; the first ``--warmup`` steps of each run are not timed; medians.

``samplers CKPT``: the same trained model (a ``lightning fit`` checkpoint of ``Diffusion``) draws
``--samples`` images with DDIM in ``--ddim-steps`` steps (eta 0) and with DDPM's ancestral sampler in all
T steps, with the same seeds and the model's guidance; prints the wall time of each, the speed ratio,
and the FID and KID of each against the validation images in the default feature net's space (the
one ``SampleQuality`` uses for the embedded scenes).

    python benchmarks/diffusion.py step
    python benchmarks/diffusion.py samplers runs/ddpm/version_0/checkpoints/last.ckpt --samples 500

Prints Markdown tables (paste them into benchmarks/RESULTS.md).
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from _common import bench_trainer, print_step_table
from gan import StepTimer, Timed
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_seq.callbacks.quality import default_feature_net, load_feature_net
from lightning_seq.checkpointing import load_module, read_checkpoint
from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.decoding.diffusion import NoiseSchedule
from lightning_seq.modules import Diffusion
from lightning_seq.nets import UNet

LR, DECAY, DROPOUT, T = 2e-4, 0.995, 0.1, 1000


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=LR)


def plain_loop(net: UNet, dm: ImageDataModule, steps: int, warmup: int) -> float:
    """A hand-written loop over the same DataModule's loader and batch transform; ms per step."""
    net.train()
    ema = copy.deepcopy(net).requires_grad_(False)
    schedule, optimizer = NoiseSchedule("linear", T), adam(net.parameters())
    abar = schedule.alphas_cumprod
    timed, batches = Timed(warmup), iter(dm.train_dataloader())
    for step in range(steps):
        batch = dm.transform(next(batches), train=True)
        x0, labels = batch["image"], batch["label"]  # (B, C, H, W) in [-1, 1], (B,)
        t = torch.randint(0, T, (x0.shape[0],))
        noise = torch.randn_like(x0)
        labels = torch.where(torch.rand(x0.shape[0]) < DROPOUT, net.null_label, labels)
        a = abar[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, labels), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            rate = 1.0 - min(DECAY, (2 + step) / (11 + step))  # the module's warm-up, after step + 1 steps
            torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), rate)
        float(loss)  # the host reads it, as the NaN guard does
        timed.step_done(step)
    return timed.ms()


def lightning_loop(net: UNet, dm: ImageDataModule, steps: int, warmup: int) -> float:
    """Our Diffusion module + Trainer on the same data; ms per step."""
    model = Diffusion(net, conditional=True, num_classes=dm.num_classes, label_dropout=DROPOUT,
                      ema_decay=DECAY, optimizer=adam)  # fmt: skip
    timer = StepTimer(warmup)
    bench_trainer(steps, timer, clip_val=None).fit(model, dm)
    return timer.timed.ms()


def step(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    dm = ImageDataModule(
        image_size=args.image_size, pixels="symmetric", labels="class", channels=3, batch_size=args.batch,
        num_workers=args.workers, object_size=(0.5, 0.85), augment=ImageAugment(crop_scale=None, hflip=True),
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    net = UNet(preset=args.preset, image_size=args.image_size, in_channels=3, num_classes=dm.num_classes)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
        ours.append(lightning_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
    side, threads = args.image_size, torch.get_num_threads()
    setup = f"UNet {args.preset}, {side}x{side} RGB, batch {args.batch}, {args.workers} worker"
    setup += f", {threads} threads"
    print_step_table(setup, "Diffusion", plain, ours, args.batch)


def samplers(args: argparse.Namespace) -> None:
    model = load_module(args.checkpoint)
    saved = read_checkpoint(args.checkpoint)["datamodule_hyper_parameters"]
    data = ImageDataModule(**{key: value for key, value in saved.items() if not key.startswith("_")})
    data.prepare_data()
    data.setup("validate")
    features = load_feature_net(default_feature_net(data))
    fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
    kid = KernelInceptionDistance(feature=features, subsets=50, subset_size=min(250, args.samples),
                                  reset_real_features=False)  # fmt: skip
    for batch in data.val_dataloader():
        images = data.to_unit(data.on_after_batch_transfer(batch, 0)["image"]).float()
        with features.remembering():
            fid.update(images, real=True)
            kid.update(images, real=True)
    total = model.schedule.timesteps
    print(f"| sampler | steps | seconds for {args.samples} | FID | KID |")
    print("|---|---|---|---|---|")
    results = {}
    for sampler, steps in (("ddim", args.ddim_steps), ("ddpm", total)):
        start = time.perf_counter()
        for k, first in enumerate(range(0, args.samples, args.batch)):
            n = min(args.batch, args.samples - first)
            generator = torch.Generator().manual_seed(k)
            options = {"steps": steps} if sampler == "ddim" else {}
            images = model.sample(n, generator=generator, sampler=sampler, **options)
            with features.remembering():
                unit = data.to_unit(images).float()
                fid.update(unit, real=False)
                kid.update(unit, real=False)
        seconds = time.perf_counter() - start
        torch.manual_seed(0)
        scores = float(fid.compute()), float(kid.compute()[0])
        fid.reset()
        kid.reset()
        results[sampler] = seconds
        print(f"| {sampler} | {steps} | {seconds:.1f} | {scores[0]:.2f} | {scores[1]:.3f} |")
    print(f"\nDDIM-{args.ddim_steps} is {results['ddpm'] / results['ddim']:.1f}x faster than DDPM-{total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    timing = sub.add_parser("step", help="training step: plain loop vs Diffusion + Trainer")
    timing.add_argument("--preset", default="small", help="UNet preset: nano, small, ddpm-cifar10")
    timing.add_argument("--batch", type=int, default=64)
    timing.add_argument("--image-size", type=int, default=16, help="the recipes' 16, or 32")
    timing.add_argument("--workers", type=int, default=1, help="DataLoader workers (the recipes use 1)")
    timing.add_argument("--steps", type=int, default=60)
    timing.add_argument("--warmup", type=int, default=10)
    timing.add_argument("--rounds", type=int, default=3)
    sampling = sub.add_parser("samplers", help="DDIM vs DDPM on one trained model: speed, FID, KID")
    sampling.add_argument("checkpoint")
    sampling.add_argument("--samples", type=int, default=500)
    sampling.add_argument("--batch", type=int, default=250)
    sampling.add_argument("--ddim-steps", type=int, default=50)
    args = parser.parse_args()
    step(args) if args.command == "step" else samplers(args)


if __name__ == "__main__":
    main()

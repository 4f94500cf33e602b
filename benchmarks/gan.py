"""GAN training step: a hand-written PyTorch loop vs our GAN module + Trainer (manual optimisation).

Both sides train fresh copies of one initial ``DCGAN`` (``--preset``, ``small`` by default: the nets of
recipes/dcgan.yaml) on the embedded 32x32 colour shapes, unlabelled, through the same ImageDataModule
(PIL decoding in worker processes, horizontal flips, pixels in [-1, 1]). One step is what the recipe
does: one generator forward; a discriminator update on the real batch and the detached fakes
(non-saturating BCE); a generator update through the discriminator's scores of the same fakes (the
discriminator's weights frozen, as ``toggle_optimizer`` does); Adam 2e-4, betas (0.5, 0.999), one per
net; the generator's moving average (decay 0.999 with the module's warm-up). The plain loop draws its
latents with ``torch.randn``; the module draws them per item (``data.pixels.item_normals``, what makes
DDP and resume exact), and steps the two constant schedules. No gradient clipping (the recipe has
none); the Trainer side has the NaN/Inf guard that ``lightning fit`` adds. The sides alternate in
rounds inside one process, so machine noise hits both; the first ``--warmup`` steps of each run are
not timed; medians.

    python benchmarks/gan.py
    python benchmarks/gan.py --preset nano --batch 128

Prints a Markdown table (paste it into benchmarks/RESULTS.md).
"""

import argparse
import copy
import time

import lightning as L
import torch
import torch.nn.functional as F
from _common import bench_trainer, print_step_table

from lightning_seq.data import ImageAugment, ImageDataModule
from lightning_seq.modules import GAN
from lightning_seq.nets import DCGAN


def adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


class Timed:
    """Wall time per step from the end of step ``warmup - 1`` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def step_done(self, step: int) -> None:  # ``step``: the index of the step just finished
        if step == self.warmup - 1:
            self.start = time.perf_counter()
        elif step >= self.warmup:
            self.steps += 1

    def ms(self) -> float:
        return 1e3 * (time.perf_counter() - self.start) / self.steps


def plain_loop(net: DCGAN, dm: ImageDataModule, steps: int, warmup: int, decay: float = 0.999) -> float:
    """A hand-written loop over the same DataModule's loader and batch transform; ms per step."""
    g, d = net.generator.train(), net.discriminator.train()
    ema = copy.deepcopy(g).requires_grad_(False)
    g_opt, d_opt = adam(g.parameters()), adam(d.parameters())
    timed, batches = Timed(warmup), iter(dm.train_dataloader())
    for step in range(steps):
        real = dm.transform(next(batches), train=True)["image"]
        fake = g(torch.randn(real.shape[0], net.latent_size))
        g.requires_grad_(False)  # the discriminator's update
        real_scores, fake_scores = d(real), d(fake.detach())
        loss_d = F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores))
        loss_d = loss_d + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores))
        d_opt.zero_grad(set_to_none=True)
        loss_d.backward()
        d_opt.step()
        g.requires_grad_(True)  # the generator's update
        d.requires_grad_(False)
        scores = d(fake)
        loss_g = F.binary_cross_entropy_with_logits(scores, torch.ones_like(scores))
        g_opt.zero_grad(set_to_none=True)
        loss_g.backward()
        g_opt.step()
        d.requires_grad_(True)
        with torch.no_grad():
            rate = 1.0 - min(decay, (2 + step) / (11 + step))  # the module's warm-up, after step + 1 steps
            torch._foreach_lerp_(list(ema.parameters()), list(g.parameters()), rate)
            for mine, theirs in zip(ema.buffers(), g.buffers(), strict=True):
                mine.copy_(theirs)
        float(loss_d), float(loss_g)  # the host reads both, as logging does
        timed.step_done(step)
    return timed.ms()


class StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.timed = Timed(warmup)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timed.step_done(trainer.global_step - 1)


def lightning_loop(net: DCGAN, dm: ImageDataModule, steps: int, warmup: int) -> float:
    """Our GAN module + Trainer on the same data; ms per (generator) step."""
    model = GAN(net, optimizer=adam, ema_decay=0.999)
    timer = StepTimer(warmup)
    bench_trainer(steps, timer, clip_val=None).fit(model, dm)
    return timer.timed.ms()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", help="DCGAN preset: nano, small, dcgan64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers (the recipes use 1)")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    augment = ImageAugment(crop_scale=None, hflip=True)
    dm = ImageDataModule(
        pixels="symmetric", labels="none", channels=3, batch_size=args.batch, num_workers=args.workers,
        augment=augment,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    net = DCGAN(preset=args.preset, image_size=dm.image_size, in_channels=dm.in_channels)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
        ours.append(lightning_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
    threads = torch.get_num_threads()
    setup = f"DCGAN {args.preset}, 32x32 RGB, batch {args.batch}, {args.workers} workers, {threads} threads"
    print_step_table(setup, "GAN", plain, ours, args.batch)


if __name__ == "__main__":
    main()

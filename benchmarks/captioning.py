"""Captioning: the training step against a hand-written loop, and batched beam search against the
one-image-at-a-time beam loop of the captioning tutorials.

``step``: both sides train fresh copies of one initial ``ShowAttendTell`` (``--preset``, ``small`` by
default: the net of recipes/caption.yaml) on the embedded caption scenes through the same
CaptionDataModule (batches of ``--batch`` images with one caption each, normalised on the host). One
step: the teacher-forced cross entropy over the real tokens, the doubly stochastic attention penalty
(lambda 0.01), an AdamW step (lr 2e-3, constant) and gradient clipping at 5 (the recipe's); the
Trainer side also has the NaN/Inf guard that ``lightning fit`` adds, and the plain loop reads the loss
on the host as that guard does. The sides alternate in rounds inside one process; the first
``--warmup`` steps of each run are not timed; medians.

``beam CKPT``: a trained captioner (a ``lightning fit`` checkpoint, e.g. of recipes/caption.yaml)
captions ``--images`` validation images with beam search (``--beams`` beams, no length penalty, at most
the checkpoint's ``max_new_tokens``): once through the shared library, batched over images and beams
(one decoder call per time step for all of them), and once with the loop of the tutorials: one image
at a time, its ``k`` beams batched, finished beams set aside until ``k`` have finished. Prints both wall
times, the speed-up and whether the captions are identical.

    python benchmarks/captioning.py step
    python benchmarks/captioning.py beam runs/caption/version_0/checkpoints/last.ckpt --images 64

Prints Markdown tables (paste them into benchmarks/RESULTS.md).
"""

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from _common import bench_trainer, print_step_table
from gan import StepTimer, Timed

from lightning_seq.checkpointing import load_module, read_checkpoint
from lightning_seq.data import CaptionDataModule
from lightning_seq.decoding import GenerationConfig, select_state
from lightning_seq.modules import Captioner
from lightning_seq.nets import ShowAttendTell

LR, PENALTY, CLIP = 2e-3, 0.01, 5.0


def adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.01)


def plain_loop(net: ShowAttendTell, dm: CaptionDataModule, steps: int, warmup: int) -> float:
    """A hand-written loop over the same DataModule's loader and batch transform; ms per step."""
    net.train()
    optimizer, pad = adamw(net.parameters()), dm.pad_id
    timed, batches = Timed(warmup), iter(dm.train_dataloader())
    for step in range(steps):
        batch = dm.on_after_batch_transfer(next(batches), 0)
        images, captions = batch["images"], batch["captions"]  # (B, C, H, W), (B, T + 1)
        targets = captions[:, 1:]
        logits, attention = net(images, captions[:, :-1])  # (B, T, V), (B, T, L)
        real = targets != pad
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=pad)
        coverage = (attention * real[..., None]).sum(dim=1)  # (B, L)
        loss = loss + PENALTY * (1 - coverage).square().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
        optimizer.step()
        float(loss)  # the host reads it, as the NaN guard does
        timed.step_done(step)
    return timed.ms()


def lightning_loop(net: ShowAttendTell, dm: CaptionDataModule, steps: int, warmup: int) -> float:
    """Our Captioner module + Trainer on the same data; ms per step."""
    model = Captioner(net, attention_penalty=PENALTY, pad_id=dm.pad_id, bos_id=dm.bos_id, eos_id=dm.eos_id,
                      optimizer=adamw, warmup_steps=0, lr_schedule="constant")  # fmt: skip
    timer = StepTimer(warmup)
    bench_trainer(steps, timer, clip_val=CLIP).fit(model, dm)
    return timer.timed.ms()


def step(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    dm = CaptionDataModule(batch_size=args.batch, num_workers=args.workers)
    dm.prepare_data()
    dm.setup("fit")
    net = ShowAttendTell(
        preset=args.preset, vocab_size=dm.vocab_size, image_size=dm.image_size, in_channels=3
    )
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
        ours.append(lightning_loop(copy.deepcopy(net), dm, args.steps, args.warmup))
    setup = f"ShowAttendTell {args.preset}, 32x32 scenes, batch {args.batch}, {args.workers} worker"
    print_step_table(f"{setup}, {torch.get_num_threads()} threads", "Captioner", plain, ours, args.batch)


@torch.no_grad()
def beam_one_image_at_a_time(model: Captioner, image: torch.Tensor, k: int, max_len: int) -> list[int]:
    """The tutorials' beam search: one image, its ``k`` beams in a batch; a beam that emits EOS is set aside
    and the batch shrinks, until ``k`` beams have finished or ``max_len`` tokens; the best by total
    log-probability."""
    net = model.net
    state = net.start(net.encode(image[None]))  # one row; expanded to the beams after the first step
    tokens = torch.full((1, 1), model.bos_id, dtype=torch.long)
    scores, sequences = torch.zeros(1), [[]]
    done: list[tuple[float, list[int]]] = []
    for _ in range(max_len):
        logits, state = net.decode(tokens, state)  # (n, 1, V)
        log_probs = scores[:, None] + logits[:, -1].float().log_softmax(-1)  # (n, V)
        top = log_probs.flatten().topk(k - len(done))
        parents, words = top.indices // log_probs.size(1), top.indices % log_probs.size(1)
        sequences = [sequences[p] + [w] for p, w in zip(parents.tolist(), words.tolist(), strict=True)]
        finished = words == model.eos_id
        done += [
            (float(v), seq) for v, seq, f in zip(top.values, sequences, finished.tolist(), strict=True) if f
        ]
        if len(done) >= k or finished.all():
            break
        alive = (~finished).nonzero().squeeze(1)
        state = select_state(state, parents[alive])
        sequences = [sequences[i] for i in alive.tolist()]
        scores, tokens = top.values[alive], words[alive][:, None]
    done += [(float(v), seq) for v, seq in zip(scores.tolist(), sequences, strict=True)] if not done else []
    return max(done, key=lambda d: d[0])[1]


def beam(args: argparse.Namespace) -> None:
    model = load_module(args.checkpoint)
    saved = read_checkpoint(args.checkpoint, need=("datamodule_hyper_parameters",))[
        "datamodule_hyper_parameters"
    ]
    data = CaptionDataModule(**{key: value for key, value in saved.items() if not key.startswith("_")})
    data.prepare_data()
    data.setup("validate")
    images = []
    for batch in data.val_dataloader():
        images.append(data.on_after_batch_transfer(batch, 0)["images"])
        if sum(len(i) for i in images) >= args.images:
            break
    images = torch.cat(images)[: args.images]
    max_len = model.generation.max_new_tokens
    config = GenerationConfig(
        strategy="beam", num_beams=args.beams, length_penalty=0.0, max_new_tokens=max_len
    )
    model.caption_tokens(images[:2], config)  # warm-up
    start = time.perf_counter()
    batched = model.detokenize(model.caption_tokens(images, config)[0])
    ours = time.perf_counter() - start
    start = time.perf_counter()
    with model.evaluating():
        rows = [beam_one_image_at_a_time(model, image, args.beams, max_len) for image in images]
    loop = time.perf_counter() - start
    longest = max(len(r) for r in rows)
    tokens = torch.tensor([r + [model.eos_id] * (longest - len(r)) for r in rows])
    one_by_one = model.detokenize(tokens)
    same = sum(a == b for a, b in zip(batched, one_by_one, strict=True))
    print(f"| beam search, {args.beams} beams, {args.images} images | seconds | images/s |")
    print("|---|---|---|")
    print(f"| one image at a time (tutorial loop) | {loop:.2f} | {args.images / loop:.1f} |")
    print(f"| batched over images and beams (ours) | {ours:.2f} | {args.images / ours:.1f} |")
    print(f"\nspeed-up {loop / ours:.1f}x; identical captions: {same} of {args.images}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step", help="training step: module + Trainer vs a plain loop")
    s.add_argument("--preset", default="small")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--steps", type=int, default=40)
    s.add_argument("--warmup", type=int, default=8)
    s.add_argument("--rounds", type=int, default=3)
    b = sub.add_parser("beam", help="batched beam search vs one image at a time")
    b.add_argument("checkpoint")
    b.add_argument("--images", type=int, default=64)
    b.add_argument("--beams", type=int, default=5)
    args = parser.parse_args()
    step(args) if args.command == "step" else beam(args)


if __name__ == "__main__":
    main()

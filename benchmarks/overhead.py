"""Framework overhead: the same LSTM LM on the same data, a plain PyTorch loop vs our module + Trainer.

Both sides train a fresh copy of one initial network (2x512 LSTM, batch 32, BPTT 64 by default) on
the same cached character stream, with the same math per step: forward with the carried hidden
state, cross entropy, backward, gradient-norm clipping at 1.0, AdamW and the warmup+cosine schedule.
They run alternately in rounds inside one process, so machine noise hits both; the first steps of
each run are warm-up and not timed. Also measured: time from launching ``lightning fit`` on the main
recipe (warm tokenizer cache) to its first training step.

    python benchmarks/overhead.py --corpus ../shared/data/tinyshakespeare.txt

Prints a Markdown table (paste it into benchmarks/RESULTS.md).
"""

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from _common import bench_trainer, plain_optimization

from lightning_seq.data import TextDataModule
from lightning_seq.decoding import detach_state
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM

REPO = Path(__file__).resolve().parents[1]


class StepTimer(L.Callback):
    """Wall time of training steps after ``warmup`` steps (data loading included)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.end, self.steps = time.perf_counter(), batch_idx + 1 - self.warmup


def adamw(lr: float):
    """The optimizer both sides use (weight decay 0.01 on weight matrices only, as the module sets up)."""
    return lambda params: torch.optim.AdamW(params, lr=lr)


def plain_loop(net: torch.nn.Module, dm: TextDataModule, steps: int, warmup: int, lr: float) -> float:
    """A hand-written training loop; returns seconds per step after warm-up."""
    opt, sched = plain_optimization(net, adamw(lr), steps, 10, 0.1)
    net.train()
    state, start = None, None
    for i, batch in enumerate(dm.train_dataloader()):
        if i == warmup:
            start = time.perf_counter()
        if i == steps:
            break
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits, state = net(inputs, state)
        state = detach_state(state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / (steps - warmup)


def lightning_loop(net: torch.nn.Module, dm: TextDataModule, steps: int, warmup: int, lr: float) -> float:
    """Our LanguageModel + Trainer on the same data; returns seconds per step after warm-up."""
    model = LanguageModel(net, optimizer=adamw(lr), warmup_steps=10, min_lr_ratio=0.1, carry_state=True)
    timer = StepTimer(warmup)
    bench_trainer(steps, timer).fit(model, dm)
    return (timer.end - timer.start) / timer.steps


def time_to_first_step() -> float:
    """Seconds from launching ``lightning fit`` on recipes/char_lstm.yaml to its first training step."""
    with tempfile.TemporaryDirectory() as cwd:
        marker = Path(cwd) / "first_step"
        spec = {"class_path": "benchmarks.overhead.FirstStep", "init_args": {"path": str(marker)}}
        callback = json.dumps(spec)
        args = ["fit", "--config", str(REPO / "recipes" / "char_lstm.yaml"), "--trainer.max_steps=1",
                f"--trainer.callbacks+={callback}", "--trainer.enable_progress_bar=false"]  # fmt: skip
        path = os.pathsep.join([str(REPO), str(REPO / "benchmarks")])  # benchmarks.overhead imports _common
        env = {**os.environ, "PYTHONPATH": path, "WANDB_MODE": "offline"}
        subprocess.run([sys.executable, "-m", "lightning_seq", *args], cwd=cwd, env=env, check=True,
                       capture_output=True)  # warm the cache  # fmt: skip
        start = time.time()
        subprocess.run([sys.executable, "-m", "lightning_seq", *args], cwd=cwd, env=env, check=True,
                       capture_output=True)  # fmt: skip
        return float(marker.read_text()) - start


class FirstStep(L.Callback):
    """Writes the wall-clock time of the first training step to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            Path(self.path).write_text(str(time.time()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None, help="text file (default: the embedded corpus)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    torch.manual_seed(0)
    dm = TextDataModule(source=args.corpus, batch_size=args.batch, block_size=args.bptt)
    dm.setup("fit")
    net = RNNLM(dm.vocab_size, "lstm", args.hidden, args.hidden, args.layers, dropout=0.0)
    plain, ours = [], []
    for _ in range(args.rounds):
        plain.append(plain_loop(copy.deepcopy(net), dm, args.steps, args.warmup, 2e-3))
        ours.append(lightning_loop(copy.deepcopy(net), dm, args.steps, args.warmup, 2e-3))
    p, o = statistics.median(plain), statistics.median(ours)
    first = time_to_first_step()

    size = f"{args.layers}x{args.hidden} LSTM, batch {args.batch}, bptt {args.bptt}, vocab {dm.vocab_size}"
    print("| setup | plain PyTorch ms/step | LanguageModel + Trainer ms/step | ratio |\n|---|---|---|---|")
    print(f"| {size}, {torch.get_num_threads()} threads | {1e3 * p:.1f} | {1e3 * o:.1f} | {o / p:.3f} |")
    rounds = ", ".join(f"{1e3 * a:.1f}/{1e3 * b:.1f}" for a, b in zip(plain, ours, strict=True))
    print(f"\nrounds (plain / ours, ms): {rounds}")
    print(f"time to first training step of recipes/char_lstm.yaml (warm cache): {first:.1f} s")


if __name__ == "__main__":
    main()

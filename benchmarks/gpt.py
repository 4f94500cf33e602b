"""GPT benchmarks: framework overhead, KV-cache generation, and linear vs softmax attention.

Three measurements, each side by side in one process (``--only`` picks some):

* ``overhead``: the reference char-level GPT (4 layers, 4 heads, width 128, context 64, batch 12,
  dropout 0) trains on the same cached character windows with the same math per step (cross
  entropy, backward, gradient-norm clipping at 1.0, AdamW with betas 0.9/0.99 and weight decay 0.1
  on weight matrices, warmup + cosine) in a plain PyTorch loop and through ``LanguageModel`` +
  ``Trainer``, alternately in rounds; the first steps of each run are not timed.
* ``generation``: 512 new tokens, greedy, from the same net, decoding through the KV cache vs
  recomputing the whole prefix at every step (the tokens must be identical).
* ``attention``: one causal attention layer (width 128, 4 heads), forward + backward at sequence
  lengths 1k to 8k: time (median of repeats) and the peak memory that the pass's tensors hold (from
  the profiler's allocation log; a fresh process per case), for softmax attention (fused
  ``scaled_dot_product_attention``, and the explicit N x N reference) and linear attention (elu + 1
  feature map, chunked prefix sums).

    python benchmarks/gpt.py --corpus ../shared/data/tinyshakespeare.txt

Prints Markdown tables (paste them into benchmarks/RESULTS.md).
"""

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import bench_trainer, median_seconds, plain_optimization
from overhead import StepTimer

from lightning_seq.data import TextDataModule
from lightning_seq.decoding import greedy
from lightning_seq.layers import LinearAttention, MultiHeadAttention
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import TransformerLM

REFERENCE = {"dim": 128, "depth": 4, "heads": 4, "dropout": 0.0}


def adamw(params) -> torch.optim.Optimizer:
    """The reference optimizer: fused AdamW, lr 1e-3, betas (0.9, 0.99), weight decay 0.1 (matrices only)."""
    return torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, fused=True)


# ------------------------------------------------------------------------------------------ overhead
def plain_loop(net: TransformerLM, dm: TextDataModule, steps: int, warmup: int) -> float:
    """A hand-written training loop; returns seconds per step after warm-up."""
    opt, sched = plain_optimization(net, adamw, steps, 100, 0.1)
    net.train()
    start = None
    for i, batch in enumerate(dm.train_dataloader()):
        if i == warmup:
            start = time.perf_counter()
        if i == steps:
            break
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        logits, _ = net(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
    return (time.perf_counter() - start) / (steps - warmup)


def lightning_loop(net: TransformerLM, dm: TextDataModule, steps: int, warmup: int) -> float:
    """Our LanguageModel + Trainer on the same data; returns seconds per step after warm-up."""
    model = LanguageModel(net, optimizer=adamw, warmup_steps=100, min_lr_ratio=0.1)
    timer = StepTimer(warmup)
    bench_trainer(steps, timer).fit(model, dm)
    return (timer.end - timer.start) / timer.steps


def reference_setup(corpus: str | None) -> tuple[TransformerLM, TextDataModule]:
    """The reference net (seeded) and its data: context 64, batch 12, the last 10% held out."""
    dm = TextDataModule(source=corpus, mode="window", block_size=64, batch_size=12, val_fraction=0.1,
                        test_fraction=0.0)  # fmt: skip
    dm.setup("fit")
    torch.manual_seed(0)
    return TransformerLM(dm.vocab_size, **REFERENCE), dm


def overhead(corpus: str | None, steps: int, warmup: int, rounds: int) -> None:
    net, dm = reference_setup(corpus)
    plain, ours = [], []
    for r in range(rounds):  # ABBA order, so that a machine that speeds up or slows down favours neither
        for side in ("plain", "ours") if r % 2 == 0 else ("ours", "plain"):
            if side == "plain":
                plain.append(plain_loop(copy.deepcopy(net), dm, steps, warmup))
            else:
                ours.append(lightning_loop(copy.deepcopy(net), dm, steps, warmup))
    ratio = statistics.median(o / p for p, o in zip(plain, ours, strict=True))
    print("\n| setup | plain PyTorch ms/step | LanguageModel + Trainer ms/step | ratio |\n|---|---|---|---|")
    size = f"GPT 4L/4H/128, context 64, batch 12, vocab {dm.vocab_size}, {torch.get_num_threads()} threads"
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"| {size} | {1e3 * p:.1f} | {1e3 * o:.1f} | {ratio:.3f} |")
    rounds = ", ".join(f"{1e3 * a:.1f}/{1e3 * b:.1f}" for a, b in zip(plain, ours, strict=True))
    print(f"\nrounds (plain / ours, ms): {rounds}; the ratio is the median of the rounds' ratios")


# ---------------------------------------------------------------------------------------- generation
def generation(new_tokens: int, prompt_len: int, repeats: int) -> None:
    torch.manual_seed(0)
    vocab = 69
    cases = []
    for attention in ("softmax", "linear"):
        net = TransformerLM(vocab, **REFERENCE, attention=attention, max_len=prompt_len + new_tokens).eval()
        prompt = torch.randint(vocab, (1, prompt_len))

        def cached(tokens, state, net=net):
            logits, state = net(tokens, state)  # (N, t, V)
            return logits[:, -1], state

        def recompute(tokens, history, net=net):
            history = tokens if history is None else torch.cat([history, tokens], dim=1)  # (N, T)
            logits, _ = net(history)  # the whole prefix, every step
            return logits[:, -1], history

        times = {"cache": [], "recompute": []}
        outputs = {}
        for _ in range(repeats):
            for name, step in (("cache", cached), ("recompute", recompute)):
                start = time.perf_counter()
                outputs[name] = greedy(step, prompt, new_tokens)
                times[name].append(time.perf_counter() - start)
        same = torch.equal(outputs["cache"], outputs["recompute"])
        cache, full = statistics.median(times["cache"]), statistics.median(times["recompute"])
        cases.append((attention, cache, full, same))
    print(f"\n| attention | {new_tokens} tokens, cache or state (s) | recompute prefix (s) | speed-up |"
          " same tokens |\n|---|---|---|---|---|")  # fmt: skip
    for attention, cache, full, same in cases:
        print(f"| {attention} | {cache:.2f} | {full:.2f} | {full / cache:.1f}x | {same} |")


# ----------------------------------------------------------------------------------------- attention
def attention_layer(kind: str) -> torch.nn.Module:
    if kind == "linear":
        return LinearAttention(128, 4)
    layer = MultiHeadAttention(128, 4)
    layer.impl = "explicit" if kind == "softmax-explicit" else "fused"
    return layer


def peak_tensor_bytes(fn) -> int:
    """The most bytes that tensors allocated by ``fn()`` held at once: the profiler's raw log of every
    allocation (+) and free (-), in time order."""
    cpu = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=cpu, profile_memory=True) as prof:
        fn()
    log = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())  # fmt: skip
    held = peak = 0
    for event in log:
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def attention_case(kind: str, n: int, repeats: int) -> dict:
    """Forward + backward of one causal layer at length ``n``: median seconds, and the peak memory that
    the tensors of one pass hold (MiB; measured in a separate profiled pass, not timed).

    Runs in its own process (see :func:`attention`), so one case's allocations cannot touch another's.
    """
    torch.manual_seed(0)
    layer = attention_layer(kind)
    x = torch.randn(1, n, 128, requires_grad=True)

    def step() -> None:
        layer(x, causal=True).sum().backward()

    seconds = median_seconds(step, repeats)
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return {"seconds": seconds, "mib": peak_tensor_bytes(step) / 2**20}


def attention(lengths: list[int], repeats: int) -> None:
    kinds = ("softmax", "softmax-explicit", "linear")
    rows = {}
    for n in lengths:
        for kind in kinds:
            code = f"import json, gpt; print(json.dumps(gpt.attention_case({kind!r}, {n}, {repeats})))"
            out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, check=True,
                                 capture_output=True, text=True).stdout  # fmt: skip
            rows[kind, n] = json.loads(out.strip().splitlines()[-1])
    header = ["N", *(f"{k} ms" for k in kinds), *(f"{k} MiB" for k in kinds)]
    print("\n| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for n in lengths:
        ms = " | ".join(f"{1e3 * rows[k, n]['seconds']:.0f}" for k in kinds)
        mib = " | ".join(f"{rows[k, n]['mib']:.0f}" for k in kinds)
        print(f"| {n} | {ms} | {mib} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None, help="text file (default: the embedded corpus)")
    parser.add_argument("--only", nargs="*", default=["overhead", "generation", "attention"])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--lengths", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if "overhead" in args.only:
        overhead(args.corpus, args.steps, args.warmup, args.rounds)
    if "generation" in args.only:
        generation(args.new_tokens, prompt_len=16, repeats=3)
    if "attention" in args.only:
        attention(args.lengths, repeats=3)


if __name__ == "__main__":
    main()

"""The classic word-level LSTM (recipes/fragments/word_lm_classic.yaml) against pytorch/examples' layout.

Both sides read one pre-tokenized corpus made from ``--corpus``: its lines split on whitespace, the
first 90% of the lines for training, then 5% validation and 5% test, the words of those two that
training never saw replaced by ``<unk>`` (as Penn Treebank is prepared), written as train.txt,
valid.txt and test.txt. Every token is a word or a line end, as in the reference.

**Speed.** The same training step (2x200 LSTM, untied 200-d embeddings, dropout 0.2, BPTT 35 over 20
streams, SGD at lr 20, clipping at 0.25) through our LanguageModel + Trainer, and in a hand-written
loop in the reference's own layout: a sequence-first ``nn.LSTM`` over ``(T, B)`` batches cut as its
``batchify``/``get_batch`` cut them, torch's ``nn.Linear`` out, log-softmax + NLL, and its update
``p -= lr * grad``; and, to tell the layout, the output layer and the framework apart, that loop
driving our batch-first net with torch's ``nn.Linear`` out, then with its own ``OutputLinear``
(:mod:`lightning_seq.layers.output`: the logits in column blocks on CPU). All start from one set
of weights; they run alternately in rounds in this process, the first steps of each run not
timed. All run with malloc keeping freed memory, as the ``lightning`` command sets it
(``--system-malloc``: as the system sets it, for all).

**Quality** (with ``--reference``, the word_language_model folder of a pytorch/examples checkout):
the reference's main.py and ``lightning fit`` with the fragment train one epoch each on the same
files, one after the other, for each of ``--seeds``; their validation perplexities (per the same
tokens), wall times, and means. The reference runs as it ships (glibc's malloc as the system sets
it); ``lightning`` keeps freed memory (:func:`lightning_seq.utils.keep_freed_memory`).

    python benchmarks/word_lm.py --corpus ../shared/data/tinyshakespeare.txt \
        --reference /path/to/examples/word_language_model --seeds 1111 1 2

Prints Markdown tables (paste them into benchmarks/RESULTS.md).
"""

import argparse
import copy
import csv
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import bench_trainer, median_seconds
from overhead import StepTimer
from torch import nn

from lightning_seq.data import TextDataModule, TokenizerConfig
from lightning_seq.decoding import detach_state
from lightning_seq.layers.output import BLOCK, _BlockedLinear, _blocks_help
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM
from lightning_seq.utils import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
NAMES = {
    "reference": "word_language_model/main.py --epochs 1",
    "ours": "word_gru.yaml + word_lm_classic.yaml, 1 epoch",
}
SIZE, LAYERS, DROPOUT, BPTT, BATCH, LR, CLIP = 200, 2, 0.2, 35, 20, 20.0, 0.25


def prepare(corpus: Path, out: Path) -> dict[str, int]:
    """Write train.txt/valid.txt/test.txt (90/5/5% of the lines) to ``out``; tokens per split."""
    lines = corpus.read_text(encoding="utf-8").splitlines()
    cut1, cut2 = int(0.9 * len(lines)), int(0.95 * len(lines))
    splits = {"train": lines[:cut1], "valid": lines[cut1:cut2], "test": lines[cut2:]}
    known = {word for line in splits["train"] for word in line.split()}
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, part in splits.items():
        rows = [" ".join(w if w in known else "<unk>" for w in line.split()) for line in part]
        (out / f"{name}.txt").write_text("".join(f"{row}\n" for row in rows), encoding="utf-8")
        counts[name] = sum(len(row.split()) + 1 for row in rows)  # the words and one <eos> per line
    return counts


class ReferenceLayout(nn.Module):
    """pytorch/examples' RNNModel for an LSTM: sequence-first, log-softmax out; our net's weights."""

    def __init__(self, net: RNNLM):
        super().__init__()
        self.encoder = copy.deepcopy(net.embedding)
        self.decoder = torch_linear(net.out)
        self.drop = nn.Dropout(DROPOUT)
        self.rnn = nn.LSTM(SIZE, SIZE, LAYERS, dropout=DROPOUT)  # batch_first=False
        self.rnn.load_state_dict(net.rnn.rnn.state_dict())

    def forward(self, tokens: torch.Tensor, hidden):
        output, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)  # (T, B, H)
        decoded = self.decoder(self.drop(output)).view(-1, self.decoder.out_features)
        return F.log_softmax(decoded, dim=1), hidden


def torch_linear(layer: nn.Linear) -> nn.Linear:
    """torch's own ``nn.Linear`` with the weights of ``layer`` (ours is an ``OutputLinear``)."""
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    plain.load_state_dict(layer.state_dict())
    return plain


def reference_loop(net: RNNLM, stream: torch.Tensor, steps: int, warmup: int) -> float:
    """The reference's training loop (its batchify, get_batch and update); seconds per step after warm-up."""
    model = ReferenceLayout(net).train()
    nbatch = stream.size(0) // BATCH
    data = stream[: nbatch * BATCH].view(BATCH, -1).t().contiguous()  # (N, B): batchify
    hidden = tuple(torch.zeros(LAYERS, BATCH, SIZE) for _ in range(2))
    start = None
    for step, i in enumerate(range(0, data.size(0) - 1, BPTT)):
        if step == warmup:
            start = time.perf_counter()
        if step == steps:
            break
        seq_len = min(BPTT, len(data) - 1 - i)
        inputs, targets = data[i : i + seq_len], data[i + 1 : i + 1 + seq_len].reshape(-1)  # get_batch
        model.zero_grad()
        hidden = tuple(h.detach() for h in hidden)
        output, hidden = model(inputs, hidden)
        loss = F.nll_loss(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LR)
        loss.item()  # the reference adds it to its running total every step
    return (time.perf_counter() - start) / (steps - warmup)


def net_loop(net: RNNLM, stream: torch.Tensor, steps: int, warmup: int, torch_out: bool = False) -> float:
    """The same loop driving our batch-first net on the same streams, with its own output layer or
    (``torch_out``) torch's ``nn.Linear``; seconds per step."""
    model = copy.deepcopy(net).train()
    if torch_out:
        model.out = torch_linear(model.out)
    nbatch = stream.size(0) // BATCH
    data = stream[: nbatch * BATCH].view(BATCH, -1)  # (B, N): the same streams, batch-first
    state, start = None, None
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        i = step * BPTT
        inputs, targets = data[:, i : i + BPTT], data[:, i + 1 : i + 1 + BPTT]
        model.zero_grad()
        logits, state = model(inputs, detach_state(state) if state is not None else None)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LR)
        loss.item()
    return (time.perf_counter() - start) / (steps - warmup)


def our_loop(net: RNNLM, dm: TextDataModule, steps: int, warmup: int) -> float:
    """LanguageModel + Trainer with the fragment's settings; seconds per step after warm-up."""
    model = LanguageModel(
        copy.deepcopy(net), optimizer=partial(torch.optim.SGD, lr=LR), warmup_steps=0,
        lr_schedule="constant", carry_state=True,
    )  # fmt: skip
    timer = StepTimer(warmup)
    bench_trainer(steps, timer, clip_val=CLIP).fit(model, dm)
    return (timer.end - timer.start) / timer.steps


def speed(data_dir: Path, steps: int, warmup: int, rounds: int) -> None:
    tokenizer = TokenizerConfig(kind="whitespace", vocab_size=None, min_frequency=1)
    dm = TextDataModule(source=str(data_dir), tokenizer=tokenizer, block_size=BPTT, batch_size=BATCH,
                        cache_dir=str(data_dir.parent / "cache"))  # fmt: skip
    dm.setup("fit")
    stream = torch.from_numpy(dm.tokens("train")[:].astype("int64"))
    torch.manual_seed(0)
    net = RNNLM(dm.vocab_size, "lstm", SIZE, SIZE, LAYERS, dropout=DROPOUT, tie_weights=False)
    reference_loop(net, stream, 2 * warmup, warmup)  # the process's first steps are slow (allocator, pages)
    theirs, layout, blocked, ours = [], [], [], []
    for _ in range(rounds):
        theirs.append(reference_loop(net, stream, steps, warmup))
        layout.append(net_loop(net, stream, steps, warmup, torch_out=True))
        blocked.append(net_loop(net, stream, steps, warmup))
        ours.append(our_loop(net, dm, steps, warmup))
    sides = {"reference loop and layout, torch's nn.Linear out": theirs,
             "our net (batch-first), same loop, torch's nn.Linear out": layout,
             "our net, same loop, its OutputLinear": blocked, "LanguageModel + Trainer": ours}  # fmt: skip
    base = statistics.median(theirs)
    setup = f"{LAYERS}x{SIZE} LSTM, bptt {BPTT}, batch {BATCH}, SGD lr {LR:g}, clip {CLIP}"
    timed = f"{steps - warmup} timed steps a run"
    print(f"\nvocabulary {dm.vocab_size} words, {torch.get_num_threads()} threads, {timed}")
    print(f"| {setup} | ms/step (median of {rounds} rounds) | ratio to the reference |\n|---|---|---|")
    for name, times in sides.items():
        print(f"| {name} | {1e3 * statistics.median(times):.1f} | {statistics.median(times) / base:.3f} |")
    runs = ", ".join("/".join(f"{1e3 * x:.1f}" for x in r) for r in zip(*sides.values(), strict=True))
    print(f"\nrounds (the rows above in order, ms): {runs}")


def gemm(rows: int = BPTT * BATCH, repeats: int = 15) -> None:
    """The output layer's forward alone: one GEMM (``F.linear``) against blocks of output columns, for
    the word LSTM's shape at the benchmark's vocabulary and at two sizes that are multiples of 16."""
    print(f"\n| logits of {rows} x {SIZE} -> V | one GEMM (F.linear) | blocks of {BLOCK} columns | "
          "OutputLinear uses |\n|---|---|---|---|")  # fmt: skip
    for vocab in (24_000, 24_033, 24_048):
        x, weight, bias = torch.randn(rows, SIZE), torch.randn(vocab, SIZE), torch.randn(vocab)
        args = (x, weight, bias)
        with torch.no_grad():
            one = median_seconds(partial(F.linear, *args), repeats, warmup=3)
            blocks = median_seconds(partial(_BlockedLinear.apply, *args, BLOCK), repeats, warmup=3)
        used = "blocks" if _blocks_help(x, weight) else "one GEMM"
        print(f"| {vocab:,} | {1e3 * one:.1f} ms | {1e3 * blocks:.1f} ms | {used} |")


def quality(data_dir: Path, reference: Path, work: Path, seeds: list[int]) -> None:
    """For each seed, one epoch of the reference's main.py, then one of our fragment, on the same files."""
    print("\n| one epoch on the same files, seed | val ppl | wall time (whole command) |\n|---|---|---|")
    rows: dict[str, list[tuple[float, float]]] = {"reference": [], "ours": []}
    for seed in seeds:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "main.py", "--data", str(data_dir), "--epochs", "1", "--seed", str(seed),
             "--save", str(work / "ref.pt")],
            cwd=reference, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        ppl = float(re.search(r"end of epoch\s+1 .*valid ppl\s+([\d.]+)", out).group(1))
        rows["reference"].append((ppl, time.perf_counter() - start))

        run = work / f"ours-{seed}"
        run.mkdir()
        env = {**os.environ, "LIGHTNING_SEQ_CACHE": str(run / "cache")}  # tokenized anew, as main.py does
        args = ["fit", "--config", str(REPO / "recipes" / "word_gru.yaml"),
                "--config", str(REPO / "recipes" / "fragments" / "word_lm_classic.yaml"),
                "--config", str(REPO / "recipes" / "fragments" / "csv_only.yaml"),
                f"--data.init_args.source={data_dir}", "--trainer.max_epochs=1", f"--seed_everything={seed}",
                "--trainer.enable_progress_bar=false"]  # fmt: skip
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lightning_seq", *args], cwd=run, env=env, check=True,
                       capture_output=True)  # fmt: skip
        elapsed = time.perf_counter() - start
        with (run / "runs" / "lightning_logs" / "version_0" / "metrics.csv").open() as f:  # csv_only.yaml
            ppl = [float(row["val/ppl"]) for row in csv.DictReader(f) if row.get("val/ppl")][-1]
        rows["ours"].append((ppl, elapsed))
        for name in rows:
            ppl, wall = rows[name][-1]
            print(f"| {NAMES[name]}, seed {seed} | {ppl:.2f} | {wall:.1f} s |")
    for name, values in rows.items():
        ppl, wall = (statistics.mean(v) for v in zip(*values, strict=True))
        print(f"| **{NAMES[name]}, mean of {len(values)}** | **{ppl:.2f}** | **{wall:.1f} s** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a text file, e.g. tinyshakespeare.txt")
    parser.add_argument("--reference", type=Path, help="pytorch/examples' word_language_model folder")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1111], help="quality: one pair of runs each")
    parser.add_argument("--skip-speed", action="store_true", help="only the quality check")
    parser.add_argument("--system-malloc", action="store_true", help="leave glibc's malloc as it is")
    args = parser.parse_args()
    kept = not args.system_malloc and keep_freed_memory()  # for both sides, as `lightning` does
    print(f"malloc: {'freed memory kept (keep_freed_memory)' if kept else 'as the system sets it'}")
    with tempfile.TemporaryDirectory(prefix="word_lm-") as tmp:
        work = Path(tmp)
        counts = prepare(args.corpus, work / "data")
        print(f"tokens (words and line ends): {counts}; perplexities are per token")
        if not args.skip_speed:
            gemm()
            speed(work / "data", args.steps, args.warmup, args.rounds)
        if args.reference is not None:
            quality(work / "data", args.reference, work, args.seeds)


if __name__ == "__main__":
    main()

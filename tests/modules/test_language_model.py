import json
import math
import subprocess
import sys

import lightning as L
import pytest
import torch

from lightning_seq.callbacks import Perplexity
from lightning_seq.data import TextDataModule
from lightning_seq.decoding import GenerationConfig
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM

GREEDY = GenerationConfig(strategy="greedy", max_new_tokens=40)


def make(corpus_file, carry_state=True, **net_kwargs):
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    net = RNNLM.from_preset("nano", dm.vocab_size, **net_kwargs)
    model = LanguageModel(
        net, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), warmup_steps=10, carry_state=carry_state
    )
    return model, dm


def trainer(tmp_path, max_steps, **kwargs):
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


def test_tiny_lm_learns_the_corpus(tmp_path, corpus_file):
    L.seed_everything(0)
    model, dm = make(corpus_file)
    t = trainer(tmp_path, 250, callbacks=[Perplexity()], enable_checkpointing=False)
    t.fit(model, dm)
    untrained = torch.log(torch.tensor(float(dm.vocab_size)))
    val_loss = t.callback_metrics["val/loss"].item()
    assert val_loss < 0.6, f"val loss {val_loss:.3f} nats/char after 250 steps (uniform: {untrained:.2f})"
    # val/loss averages batch means; val/ppl weights every token alike (the last batch is shorter)
    assert t.callback_metrics["val/ppl"].item() == pytest.approx(math.exp(val_loss), rel=0.02)
    assert (
        "the cat sat on the mat" in model.generate("the cat", GREEDY)[0]
        or "the dog ran" in model.generate("the dog", GREEDY)[0]
    )


def two_batches(corpus_file, carry_state: bool):
    """An untrained model in eval mode and the first two stream-mode batches."""
    model, dm = make(corpus_file, carry_state=carry_state)
    model.eval()
    dm.setup("fit")
    first, second = list(dm.train_dataloader())[:2]
    return model, first, second


def test_carried_state_equals_one_long_sequence(corpus_file):
    model, first, second = two_batches(corpus_file, carry_state=True)
    with torch.no_grad():
        model._step(first, "val")
        carried = model._step(second, "val")["nll_sum"]
        whole = torch.cat([first, second[:, 1:]], dim=1)  # (B, 2T + 1)
        logits, _ = model(whole[:, :-1])
        nll = torch.nn.functional.cross_entropy(
            logits[:, 32:].flatten(0, 1), whole[:, 33:].flatten(), reduction="sum"
        )
    assert carried == pytest.approx(nll.item(), rel=1e-5)
    model.on_validation_epoch_start()  # a new epoch starts from a zero state
    assert "val" not in model._carried


def test_without_carry_each_batch_starts_from_zero(corpus_file):
    model, first, second = two_batches(corpus_file, carry_state=False)
    with torch.no_grad():
        model._step(first, "val")
        after_first = model._step(second, "val")["nll_sum"]
        fresh = model._step(second, "val")["nll_sum"]
    assert after_first == fresh


def test_checkpoint_reloads_in_a_fresh_process_with_identical_greedy_text(tmp_path, corpus_file):
    L.seed_everything(0)
    model, dm = make(corpus_file)
    t = trainer(tmp_path, 60, limit_val_batches=2)
    t.fit(model, dm)
    ckpt = tmp_path / "model.ckpt"
    t.save_checkpoint(ckpt)
    expected = model.generate(["the ", "the dog"], GREEDY)

    # Everything in the checkpoint loads without unpickling code.
    state = torch.load(ckpt, weights_only=True)
    assert "tokenizer" in state and "net" not in state["hyper_parameters"]  # built in Python: net not stored
    script = f"""
import json, torch
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM
from lightning_seq.decoding import GenerationConfig
net = RNNLM.from_preset("nano", {dm.vocab_size})
model = LanguageModel.load_from_checkpoint({str(ckpt)!r}, net=net)
print(json.dumps(model.generate(["the ", "the dog"], GenerationConfig(strategy="greedy", max_new_tokens=40))))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_generate_needs_a_tokenizer():
    model = LanguageModel(RNNLM.from_preset("nano", 10))
    with pytest.raises(Exception, match="needs a tokenizer"):
        model.generate("x")
    tokens = model.generate_tokens(torch.tensor([[1, 2, 3]]), GREEDY)
    assert tokens.shape == (1, 40)


def test_weight_decay_groups_skip_biases_and_embeddings(corpus_file):
    from lightning_seq.modules._optim import param_groups

    model, _ = make(corpus_file, tie_weights=True)
    decay, no_decay = param_groups(model)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.net.embedding.weight) not in decayed  # tied with the output: listed once, not decayed
    assert all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

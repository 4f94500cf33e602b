"""Perplexity: token-weighted perplexity, bits per token and bits per character, checked against the model."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lightning_seq.callbacks import Perplexity, TokenNLL
from lightning_seq.data import TextDataModule, TokenizerConfig
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM


def make(corpus_file, block_size=100, tokenizer=None):
    """A tiny LSTM LM on the corpus in stream mode. The char val split has 1741 tokens: 217 per stream,
    so block_size=100 gives val batches of 100, 100 and 17 positions per row (uneven token counts)."""
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=block_size, tokenizer=tokenizer)
    net = RNNLM.from_preset("nano", dm.vocab_size)
    model = LanguageModel(
        net, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), warmup_steps=0, carry_state=dm.carry_state
    )
    return model, dm


def make_trainer(tmp_path, callbacks=None, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks or [Perplexity()],
        **kwargs,
    )  # fmt: skip


@torch.no_grad()
def per_batch_nll(model: LanguageModel, loader) -> list[tuple[float, int]]:
    """(summed NLL in nats, scored tokens) of each batch, computed straight from the net, the recurrent
    state carried from batch to batch as in stream mode."""
    model.eval()
    state, sums = None, []
    for batch in loader:
        logits, state = model.net(batch[:, :-1], state)  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1).double(), batch[:, 1:].flatten(), reduction="sum")
        sums.append((nll.item(), batch[:, 1:].numel()))
    return sums


def test_token_nll_weights_every_token_alike():
    metric = TokenNLL()
    metric.update(torch.tensor(10.0), torch.tensor(10))  # 1 nat per token
    metric.update(torch.tensor(1.0), torch.tensor(100))  # 0.01 nat per token
    assert metric.compute().item() == pytest.approx(11 / 110)
    metric.reset()
    assert metric.nll_sum.item() == 0.0 and metric.tokens.item() == 0


def test_val_ppl_is_exp_of_total_nll_over_total_tokens(tmp_path, corpus_file):
    L.seed_everything(0)
    model, dm = make(corpus_file)
    # Sanity-check batches run first; they must not leak into the epoch's sums.
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=30, num_sanity_val_steps=2)
    trainer.fit(model, dm)
    logged = trainer.callback_metrics

    batches = per_batch_nll(model, dm.val_dataloader())
    assert sorted({n for _, n in batches}) == [17 * 8, 100 * 8]  # uneven batches
    nll = sum(s for s, _ in batches) / sum(n for _, n in batches)
    assert logged["val/ppl"].item() == pytest.approx(math.exp(nll), rel=1e-5)

    mean_of_batch_ppl = sum(math.exp(s / n) for s, n in batches) / len(batches)
    # the mean of per-batch perplexities is another number, far outside the tolerance above
    assert abs(mean_of_batch_ppl - math.exp(nll)) > 1e-3 * math.exp(nll)

    assert logged["val/bpt"].item() == pytest.approx(nll / math.log(2), rel=1e-5)
    assert logged["val/bpt"].item() == pytest.approx(math.log2(logged["val/ppl"].item()), rel=1e-5)
    assert dm.chars_per_token("val") == pytest.approx(1.0)  # char tokenizer
    assert logged["val/bpc"].item() == pytest.approx(logged["val/bpt"].item() / dm.chars_per_token("val"))


def test_a_second_validation_describes_the_current_model_alone(tmp_path, corpus_file):
    model, dm = make(corpus_file)
    trainer = make_trainer(tmp_path)
    first = trainer.validate(model, dm, verbose=False)[0]["val/ppl"]
    with torch.no_grad():
        model.net.out.bias[0] += 3.0  # another model: the next result must describe it alone
    second = trainer.validate(model, dm, verbose=False)[0]["val/ppl"]
    batches = per_batch_nll(model, dm.val_dataloader())
    expected = math.exp(sum(s for s, _ in batches) / sum(n for _, n in batches))
    assert second == pytest.approx(expected, rel=1e-5)
    assert abs(second - first) > 1e-3 * first


def test_bits_per_character_with_bpe_tokens(tmp_path, corpus_file):
    # Named split files; the val text mixes the corpus with words BPE never saw, so its characters per
    # token differ from the other splits' and bpc must use the val split's own ratio.
    source = tmp_path / "data"
    source.mkdir()
    lines = corpus_file.read_text().splitlines()
    (source / "train.txt").write_text("\n".join(lines) + "\n")
    (source / "valid.txt").write_text("\n".join(lines[:40] + ["zebra quokka 4711 yak jinx"] * 40) + "\n")
    (source / "test.txt").write_text("\n".join(lines[:80]) + "\n")
    model, dm = make(source, block_size=32, tokenizer=TokenizerConfig(kind="bpe", vocab_size=300))
    metrics = make_trainer(tmp_path).validate(model, dm, verbose=False)[0]
    chars_per_token = dm.chars_per_token("val")
    assert chars_per_token > 1.5  # BPE merges characters
    assert abs(chars_per_token - dm.chars_per_token("train")) > 0.2
    batches = per_batch_nll(model, dm.val_dataloader())
    bpt = sum(s for s, _ in batches) / sum(n for _, n in batches) / math.log(2)
    assert metrics["val/bpt"] == pytest.approx(bpt, rel=1e-5)
    assert metrics["val/bpc"] == pytest.approx(bpt / chars_per_token, rel=1e-5)
    assert metrics["val/bpc"] < metrics["val/bpt"]


def test_no_bits_per_character_without_a_datamodule_or_when_off(tmp_path, corpus_file):
    model, dm = make(corpus_file)
    metrics = make_trainer(tmp_path).validate(model, dataloaders=dm.val_dataloader(), verbose=False)[0]
    assert {"val/ppl", "val/bpt"} <= metrics.keys() and "val/bpc" not in metrics
    metrics = make_trainer(tmp_path, [Perplexity(bits_per_char=False)]).validate(model, dm, verbose=False)[0]
    assert "val/bpc" not in metrics


def test_test_ppl_is_logged_by_trainer_test(tmp_path, corpus_file):
    model, dm = make(corpus_file, block_size=32)
    metrics = make_trainer(tmp_path).test(model, dm, verbose=False)[0]
    batches = per_batch_nll(model, dm.test_dataloader())
    nll = sum(s for s, _ in batches) / sum(n for _, n in batches)
    assert metrics["test/ppl"] == pytest.approx(math.exp(nll), rel=1e-5)
    assert metrics["test/bpt"] == pytest.approx(nll / math.log(2), rel=1e-5)
    assert metrics["test/bpc"] == pytest.approx(metrics["test/bpt"] / dm.chars_per_token("test"), rel=1e-5)
    assert not any(name.startswith("val/") for name in metrics)


class LossOnly(LanguageModel):
    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")["loss"]


def test_a_step_that_returns_only_a_loss_gets_a_clear_error(tmp_path, corpus_file):
    _, dm = make(corpus_file)
    model = LossOnly(RNNLM.from_preset("nano", dm.vocab_size))
    with pytest.raises(
        InputError, match=r"module's val step must return a dict with 'nll_sum' and 'num_tokens'"
    ):
        make_trainer(tmp_path).validate(model, dm, verbose=False)

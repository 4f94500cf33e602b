"""Seq2Seq: it learns the embedded translation task, its loss follows the equation, validation decodes
and scores, and a checkpoint translates identically in a fresh process."""

import json

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from clitools import run_python
from trainers import quiet_trainer

from lightning_seq.data import ParallelTextDataModule
from lightning_seq.decoding import GenerationConfig
from lightning_seq.errors import InputError
from lightning_seq.modules import Seq2Seq
from lightning_seq.nets import RNNLM, RNNSeq2Seq, TransformerSeq2Seq

SMALL = {"train_size": 3000, "val_size": 128, "test_size": 128, "batch_size": 32}
SOURCES = ["three hundred forty-two", "seven", "nineteen thousand nine hundred ninety-nine"]
GREEDY = GenerationConfig(strategy="greedy", max_new_tokens=10)


def make(net_class=TransformerSeq2Seq, **kwargs) -> tuple[Seq2Seq, ParallelTextDataModule]:
    dm = ParallelTextDataModule(**SMALL)
    net = net_class.from_preset("nano", dm.src_vocab_size, dm.tgt_vocab_size)
    model = Seq2Seq(
        net, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), warmup_steps=10, bleu_tokenize="char",
        pad_id=dm.pad_id, bos_id=dm.bos_id, eos_id=dm.eos_id, **kwargs,
    )  # fmt: skip
    return model, dm


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Seq2Seq, ParallelTextDataModule, L.Trainer]:
    """The tiny Transformer after 150 steps on the number words (a model that has learned a little)."""
    L.seed_everything(0)
    model, dm = make(decode_val_batches=2)
    run = quiet_trainer(
        tmp_path_factory.mktemp("seq2seq"),
        max_steps=150,
        val_check_interval=150,
        check_val_every_n_epoch=None,
        limit_val_batches=2,
    )
    run.fit(model, dm)
    return model, dm, run


def test_tiny_transformer_learns_the_number_words(trained):
    model, _, run = trained
    loss = run.callback_metrics["val/loss"].item()
    # uniform guessing over 14 target tokens: ln 14 = 2.64 nats; before the attention has learnt to
    # align, the loss sits on a plateau near 2.2 (digit frequencies alone); label smoothing costs ~0.4
    assert loss < 1.5, f"val/loss {loss:.3f} after 150 steps; expected < 1.5"
    metrics = run.callback_metrics
    for name in ("val/bleu4", "val/chrf", "val/exact_match"):
        assert 0.0 <= metrics[name].item() <= 1.0, name
    assert metrics["val/chrf"].item() > 0.2  # digits start to come out right
    assert model.generation.strategy == "beam" and model.generation.max_new_tokens == 7 + 8  # 6 digits + EOS


def test_validation_scores_are_those_of_the_decoded_text(trained, tmp_path):
    model, dm, _ = trained
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    hypotheses = model.detokenize(model.translate_tokens(batch["src"]))
    references = model.detokenize(batch["tgt"][:, 1:])
    assert all(r.isdigit() for r in references) and len(hypotheses) == len(references)
    exact = sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)
    result = quiet_trainer(tmp_path, limit_val_batches=1).validate(model, dm, verbose=False)[0]
    assert result["val/exact_match"] == pytest.approx(exact)
    assert model.translate(SOURCES) == model.detokenize(model.translate_tokens(model.encode_sources(SOURCES)))


def test_loss_is_label_smoothed_cross_entropy_over_real_tokens():
    model = Seq2Seq(TransformerSeq2Seq.from_preset("nano", 9, 7), label_smoothing=0.1, pad_id=0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[4, 5, 3, 0], [6, 3, 0, 0]])  # two padding targets in row 0, ...
    loss_sum, count = model.compute_loss(logits, targets)
    log_p = F.log_softmax(logits, -1)
    real = targets != 0
    nll = -log_p.gather(-1, targets[..., None])[..., 0]  # (B, T)
    smooth = -log_p.mean(-1)  # (B, T): the uniform part
    expected = ((0.9 * nll + 0.1 * smooth) * real).sum()
    assert count.item() == 5
    assert loss_sum.item() == pytest.approx(expected.item(), rel=1e-5)


def test_checkpoint_translates_identically_in_a_fresh_process(trained, tmp_path):
    model, dm, run = trained
    ckpt = tmp_path / "model.ckpt"
    run.save_checkpoint(ckpt)
    expected = model.translate(SOURCES, GREEDY)
    state = torch.load(ckpt, weights_only=True)  # loads without unpickling code
    assert {"src_tokenizer", "tgt_tokenizer", "generation"} <= state.keys()
    script = f"""
        import json
        from lightning_seq.decoding import GenerationConfig
        from lightning_seq.modules import Seq2Seq
        from lightning_seq.nets import TransformerSeq2Seq
        net = TransformerSeq2Seq.from_preset("nano", {dm.src_vocab_size}, {dm.tgt_vocab_size})
        model = Seq2Seq.load_from_checkpoint({str(ckpt)!r}, net=net)
        greedy = model.translate({SOURCES!r}, GenerationConfig(strategy="greedy", max_new_tokens=10))
        print(json.dumps([greedy, model.translate({SOURCES!r}), model.generation.max_new_tokens]))
    """
    greedy, beam, max_new = json.loads(run_python(script, cwd=tmp_path))
    assert greedy == expected
    assert beam == model.translate(SOURCES)  # the default beam search, sized to the data, is restored
    assert max_new == model.generation.max_new_tokens


def test_rnn_net_trains_and_predicts_through_the_module(tmp_path):
    L.seed_everything(0)
    model, dm = make(RNNSeq2Seq, decode_val_batches=0)
    run = quiet_trainer(tmp_path, max_steps=3, val_check_interval=3, limit_val_batches=1)
    run.fit(model, dm)
    assert "val/loss" in run.callback_metrics and "val/bleu4" not in run.callback_metrics  # no decoding
    dm.inputs = SOURCES
    predictions = run.predict(model, dm)[0]
    assert len(predictions) == len(SOURCES) and all(isinstance(p, str) for p in predictions)
    assert model.generate(SOURCES[:1], GREEDY)[0].startswith(f"{SOURCES[0]} -> ")


def test_bad_settings_are_input_errors():
    net = TransformerSeq2Seq.from_preset("nano", 9, 7)
    with pytest.raises(InputError, match=r"translate needs its tokenizers \(src_tokenizer, tgt_tokenizer\)"):
        Seq2Seq(net).translate(["one"])
    with pytest.raises(InputError, match="is not a seq2seq net"):
        Seq2Seq(RNNLM.from_preset("nano", 9))
    with pytest.raises(InputError, match="decode_val_batches"):
        Seq2Seq(net, decode_val_batches=-1)
    with pytest.raises(InputError, match="label_smoothing"):
        Seq2Seq(net, label_smoothing=1.0)

"""SequenceClassifier and SequenceTagger: they learn the embedded tasks, their losses and metrics follow
their equations (unlabelled tokens left out), and they fine-tune from a language model checkpoint."""

import logging
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.data import LabelledTextDataModule, TextDataModule, TokenizerConfig
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel, SequenceClassifier, SequenceTagger
from lightning_seq.modules.classifier import ENCODER
from lightning_seq.nets import (
    RNNLM,
    RNNClassifier,
    RNNTagger,
    TransformerClassifier,
    TransformerLM,
    TransformerTagger,
)

# the embedded data as the CLI tests read it (one cached copy per task for a test session)
SIZES = {"train_size": 1000, "val_size": 128, "test_size": 64, "max_length": 128}


def trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(max_steps=max_steps, **{**defaults, **kwargs})


def module(cls, net: nn.Module, dm: LabelledTextDataModule, lr: float, **kwargs):
    return cls(
        net, optimizer=lambda p: torch.optim.AdamW(p, lr=lr), warmup_steps=10, classes=dm.classes,
        pad_id=dm.pad_id, **kwargs,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize(
    ("net_cls", "kwargs", "steps", "bound"),
    [(TransformerClassifier, {"pooling": "cls"}, 60, 0.8), (RNNClassifier, {}, 60, 0.85)],
    ids=["transformer-cls", "lstm-last"],
)
def test_classifiers_learn_code_from_prose(net_cls, kwargs, steps, bound, tmp_path):
    torch.manual_seed(0)
    dm = LabelledTextDataModule(task="classify", batch_size=32, **SIZES)
    net = net_cls.from_preset("nano", dm.vocab_size, dm.num_classes, **kwargs)
    model = module(SequenceClassifier, net, dm, lr=1e-2)
    run = trainer(tmp_path, steps, limit_val_batches=4)
    run.fit(model, dm)
    metrics = run.validate(model, dm, verbose=False)[0]
    assert metrics["val/acc"] >= bound, f"val/acc {metrics['val/acc']:.3f} after {steps} steps (chance 0.5)"
    assert metrics["val/f1"] >= bound - 0.05
    assert model.classify(["for key, value in sorted(mapping.items()):"]) == ["code"]


@pytest.mark.parametrize(
    ("net_cls", "kwargs", "steps", "bound"),
    [(RNNTagger, {"bidirectional": True}, 120, 0.9), (TransformerTagger, {}, 80, 0.8)],
    ids=["bilstm", "transformer"],
)
def test_taggers_learn_the_kinds_of_python_tokens(net_cls, kwargs, steps, bound, tmp_path):
    torch.manual_seed(0)
    dm = LabelledTextDataModule(task="tag", batch_size=32, **SIZES)
    net = net_cls.from_preset("nano", dm.vocab_size, dm.num_classes, **kwargs)
    model = module(SequenceTagger, net, dm, lr=1e-2)
    run = trainer(tmp_path, steps, limit_val_batches=4)
    run.fit(model, dm)
    acc = run.validate(model, dm, verbose=False)[0]["val/acc"]
    # "NAME" alone, the most frequent tag, is about 45% of the tokens
    assert acc >= bound, f"token accuracy {acc:.3f} after {steps} steps"


# ------------------------------------------------------------------------- losses and metrics
class Fixed(nn.Module):
    """A 'net' that answers the given logits whatever the tokens."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)
        self.num_classes = logits.shape[-1]

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        return self.logits


def test_the_tagger_leaves_unlabelled_tokens_out_of_loss_and_metrics():
    torch.manual_seed(0)
    labels = torch.tensor([[0, -100, 2, 3, -100, -100], [1, 1, -100, 0, 2, -100]])  # (2, 6)
    logits = torch.randn(2, 6, 4)
    scored = labels != -100
    model = SequenceTagger(Fixed(logits), classes=["a", "b", "c", "d"], label_smoothing=0.1)
    expected = F.cross_entropy(logits[scored], labels[scored], label_smoothing=0.1)
    assert torch.allclose(model.compute_loss(logits, labels), expected)
    noisy = logits.masked_fill(~scored[..., None], 50.0) + 100 * (~scored[..., None]) * torch.randn(2, 6, 4)
    assert torch.allclose(model.compute_loss(noisy, labels), expected)  # unlabelled logits do not count

    model._step({"tokens": torch.ones(2, 6, dtype=torch.long), "labels": labels}, "val")
    pred, true = logits[scored].argmax(-1), labels[scored]
    assert model.metrics["val"]["acc"].compute() == pytest.approx((pred == true).float().mean().item())
    f1s = []
    for k in range(4):  # macro F1 over the classes that occur in the predictions or the labels
        tp, fp, fn = [int(((pred == k) & (true == k)).sum()), int(((pred == k) & (true != k)).sum()),
                      int(((pred != k) & (true == k)).sum())]  # fmt: skip
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    assert model.metrics["val"]["f1"].compute() == pytest.approx(sum(f1s) / len(f1s))


def test_classifier_loss_is_the_label_smoothed_cross_entropy():
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    model = SequenceClassifier(Fixed(logits), classes=["x", "y", "z"], label_smoothing=0.2)
    targets = F.one_hot(labels, 3).float() * 0.8 + 0.2 / 3
    expected = -(targets * F.log_softmax(logits, -1)).sum(-1).mean()
    assert torch.allclose(model.compute_loss(logits, labels), expected, atol=1e-6)


def test_predictions_name_the_classes():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    classifier = SequenceClassifier(Fixed(logits), classes=["code", "prose"])
    batch = {"tokens": torch.ones(2, 3, dtype=torch.long), "text": ["x = 1", "Some words."]}
    rows = classifier.predict_step({**batch, "labels": torch.tensor([0, 0])}, 0)
    expected = [("x = 1", "code", "code"), ("Some words.", "prose", "code")]
    assert [(r["text"], r["pred"], r["label"]) for r in rows] == expected
    assert rows[0]["prob"] == pytest.approx(torch.softmax(logits[0], -1)[0].item(), abs=1e-4)

    tag_logits = F.one_hot(torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]]), 3).float()  # (2, 4, 3)
    tagger = SequenceTagger(Fixed(tag_logits), classes=["NAME", "OP", "NUMBER"])
    word_mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    rows = tagger.predict_step({"tokens": torch.ones(2, 4, dtype=torch.long), "word_mask": word_mask,
                                "words": [["x", "+=", "10"], ["3"]]}, 0)  # fmt: skip
    assert rows == [
        {"words": ["x", "+=", "10"], "tags": ["NAME", "OP", "NUMBER"]},
        {"words": ["3"], "tags": ["NUMBER"]},
    ]


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="label_smoothing"):
        SequenceClassifier(Fixed(torch.zeros(1, 2)), label_smoothing=1.0)
    with pytest.raises(InputError, match="number of classes is unknown"):
        SequenceTagger(nn.Identity())
    with pytest.raises(InputError, match="needs a tokenizer"):
        SequenceClassifier(Fixed(torch.zeros(1, 2))).classify("text")
    with pytest.raises(InputError, match=r"no checkpoint at .*Fix: train a language model first"):
        SequenceClassifier(Fixed(torch.zeros(1, 2))).init_encoder(tmp_path / "lm.ckpt")


# ---------------------------------------------------------------------------------- fine-tuning
LANGUAGE_MODELS = {"transformer": (TransformerLM, TransformerClassifier), "lstm": (RNNLM, RNNClassifier)}


@pytest.fixture(scope="module")
def animals(tmp_path_factory) -> Path:
    """A folder with a corpus for the language models and labelled lines in the same characters."""
    folder = tmp_path_factory.mktemp("animals")
    cat, dog = "the cat sat on the mat number {}.", "the dog ran to the park {} times."
    lines = [(cat if i % 2 else dog).format(i % 7) for i in range(600)]
    (folder / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [f"{line},{'cat' if 'cat' in line else 'dog'}" for line in lines[:200]]
    (folder / "animals.csv").write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def language_models(animals) -> dict[str, tuple[Path, LanguageModel]]:
    """A tiny Transformer and a tiny LSTM language model trained for a few steps: checkpoint, model."""
    out = {}
    for family, (lm_cls, _) in LANGUAGE_MODELS.items():
        torch.manual_seed(0)
        dm = TextDataModule(source=str(animals / "corpus.txt"), batch_size=8, block_size=32)
        lm = LanguageModel(
            lm_cls.from_preset("nano", dm.vocab_size), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)
        )
        run = trainer(animals / family, 5, limit_val_batches=1)
        run.fit(lm, dm)
        run.save_checkpoint(animals / f"{family}.ckpt")
        out[family] = animals / f"{family}.ckpt", lm
    return out


def animals_data(checkpoint: Path, animals: Path) -> LabelledTextDataModule:
    """The labelled lines, tokenized with the language model's tokenizer."""
    return LabelledTextDataModule(
        task="classify", source=str(animals / "animals.csv"), tokenizer=TokenizerConfig(kind=str(checkpoint)),
        batch_size=16,
    )  # fmt: skip


class EncoderAtStart(L.Callback):
    """Records the net's weights when training starts (after the module's setup)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights = {k: v.clone() for k, v in pl_module.net.state_dict().items()}


@pytest.mark.parametrize("family", LANGUAGE_MODELS)
def test_fine_tuning_starts_from_the_language_models_encoder(
    family, language_models, animals, tmp_path, caplog
):
    path, lm = language_models[family]
    dm = animals_data(path, animals)
    assert dm.tokenizer.get_vocab() == lm.tokenizer.get_vocab()
    kwargs = {"pooling": "last", "causal": True} if family == "transformer" else {}
    torch.manual_seed(1)
    net = LANGUAGE_MODELS[family][1].from_preset("nano", dm.vocab_size, dm.num_classes, **kwargs)
    model = module(SequenceClassifier, net, dm, lr=1e-2, init_from=str(path))
    start = EncoderAtStart()
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    try:
        trainer(tmp_path, 3, limit_val_batches=1, callbacks=[start]).fit(model, dm)
    finally:
        logger.removeHandler(caplog.handler)

    lm_weights = lm.net.state_dict()
    encoder = [k for k in start.weights if not k.startswith("head.")]
    assert sorted(encoder) == sorted(k for k in lm_weights if k.split(".")[0] in ENCODER)
    for name in encoder:
        assert torch.equal(start.weights[name], lm_weights[name]), name
    n = len(encoder)
    assert f"model.init_from: loaded {n} of {n} encoder tensors of this net from '{path}'" in caplog.text
    trained = model.net.state_dict()
    assert not torch.equal(trained["embedding.weight"], lm_weights["embedding.weight"])  # everything trains
    assert not torch.equal(trained["head.3.weight"], start.weights["head.3.weight"])


def test_fine_tuning_needs_the_language_models_vocabulary_and_family(language_models, animals):
    path, lm = language_models["transformer"]
    own = LabelledTextDataModule(task="classify", **SIZES)  # a character vocabulary of its own
    net = TransformerClassifier.from_preset("nano", own.vocab_size, own.num_classes)
    message = rf"vocabulary of {lm.net.vocab_size} tokens, but this data's tokenizer has {own.vocab_size}\."
    with pytest.raises(InputError, match=rf"{message} Fix: .*tokenizer.kind={path}"):
        SequenceClassifier(net, classes=own.classes).init_encoder(path)

    shared = animals_data(path, animals)
    lstm = RNNClassifier.from_preset("nano", shared.vocab_size, shared.num_classes)  # not a Transformer
    with pytest.raises(InputError, match=r"no encoder weight of .* fits this net"):
        SequenceClassifier(lstm, classes=shared.classes).init_encoder(path)

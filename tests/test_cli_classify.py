"""Text classification and tagging recipes through the command line: fresh processes, the embedded data."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from clitools import (
    CSV_ONLY,
    RECIPES,
    REPO,
    SMOKE,
    assert_one_error,
    metric_columns,
    ok,
    predictions_of,
    run_dir,
    run_python,
)

from lightning_seq.data import TextDataModule
from lightning_seq.modules import LanguageModel
from lightning_seq.modules.classifier import ENCODER
from lightning_seq.nets import TransformerLM

LABELLED_RECIPES = [p for p in RECIPES if "lightning_seq.data.LabelledTextDataModule" in p.read_text()]
CLASSIFY, TAG = str(REPO / "recipes" / "classify.yaml"), str(REPO / "recipes" / "tag.yaml")
# the embedded data as the module tests read it, so that a test session tokenizes it once per task
SMALL = ["--data.init_args.train_size=1000", "--data.init_args.val_size=128", "--data.init_args.test_size=64",
         "--data.init_args.max_length=128"]  # fmt: skip


def test_there_are_two_labelled_text_recipes():
    assert {p.stem for p in LABELLED_RECIPES} == {"classify", "tag"}


@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """A smoke run of each recipe: ``{name: (working folder, last checkpoint)}``."""
    out = {}
    for recipe in (CLASSIFY, TAG):
        name = Path(recipe).stem
        cwd = tmp_path_factory.mktemp(name)
        ok(cli("fit", "--config", recipe, "--config", SMOKE, *SMALL, cwd=cwd))
        out[name] = cwd, run_dir(cwd, name) / "checkpoints" / "last.ckpt"
    return out


@pytest.mark.slow
def test_both_recipes_train_and_log_accuracy_and_f1(trained):
    for name, (cwd, ckpt) in trained.items():
        run = run_dir(cwd, name)
        for file in ("config.yaml", "tokenizer.json", "metrics.csv", "checkpoints/best.ckpt"):
            assert (run / file).is_file(), f"{name}: {file}"
        assert ckpt.is_file()
        assert {"train/loss", "val/loss", "val/acc", "val/f1"} <= metric_columns(run), name
        assert list((cwd / "runs" / "wandb").glob("offline-run-*/run-*.wandb")), f"{name}: no offline W&B run"


@pytest.mark.slow
def test_checkpoints_predict_the_same_in_the_cli_and_in_a_fresh_python_process(trained, cli):
    from_cli = {}
    for name, (cwd, ckpt) in trained.items():
        recipe = CLASSIFY if name == "classify" else TAG
        ok(
            cli(
                "predict", "--config", recipe, "--config", CSV_ONLY, *SMALL, "--ckpt_path", str(ckpt), cwd=cwd
            )
        )
        from_cli[name] = predictions_of(ckpt)
    texts = [row["text"] for row in from_cli["classify"]]
    words = [row["words"] for row in from_cli["tag"]]
    assert len(texts) >= 2 and len(words) >= 2
    script = f"""
        import json
        from lightning_seq.modules import SequenceClassifier, SequenceTagger
        classifier = SequenceClassifier.load_from_checkpoint({str(trained["classify"][1])!r})
        tagger = SequenceTagger.load_from_checkpoint({str(trained["tag"][1])!r})
        print(json.dumps([classifier.classify({texts!r}), tagger.tag({words!r})]))
    """
    classes, tags = json.loads(run_python(script, cwd=trained["classify"][0]))
    assert classes == [row["pred"] for row in from_cli["classify"]] and set(classes) <= {"code", "prose"}
    assert tags == [row["tags"] for row in from_cli["tag"]]
    assert [len(t) for t in tags] == [len(w) for w in words]


def language_model_checkpoint(corpus_file: Path, folder: Path) -> tuple[Path, TransformerLM]:
    """A tiny Transformer language model on a small English corpus, trained for two steps: its checkpoint
    and its net."""
    torch.manual_seed(0)
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    lm = LanguageModel(TransformerLM.from_preset("nano", dm.vocab_size))
    run = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=1, default_root_dir=folder,
    )  # fmt: skip
    run.fit(lm, dm)
    run.save_checkpoint(folder / "lm.ckpt")
    return folder / "lm.ckpt", lm.net


@pytest.mark.slow
def test_fine_tuning_needs_the_language_models_tokenizer_and_then_loads_its_encoder(
    cli, corpus_file, tmp_path
):
    ckpt, lm = language_model_checkpoint(corpus_file, tmp_path)
    args = ["fit", "--config", CLASSIFY, "--config", CSV_ONLY, "--config", SMOKE, *SMALL,
            f"--model.init_args.init_from={ckpt}"]  # fmt: skip
    message = f"vocabulary of {lm.vocab_size} tokens, but this data's tokenizer has"
    assert_one_error(cli(*args, cwd=tmp_path), message, "another vocabulary")
    # the fix the message names, with the language model's shapes (its tiny preset)
    fix = [f"--data.init_args.tokenizer.kind={ckpt}", *(
        f"--model.init_args.net.init_args.{key}={value}"
        for key, value in {"dim": 32, "depth": 2, "heads": 2, "positions": "sinusoidal", "max_len": 256,
                           "pooling": "last", "causal": "true"}.items()
    )]  # fmt: skip
    result = ok(cli(*args, *fix, cwd=tmp_path))
    n = sum(name.split(".")[0] in ENCODER for name in lm.state_dict())
    assert f"model.init_from: loaded {n} of {n} encoder tensors" in result.stderr

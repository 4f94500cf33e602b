"""The translation recipes through the command line: training, prediction from a checkpoint, bad input."""

import json
from pathlib import Path

import pytest
from clitools import (
    CSV_ONLY,
    REPO,
    SMOKE,
    assert_one_error,
    metric_columns,
    ok,
    predictions_of,
    run_dir,
    run_python,
)

TRANSFORMER = str(REPO / "recipes" / "translate.yaml")
RNN = str(REPO / "recipes" / "translate_rnn.yaml")
INPUTS = ["forty-two", "one thousand nine hundred ninety-nine", "seven"]
TRANSLATION_METRICS = {"val/loss", "val/bleu4", "val/chrf", "val/exact_match", "train/loss"}


@pytest.fixture(scope="module")
def transformer_run(cli, tmp_path_factory) -> tuple[Path, Path]:
    """A smoke run of the Transformer recipe (W&B offline included): (working folder, run folder)."""
    cwd = tmp_path_factory.mktemp("translate")
    result = ok(cli("fit", "--config", TRANSFORMER, "--config", SMOKE, cwd=cwd))
    assert "sample 1" in result.stdout and " -> " in result.stdout  # source -> translation, printed
    return cwd, run_dir(cwd, "translate")


@pytest.mark.slow
def test_transformer_recipe_trains_through_the_cli(transformer_run):
    cwd, run = transformer_run
    for name in (
        "config.yaml",
        "tokenizer.json",
        "src_tokenizer.json",
        "metrics.csv",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    assert metric_columns(run) >= TRANSLATION_METRICS
    assert list((cwd / "runs" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"


def test_rnn_recipe_trains_through_the_cli(cli, tmp_path):
    ok(cli("fit", "--config", RNN, "--config", CSV_ONLY, "--config", SMOKE, cwd=tmp_path))
    run = run_dir(tmp_path, "lightning_logs")
    assert metric_columns(run) >= TRANSLATION_METRICS
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_predict_from_the_checkpoint_equals_translate_in_a_fresh_process(transformer_run, cli):
    cwd, run = transformer_run
    ckpt = run / "checkpoints" / "last.ckpt"
    script = f"""
        import json
        from lightning_seq.modules import Seq2Seq
        model = Seq2Seq.load_from_checkpoint({str(ckpt)!r})  # the net's class_path is in the checkpoint
        print(json.dumps(model.translate({INPUTS!r})))
    """
    from_python = json.loads(run_python(script, cwd=cwd))
    assert len(from_python) == len(INPUTS) and all(isinstance(t, str) for t in from_python)

    inputs = f"--data.init_args.inputs={json.dumps(INPUTS)}"
    ok(
        cli(
            "predict",
            "--config",
            TRANSFORMER,
            "--config",
            CSV_ONLY,
            "--ckpt_path",
            str(ckpt),
            inputs,
            cwd=cwd,
        )
    )
    assert predictions_of(ckpt) == from_python


def test_bad_pairs_get_one_clear_error(cli, tmp_path):
    (tmp_path / "three_fields.tsv").write_text("one\t1\nsix\t6\textra\n", encoding="utf-8")
    (tmp_path / "empty_target.tsv").write_text("one\t1\ntwo\t\n", encoding="utf-8")
    cases = {
        "three fields": ("three_fields.tsv", "three_fields.tsv:2: expected 2 tab-separated fields"),
        "empty target": ("empty_target.tsv", "empty target in a pair"),
    }
    for case, (name, message) in cases.items():
        args = [
            "fit",
            "--config",
            TRANSFORMER,
            "--config",
            CSV_ONLY,
            f"--data.init_args.source={tmp_path / name}",
        ]
        assert_one_error(cli(*args, cwd=tmp_path), message, case)

"""The command line, run as users run it: a fresh process per command, real recipes, real files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from clitools import (
    CSV_ONLY,
    DDP,
    RECIPES,
    REPO,
    SMOKE,
    assert_one_error,
    metric_columns,
    ok,
    predictions_of,
    run_dir,
    run_python,
    snapshot,
    two_at_a_time,
)

TEXT_RECIPES = [p for p in RECIPES if "lightning_seq.data.TextDataModule" in p.read_text()]
CHAR_LSTM = str(REPO / "recipes" / "char_lstm.yaml")
QUIET_CHAR_LSTM = ["--config", CHAR_LSTM, "--config", CSV_ONLY]  # char_lstm logging to CSV only
GREEDY = ["--model.init_args.generation.strategy=greedy", "--model.init_args.generation.max_new_tokens=40"]
PROMPTS = ["The ", "def f(x):"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", TEXT_RECIPES, ids=lambda p: p.stem)
def test_every_text_recipe_trains_through_the_cli(recipe, cli, tmp_path):
    result = ok(cli("fit", "--config", str(recipe), "--config", SMOKE, cwd=tmp_path))
    run = run_dir(tmp_path, recipe.stem)
    for name in ("config.yaml", "tokenizer.json", "metrics.csv", "samples.md", "checkpoints/last.ckpt"):
        assert (run / name).is_file(), name
    assert {"train/loss", "val/loss", "val/ppl", "val/bpt", "train/grad_norm"} <= metric_columns(run)
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"
    assert "sample 1" in result.stdout  # the final samples are printed


@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory) -> tuple[Path, Path]:
    """A short char_lstm run through the CLI: (working folder, last checkpoint)."""
    cwd = tmp_path_factory.mktemp("trained")
    ok(cli("fit", *QUIET_CHAR_LSTM, "--config", SMOKE, "--trainer.max_steps=30", cwd=cwd))
    ckpt = cwd / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return cwd, ckpt


def load_and_generate(ckpt: Path, prompts: list[str]) -> list[str]:
    """Greedy text from ``LanguageModel.load_from_checkpoint`` in a fresh process (only the checkpoint)."""
    script = f"""
        import json
        from lightning_seq.decoding import GenerationConfig
        from lightning_seq.modules import LanguageModel
        model = LanguageModel.load_from_checkpoint({str(ckpt)!r})
        config = GenerationConfig(strategy="greedy", max_new_tokens=40)
        print(json.dumps(model.generate({prompts!r}, config)))
    """
    return json.loads(run_python(script, cwd=ckpt.parent))


@pytest.mark.slow
def test_checkpoint_reloads_in_fresh_processes_with_identical_greedy_text(trained, cli):
    cwd, ckpt = trained
    from_python = load_and_generate(ckpt, PROMPTS)
    assert [t[: len(p)] for t, p in zip(from_python, PROMPTS, strict=True)] == PROMPTS
    assert any(len(t) > len(p) for t, p in zip(from_python, PROMPTS, strict=True))

    prompts = f"--data.init_args.prompts={json.dumps(PROMPTS)}"
    args = ["predict", *QUIET_CHAR_LSTM, "--ckpt_path", str(ckpt), prompts, *GREEDY]
    result = ok(cli(*args, cwd=cwd))
    from_cli = predictions_of(ckpt)
    assert from_cli == from_python
    assert "prediction 1" in result.stdout


@pytest.mark.slow
def test_validate_and_test_from_a_checkpoint(trained, cli):
    cwd, ckpt = trained
    for command, metric in (("validate", "val/ppl"), ("test", "test/ppl")):
        result = ok(cli(command, *QUIET_CHAR_LSTM, "--ckpt_path", str(ckpt), cwd=cwd))
        assert metric in result.stdout


def test_help_of_every_entry_point(tmp_path):
    for command in (["lightning"], ["lightning-seq"], [sys.executable, "-m", "lightning_seq"]):
        out = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert all(sub in out.stdout for sub in ("fit", "validate", "test", "predict", "submit"))
        # whole sentences, not the Trainer's docstrings cut after their first line
        text = " ".join(out.stdout.split())
        assert "Score a checkpoint on the test split (--ckpt_path)." in text, out.stdout
        assert "never run on your" not in text and "Useful to" not in text


def test_help_imports_neither_torch_nor_lightning():
    """``lightning --help`` answers from the commands' own text: torch and Lightning (2-3 s of imports on
    two cores) load only when a command runs."""
    code = (
        "import sys; from lightning_seq.commands import main; code = main(['--help']); "
        "print(code, 'torch' in sys.modules, 'lightning' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "0 False False", out.stdout
    assert "lightning-seq fit --help" in out.stdout


def test_the_classic_word_lm_fragment_trains_on_pre_tokenized_split_files(cli, tmp_path):
    """word_gru.yaml + word_lm_classic.yaml on a Penn Treebank-style folder (ptb.train.txt, ...): the tokens
    are the files' words and line ends, the fragment's SGD keeps none of the recipe's AdamW settings (and
    says so), and the plateau schedule's state is in the checkpoint."""
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(200)] + ["<unk>", "N", "@-@", "'s"]
    data = tmp_path / "ptb"
    data.mkdir()
    for split, lines in (("train", 600), ("valid", 60), ("test", 60)):
        rows = [" ".join(rng.choices(words, k=rng.randint(3, 15))) for _ in range(lines)]
        (data / f"ptb.{split}.txt").write_text("".join(f" {row} \n" for row in rows))
    recipe, fragment = (
        str(REPO / "recipes" / n) for n in ("word_gru.yaml", "fragments/word_lm_classic.yaml")
    )
    result = ok(cli(
        "fit", "--config", recipe, "--config", fragment, "--config", CSV_ONLY,
        f"--data.init_args.source={data}", "--trainer.max_epochs=2", "--trainer.enable_progress_bar=false",
        "--model.init_args.net.init_args.hidden_size=32", "--model.init_args.net.init_args.embed_dim=16",
        cwd=tmp_path,
    ))  # fmt: skip
    switched = [line for line in result.stderr.splitlines() if "replaces torch.optim.AdamW" in line]
    assert len(switched) == 1 and "not carried over: weight_decay=0.05." in switched[0], result.stderr[-2000:]
    run = run_dir(tmp_path, "lightning_logs")
    optimizer = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["optimizer"]
    assert optimizer["class_path"] == "torch.optim.SGD"
    assert (optimizer["init_args"]["lr"], optimizer["init_args"]["weight_decay"]) == (20.0, 0.0)
    vocab = json.loads((run / "tokenizer.json").read_text())["model"]["vocab"]
    train_words = set((data / "ptb.train.txt").read_text().split())
    assert set(vocab) == train_words | {"<|pad|>", "<|bos|>", "<|eos|>"}  # the corpus's <unk> is ours
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["lr_schedulers"][0]["factor"] == 0.25 and "best" in checkpoint["lr_schedulers"][0]
    assert "val/ppl" in metric_columns(run)


def test_the_model_summary_leaves_out_flops_that_nothing_counted(cli, tmp_path):
    """Lightning counts FLOPs only for a module with an example_input_array and reports 0 otherwise."""
    result = ok(cli("fit", *QUIET_CHAR_LSTM, "--config", SMOKE, "--trainer.max_steps=1", cwd=tmp_path))
    assert "Total params" in result.stdout and "RNNLM" in result.stdout
    assert "FLOPs" not in result.stdout + result.stderr
    assert "already configured with model summary" not in result.stdout + result.stderr


def test_print_config_resolves_recipes_and_overrides(cli, tmp_path):
    args = ["fit", *QUIET_CHAR_LSTM, "--model.init_args.optimizer.init_args.lr=0.01"]
    config = yaml.safe_load(ok(cli(*args, "--print_config", cwd=tmp_path)).stdout)
    model = config["model"]["init_args"]
    assert model["net"]["class_path"] == "lightning_seq.nets.RNNLM"
    assert model["optimizer"]["init_args"]["lr"] == 0.01
    assert [lg["class_path"] for lg in config["trainer"]["logger"]] == ["lightning_seq.loggers.CSVLogger"]
    assert "vocab_size" not in model["net"]["init_args"]  # linked from the data, never typed


def test_unknown_command_goes_to_lightning_sdk_when_installed(tmp_path):
    # A stand-in for the separate lightning-sdk package: a module and its console-script entry point.
    pkg = tmp_path / "site" / "lightning_sdk" / "cli"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "entrypoint.py").write_text(
        "import sys\ndef main_cli():\n    print('sdk got', sys.argv[1:])\n    return 0\n"
    )
    dist = tmp_path / "site" / "lightning_sdk-0.0.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lightning-sdk\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text(
        "[console_scripts]\nlightning-sdk = lightning_sdk.cli.entrypoint:main_cli\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run(["lightning", "login", "--x"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "sdk got ['login', '--x']" in out.stdout

    without = subprocess.run(["lightning", "login"], capture_output=True, text=True, cwd=tmp_path)
    assert without.returncode == 2
    assert "fit" in without.stdout and "unknown command 'login'" in without.stderr


# --------------------------------------------------------------------------------- bad input
def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9\n".encode("latin-1") * 100)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps({"body": "x" * 40}) for _ in range(100)))
    (tmp_path / "broken.yaml").write_text("model: [\n  unclosed")
    data = "--data.init_args."
    return {  # case: (arguments, what the one error line says)
        "missing file": (
            [f"{data}source=no/such/file.txt"],
            "error: data.source: 'no/such/file.txt' does not",
        ),
        "empty corpus": ([f"{data}source={tmp_path / 'empty.txt'}"], "holds no text"),
        "not UTF-8": ([f"{data}source={latin1}"], "is not UTF-8 text"),
        "missing column": ([f"{data}source={tmp_path / 'rows.jsonl'}"], "has no column 'text'"),
        "block too large": ([f"{data}block_size=100000"], "error: data.block_size"),
        "unknown tokenizer": ([f"{data}tokenizer.kind=sentencepiece"], "error: data.tokenizer.kind"),
        "malformed YAML": (["--config", str(tmp_path / "broken.yaml")], "broken.yaml' is not valid YAML at"),
        "contradicting Trainer settings": (
            ["--trainer.enable_checkpointing=false"],  # the recipe lists a ModelCheckpoint
            "error: trainer.enable_checkpointing: Trainer was configured with `enable_checkpointing=False`",
        ),
        "missing config": (["--config", str(tmp_path / "nope.yaml")], "nope.yaml' does not exist"),
    }


def test_bad_input_gets_one_clear_error_and_nothing_is_lost(trained, cli, tmp_path):
    cwd, _ = trained
    before = snapshot(cwd / "runs")
    cases = bad_inputs(tmp_path)
    results = two_at_a_time(
        lambda args: cli("fit", *QUIET_CHAR_LSTM, *args, cwd=cwd), [a for a, _ in cases.values()]
    )
    for (case, (_, message)), result in zip(cases.items(), results, strict=True):
        assert_one_error(result, message, case)
    assert before.items() <= snapshot(cwd / "runs").items()  # earlier runs and checkpoints untouched


@pytest.mark.slow
def test_two_process_ddp_run_logs_and_samples_without_deadlock(cli, tmp_path):
    result = ok(cli("fit", *QUIET_CHAR_LSTM, "--config", SMOKE, *DDP, cwd=tmp_path, timeout=300))
    run = run_dir(tmp_path, "lightning_logs")
    assert "val/ppl" in metric_columns(run)
    assert result.stdout.count("sample 1") == 1  # rank zero only

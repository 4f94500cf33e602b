"""Bad settings through the real command line: optimizer and schedule values, sizes the data decides,
unknown classes and options, Trainer settings Lightning rejects. Each ends with one ``error:`` line
naming the field and the fix, exit status 2, before any run folder exists. And the progress bar of a
run that ``max_steps`` ends counts steps."""

import re

import pytest
import torch
from clitools import CSV_ONLY, REPO, SMOKE, assert_one_error, ok, snapshot

CHAR_LSTM = ["--config", str(REPO / "recipes" / "char_lstm.yaml"), "--config", CSV_ONLY, "--config", SMOKE]
OPT = "--model.init_args.optimizer.init_args."
NET = "--model.init_args.net.init_args."

CASES = {  # case: (arguments, what the one error line says)
    "negative learning rate": (
        [f"{OPT}lr=-1"],
        "error: model.init_args.optimizer.init_args.lr: torch.optim.AdamW rejects it "
        "(Invalid learning rate: -1.0). Fix: give a learning rate >= 0",
    ),
    "NaN learning rate": (
        [f"{OPT}lr=.nan"],
        "optimizer.init_args.lr: torch.optim.AdamW rejects it (Invalid learning",
    ),
    "beta above 1": (
        [f"{OPT}betas=[1.5, 0.999]"],
        "model.init_args.optimizer.init_args.betas: torch.optim.AdamW rejects it (Invalid beta parameter "
        "at index 0: 1.5). Fix: give two betas in [0, 1)",
    ),
    "negative beta": ([f"{OPT}betas=[0.9, -0.1]"], "(Invalid beta parameter at index 1: -0.1)"),
    "negative eps": ([f"{OPT}eps=-1e-8"], "model.init_args.optimizer.init_args.eps: torch.optim.AdamW"),
    "negative weight decay": ([f"{OPT}weight_decay=-0.1"], "optimizer.init_args.weight_decay: torch.optim"),
    "SGD nesterov without momentum": (
        ["--model.init_args.optimizer=torch.optim.SGD", f"{OPT}lr=0.1", f"{OPT}nesterov=true"],
        "model.init_args.optimizer.init_args.nesterov: torch.optim.SGD rejects it",
    ),
    "learning rate not a number": ([f"{OPT}lr=fast"], "optimizer.init_args.lr: 'fast' is not a number. Fix:"),
    "negative warmup": (["--model.init_args.warmup_steps=-5"], "model.init_args.warmup_steps: expected"),
    "final ratio above 1": (["--model.init_args.min_lr_ratio=2"], "model.init_args.min_lr_ratio: expected"),
    "vocabulary size the data decides": (
        [f"{NET}vocab_size=100"],
        "model.init_args.net.init_args.vocab_size: set to 100 on the command line, but the data decides it "
        "(data.vocab_size is 107). Fix: remove that setting",
    ),
    "padding id the data decides": (["--model.init_args.pad_id=3"], "model.init_args.pad_id: set to 3"),
    "unknown net class": (
        ["--model.init_args.net.class_path=lightning_seq.nets.ViTT"],
        "error: model.init_args.net: no class 'lightning_seq.nets.ViTT'; did you mean "
        "lightning_seq.nets.ViT? Fix: use one of the classes of lightning_seq.nets: DCGAN, RNNLM,",
    ),
    "unknown module in a class_path": (
        ["--model.init_args.net.class_path=lightning_seq.netz.RNNLM"],
        "no class 'lightning_seq.netz.RNNLM'; did you mean lightning_seq.nets.RNNLM?",
    ),
    "unknown trainer option": (
        ["--trainer.max_step=5"],  # not taken for --trainer.max_steps
        "error: --trainer.max_step: no such option; did you mean --trainer.max_steps? Fix:",
    ),
    "unknown model option": (
        ["--model.init_args.lrr=1"],
        "error: model.init_args.lrr: LanguageModel has no option 'lrr'; did you mean optimizer.init_args.lr?",
    ),
    "unknown net option": (
        [f"{NET}hidden_sise=8"],
        "RNNLM has no option 'hidden_sise'; did you mean hidden_size?",
    ),
    "not a choice": (
        ["--model.init_args.lr_schedule=linear"],
        "'linear' is not one of cosine, constant, plateau. Fix:",
    ),
    "not a choice in a dataclass": (
        ["--model.init_args.generation.strategy=beamz"],
        "error: model.init_args.generation.strategy: 'beamz' is not one of greedy, sample, beam. Fix:",
    ),
    "GPU on a machine without one": (
        ["--trainer.accelerator=gpu"],
        "error: trainer.accelerator: No supported gpu",
    ),
    "unknown accelerator": (
        ["--trainer.accelerator=tpuu"],
        "error: trainer.accelerator: You selected an invalid",
    ),
    "unknown strategy": (["--trainer.strategy=bogus"], "error: trainer.strategy: You selected an invalid"),
    "unknown precision": (["--trainer.precision=bogus"], "error: trainer.precision: 'bogus' is not one of"),
    "no devices": (["--trainer.devices=0"], "error: trainer.devices: `Trainer(devices='0')` value is not"),
    "accumulating over no batches": (
        ["--trainer.accumulate_grad_batches=0"],
        "accumulate_grad_batches: expected 1",
    ),
    "validating every 0 epochs": (
        ["--trainer.check_val_every_n_epoch=0"],
        "check_val_every_n_epoch: expected 1",
    ),
    "negative max_steps": (["--trainer.max_steps=-5"], "error: trainer.max_steps: `max_steps` must be"),
    "contradicting Trainer settings": (
        ["--trainer.enable_checkpointing=false"],  # the recipe lists a ModelCheckpoint
        "error: trainer.enable_checkpointing: Trainer was configured with `enable_checkpointing=False`",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_setting_is_one_line_naming_the_field_before_any_run_folder(case, cli, tmp_path):
    if case == "GPU on a machine without one" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, message = CASES[case]
    (tmp_path / "kept.txt").write_text("already here")
    before = snapshot(tmp_path)
    result = cli("fit", *CHAR_LSTM, *args, cwd=tmp_path)
    assert_one_error(result, message, case)
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "Fix:" in error, error
    assert snapshot(tmp_path) == before, "a run folder or file was written"


def test_a_size_set_in_a_recipe_file_is_refused_naming_the_file(cli, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("model:\n  init_args:\n    net:\n      init_args: {vocab_size: 64}\n")
    result = cli("fit", *CHAR_LSTM, "--config", str(recipe), cwd=tmp_path)
    assert_one_error(
        result, f"set to 64 in '{recipe}', but the data decides it (data.vocab_size is", "recipe"
    )
    assert not (tmp_path / "runs").exists()


def test_the_progress_of_a_run_of_steps_counts_steps_in_plain_lines_when_the_output_is_a_file(cli, tmp_path):
    """Standard output to a file (a Slurm job's, a pipe): plain lines, no escape codes, the steps of the
    run counted, the train metrics as they go and the val metrics after each validation."""
    result = ok(cli("fit", *CHAR_LSTM, "--trainer.enable_progress_bar=true", cwd=tmp_path))
    assert re.search(r"^step 4/4 \(epoch 0\) \| train/loss [\d.]+ \|", result.stdout, re.M), result.stdout[
        -2000:
    ]
    assert "/-2" not in result.stdout and "\x1b[" not in result.stdout
    every_step = '--trainer.callbacks+={"class_path": "lightning_seq.callbacks.LineProgress", ' \
        '"init_args": {"every_n_steps": 1}}'  # fmt: skip
    result = ok(cli("fit", *CHAR_LSTM, "--trainer.enable_progress_bar=true", every_step, cwd=tmp_path))
    steps = re.findall(
        r"^step (\d)/4 \(epoch 0\) \| train/loss [\d.]+ \| [\d.]+ it/s \| elapsed", result.stdout, re.M
    )
    assert steps == ["1", "2", "3", "4"], result.stdout[-2000:]  # every step (the last one once)
    assert re.search(r"^validation at step 2: val/bpc [\d.]+, .*val/loss [\d.]+", result.stdout, re.M)

"""Bad input about checkpoints and run folders, through the command line: a checkpoint of another model
than the recipe's, ``--ckpt_path last`` or ``best`` with nothing to take, and what killed runs leave
behind. Each mistake ends with one ``error:`` line and exit status 2, and nothing already written
changes; leftovers of dead runs are removed, and nothing a live process may be using."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from clitools import CSV_ONLY, REPO, SMOKE, assert_one_error, ok, run_dir, snapshot
from filelock import FileLock

from lightning_seq.checkpointing import recipe_of
from lightning_seq.data.cache import build_once
from lightning_seq.runs import RUN_MARKER, hold_run_folder

RESNET_SE, SWIN, GPT, CLASSIFY = (
    str(REPO / "recipes" / f"{name}.yaml") for name in ("resnet_se", "swin", "gpt", "classify")
)
QUICK = ["--config", CSV_ONLY, "--config", SMOKE]  # runs/lightning_logs/version_<n>, a few steps
DATA = [  # a few scenes, no worker processes
    "--data.init_args.num_train=64", "--data.init_args.num_val=32", "--data.init_args.num_test=32",
    "--data.init_args.batch_size=16", "--data.init_args.num_workers=0",
]  # fmt: skip
NET = ["--model.init_args.net.init_args.widths=[4,8,8]", "--model.init_args.net.init_args.depths=[1,1,1]"]
OWN = "or add --model=checkpoint to use the checkpoint's own model in place of the recipe's."
DIES = '''
import os
from lightning.pytorch import Callback


class DieAtTrainStart(Callback):
    """Ends the process at once, as a kill does: once the run folder holds its config, before step 1."""

    def on_train_start(self, trainer, pl_module):
        os._exit(1)
'''


@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory) -> Path:
    """A two-step run of recipes/resnet_se.yaml with a tiny ResNet, logged to runs/lightning_logs/: the
    folder holding ``runs/``."""
    cwd = tmp_path_factory.mktemp("trained")
    ok(cli("fit", "--config", RESNET_SE, *QUICK, *DATA, *NET, "--trainer.max_steps=2", cwd=cwd))
    return cwd


def copy_runs(trained: Path, cwd: Path) -> Path:
    """The trained run's ``runs/`` copied under ``cwd`` (times kept); its last checkpoint there."""
    shutil.copytree(trained / "runs", cwd / "runs")
    return cwd / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def other_model(real: Path, path: Path, module: str, net: str, recipe: list[str] | None) -> Path:
    """``real`` with the model config of another family (as ``lightning fit`` writes it) and the recipe
    ``recipe`` (None: none recorded, as in checkpoints written before recipes were)."""
    state = torch.load(real, weights_only=True)
    callbacks = {key: value for key, value in state["callbacks"].items() if key != "SaveConfig"}
    if recipe is not None:
        callbacks["SaveConfig"] = {"recipe": recipe}
    hparams = {"_class_path": module, "net": {"class_path": net, "init_args": {}}}
    torch.save({**state, "hyper_parameters": hparams, "callbacks": callbacks}, path)
    return path


# ------------------------------------------------------------------------------- another model
def test_a_checkpoint_records_its_recipe(trained):
    state = torch.load(run_dir(trained, "lightning_logs") / "checkpoints" / "last.ckpt", weights_only=True)
    assert recipe_of(state) == [RESNET_SE, CSV_ONLY, SMOKE]
    assert recipe_of({"callbacks": {"RunIdentity": {}}}) is None  # an older checkpoint: none recorded


def test_a_checkpoint_of_another_model_is_refused_naming_both_and_its_recipe(trained, cli, tmp_path):
    real = copy_runs(trained, tmp_path)
    modules, nets = "lightning_seq.modules", "lightning_seq.nets"
    lstm = other_model(real, tmp_path / "lstm.ckpt", f"{modules}.LanguageModel", f"{nets}.RNNLM", None)
    translation = other_model(real, tmp_path / "translate.ckpt", f"{modules}.Seq2Seq",
                              f"{nets}.TransformerSeq2Seq", ["recipes/translate.yaml"])  # fmt: skip
    cases = {
        "an LSTM checkpoint to gpt.yaml": ("predict", GPT, lstm, (
            f"is a checkpoint of LanguageModel with net RNNLM (its recipe is not recorded in it), but {GPT} "
            f"builds LanguageModel with net TransformerLM. Fix: give a checkpoint of LanguageModel with net "
            f"TransformerLM (a run of {GPT}), {OWN}"
        )),
        "a ResNet checkpoint to swin.yaml": ("validate", SWIN, real, (
            f"is a checkpoint of ImageClassifier with net ResNet (trained with {RESNET_SE} + {CSV_ONLY} + "
            f"{SMOKE}), but {SWIN} builds ImageClassifier with net Swin. Fix: give a checkpoint of "
            f"ImageClassifier with net Swin (a run of {SWIN}), {OWN}"
        )),
        "a translation checkpoint to classify.yaml": ("test", CLASSIFY, translation, (
            "is a checkpoint of Seq2Seq with net TransformerSeq2Seq (trained with recipes/translate.yaml), "
            f"but {CLASSIFY} builds SequenceClassifier with net TransformerClassifier."
        )),
    }  # fmt: skip
    before = snapshot(tmp_path)
    for case, (command, recipe, ckpt, message) in cases.items():
        result = cli(command, "--config", recipe, *QUICK, "--ckpt_path", str(ckpt), cwd=tmp_path)
        assert_one_error(result, f"error: --ckpt_path: '{ckpt}' {message}", case)
    assert snapshot(tmp_path) == before


def test_the_checkpoints_own_model_when_asked_for(trained, cli, tmp_path):
    real = copy_runs(trained, tmp_path)
    args = ["validate", "--config", SWIN, *QUICK, *DATA, "--ckpt_path", str(real), "--model=checkpoint"]
    result = ok(cli(*args, cwd=tmp_path))
    assert "val/acc" in result.stdout
    config = yaml.safe_load((run_dir(tmp_path, "lightning_logs") / "config.yaml").read_text())
    assert config["model"]["init_args"]["net"]["class_path"] == "lightning_seq.nets.ResNet"  # not Swin

    before = snapshot(tmp_path)
    for case, extra, given in [
        ("no --ckpt_path", [], "not given"),
        ("last", ["--ckpt_path", "last"], "'last'"),
    ]:
        result = cli("validate", "--config", SWIN, *QUICK, "--model", "checkpoint", *extra, cwd=tmp_path)
        message = (
            "error: --model=checkpoint: takes the model saved in the file that --ckpt_path names, and "
            f"--ckpt_path is {given}. Fix: add --ckpt_path PATH.ckpt, or drop --model=checkpoint"
        )
        assert_one_error(result, message, case)
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- last and best
def test_last_or_best_with_no_checkpoint_stops_every_subcommand(cli, tmp_path):
    for command in ("predict", "validate", "test"):
        result = cli(command, "--config", RESNET_SE, *QUICK, "--ckpt_path", "last", cwd=tmp_path)
        message = (
            "error: --ckpt_path last: no checkpoint at 'runs/lightning_logs/*/checkpoints/last.ckpt'. Fix: "
            "train first (no run under 'runs/lightning_logs' has saved a last.ckpt yet), give the"
        )
        assert_one_error(result, message, command)
    best = cli("validate", "--config", RESNET_SE, *QUICK, "--ckpt_path", "best", cwd=tmp_path)
    message = (
        "error: --ckpt_path best: Lightning's 'best' is the best checkpoint of a fit earlier in the same "
        "process, and `lightning validate` has none. Fix: give the checkpoint's path."
    )
    assert_one_error(best, message, "best")
    assert not (tmp_path / "runs").exists()


def test_last_of_another_model_in_a_shared_folder_is_refused(trained, cli, tmp_path):
    real = copy_runs(trained, tmp_path)  # runs/lightning_logs: shared by every recipe run with csv_only.yaml
    before = snapshot(tmp_path)
    result = cli("validate", "--config", SWIN, *QUICK, "--ckpt_path", "last", cwd=tmp_path)
    newest = real.relative_to(tmp_path)
    message = (
        f"error: --ckpt_path last: the newest last.ckpt, '{newest}', is a checkpoint of ImageClassifier with "
        f"net ResNet (trained with {RESNET_SE} + {CSV_ONLY} + {SMOKE}), but {SWIN} + {CSV_ONLY} + {SMOKE} "
        f"builds ImageClassifier with net Swin. Fix: give a checkpoint of ImageClassifier with net Swin (a "
        f"run of {SWIN} + {CSV_ONLY} + {SMOKE}), or give --ckpt_path '{newest}' --model=checkpoint to use"
    )
    assert_one_error(result, message, "last of another model")
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------------------- leftovers
def test_last_after_a_run_died_says_so_and_only_dead_leftovers_go(trained, cli, tmp_path):
    real = copy_runs(trained, tmp_path / "work")
    cwd, logs = tmp_path / "work", tmp_path / "work" / "runs" / "lightning_logs"
    (tmp_path / "dies.py").write_text(DIES)
    env = {  # a cache of its own, whose one entry is this data's
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "LIGHTNING_SEQ_CACHE": str(tmp_path / "cache"),
    }
    dies = ["--trainer.callbacks+=dies.DieAtTrainStart", "--trainer.num_sanity_val_steps=0"]
    died = cli("fit", "--config", RESNET_SE, *QUICK, *DATA, *NET, *dies, cwd=cwd, env=env)
    assert died.returncode == 1, died.stderr[-2000:]
    assert sorted(p.name for p in (logs / "version_1").iterdir()) == [
        RUN_MARKER,
        "config.yaml",
        "hparams.yaml",
    ]
    live = hold_run_folder(logs / "version_2", "fit")  # a run that is still preparing its data
    (logs / "version_2" / "config.yaml").write_text("trainer: {}\n")
    (logs / "version_3").mkdir()  # a run of an older version: nothing says whether it still runs
    (logs / "version_3" / "config.yaml").write_text("trainer: {}\n")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    killed_save = real.parent / f".last.ckpt.{int(dead.stdout)}.tmp"  # the process is gone
    saving = real.parent / f".last.ckpt.{os.getpid()}.tmp"  # a save of a live process
    killed_save.write_bytes(b"half a checkpoint")
    saving.write_bytes(b"half a checkpoint")
    (entry,) = (p.parent for p in (tmp_path / "cache").glob("images/*/manifest.json"))
    killed_build = entry.parent / f"{entry.name}.k1lled_b"
    killed_build.mkdir()

    try:
        args = ["validate", "--config", RESNET_SE, *QUICK, *DATA, *NET, "--ckpt_path", "last"]
        result = ok(cli(*args, cwd=cwd, env=env))
    finally:
        live.close()
    newer = ", ".join(f"'runs/lightning_logs/version_{n}'" for n in (1, 2, 3))
    said = (
        "--ckpt_path last: using 'runs/lightning_logs/version_0' from its last.ckpt (step 2); the newer runs "
        f"{newer} have no checkpoint."
    )
    assert said in result.stderr.splitlines()
    assert f"Loaded model weights from the checkpoint at {real.relative_to(cwd)}" in result.stderr
    assert "runs/lightning_logs: removed version_1, left by runs that stopped before their first step" in (
        result.stderr
    )
    assert not (logs / "version_1").exists() and (logs / "version_4" / "metrics.csv").is_file()
    assert (logs / "version_2" / "config.yaml").is_file() and (logs / "version_3" / "config.yaml").is_file()
    assert not killed_save.exists() and saving.exists() and real.is_file()
    assert not killed_build.exists() and (entry / "manifest.json").is_file()


def test_a_cache_build_that_was_killed_is_cleared_only_when_no_build_holds_the_lock(tmp_path):
    final = tmp_path / "cache" / "entry"
    assert not build_once(final, lambda folder: (folder / "meta.json").write_text("{}"))
    killed = tmp_path / "cache" / "entry.x7_ab3cd"  # what tempfile.mkdtemp left for a build killed midway
    killed.mkdir()
    (killed / "tokens.bin").write_bytes(b"part")
    other = tmp_path / "cache" / "entry.kept"  # not a build's name: never touched
    other.mkdir()
    with FileLock(str(final) + ".lock"):  # a process building the entry again holds the lock
        assert build_once(final, lambda folder: None) and killed.is_dir()
    assert build_once(final, lambda folder: None)
    assert not killed.exists() and other.is_dir() and (final / "meta.json").is_file()

"""W&B: credentials and the offline fallback, summaries, checkpoints, resuming, the CLI config on the
run, sweeps; real offline runs read back from their files."""

import json
import logging
import random
import re
import time
from pathlib import Path
from typing import ClassVar

import lightning as L
import pytest
import torch
import wandb
import yaml
from clitools import REPO, SMOKE, ok, run_dir
from wandb import wandb_agent
from wandb.sdk.launch.sweeps.utils import load_sweep_config
from wandbfiles import read_wandb_run

from lightning_seq.callbacks import SampleGeneration
from lightning_seq.data import TextDataModule
from lightning_seq.decoding import GenerationConfig
from lightning_seq.loggers import CONFIG_FILE, WandbLogger, summary_of, wandb_credentials_found
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters, the shape of a W&B key


# ------------------------------------------------------------------------------------- credentials
@pytest.fixture
def no_credentials(tmp_path, monkeypatch) -> Path:
    """An empty home and no W&B variables; returns the home folder."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("NETRC", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_no_credentials_in_an_empty_home(no_credentials):
    assert not wandb_credentials_found()


def test_api_key_and_identity_token_count_as_credentials(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    assert wandb_credentials_found()
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_IDENTITY_TOKEN_FILE", str(no_credentials / "token"))
    assert wandb_credentials_found()


@pytest.mark.parametrize(
    ("entry", "base_url", "found"),
    [
        (f"machine api.wandb.ai login user password {API_KEY}", None, True),
        (f"machine github.com login user password {API_KEY}", None, False),  # another host only
        ("machine api.wandb.ai login user", None, False),  # no password: wandb finds no key
        (
            f"machine localhost:8080 login user password {API_KEY}",
            "http://localhost:8080",
            True,
        ),  # `wandb login --host`
        (f"machine api.wandb.ai login user password {API_KEY}", "http://localhost:8080", False),
        (f"garbage machine api.wandb.ai password {API_KEY}", None, False),  # unparsable: no crash
    ],
)
def test_netrc_entries(no_credentials, tmp_path, monkeypatch, entry, base_url, found):
    netrc = tmp_path / "netrc"
    netrc.write_text(entry + "\n")
    monkeypatch.setenv("NETRC", str(netrc))
    if base_url:
        monkeypatch.setenv("WANDB_BASE_URL", base_url)
    assert wandb_credentials_found() is found


def test_netrc_in_the_home_folder(no_credentials):
    (no_credentials / ".netrc").write_text(f"machine api.wandb.ai login user password {API_KEY}\n")
    assert wandb_credentials_found()


# ------------------------------------------------------------------------------ online or offline
@pytest.fixture
def fresh_wandb(tmp_path, monkeypatch):
    """W&B's caches in the test's folder, and a fresh wandb: its process-wide setup reads the
    environment (WANDB_MODE...) once, so it is torn down before and after the test."""
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    wandb.teardown()
    yield
    wandb.teardown()


HINT_LOGGER = "lightning.pytorch.utilities.rank_zero"


def _hints(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == HINT_LOGGER and "wandb sync" in r.getMessage()
    ]


def test_no_credentials_goes_offline_with_a_one_line_hint(no_credentials, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=HINT_LOGGER)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"))
    assert logger._offline and logger._log_model is False
    (hint,) = _hints(caplog)
    assert "\n" not in hint and f"wandb sync {tmp_path / 'runs' / 'wandb'}/offline-run-*" in hint


@pytest.mark.parametrize(
    ("mode", "api_key", "offline_arg", "offline"),
    [
        ("offline", None, None, True),
        ("online", None, None, False),  # the user asked for online: wandb decides (and may ask)
        (None, API_KEY, None, False),
        (None, API_KEY, True, True),
        (None, None, False, False),
    ],
)
def test_mode_and_explicit_argument_take_precedence(
    no_credentials, tmp_path, monkeypatch, caplog, mode, api_key, offline_arg, offline
):
    caplog.set_level(logging.INFO, logger=HINT_LOGGER)
    if mode:
        monkeypatch.setenv("WANDB_MODE", mode)
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    logger = WandbLogger(save_dir=str(tmp_path / "runs"), offline=offline_arg, log_model=True)
    assert logger._offline is offline
    assert logger._log_model is (not offline)  # checkpoints need a server
    assert not _hints(caplog)  # the hint is only for the silent fallback


def test_disabled_mode_stays_disabled(no_credentials, fresh_wandb, tmp_path, monkeypatch, caplog):
    # Offline would make Lightning set WANDB_MODE=dryrun and write a run the user switched off.
    caplog.set_level(logging.INFO, logger=HINT_LOGGER)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    logger = WandbLogger(save_dir=str(tmp_path / "runs"))
    assert not logger._offline and not _hints(caplog)
    run = logger.experiment
    try:
        run.log({"x": 1.0})
        assert run.settings.mode == "disabled"
    finally:
        run.finish()
    assert not list((tmp_path / "runs").rglob("*.wandb"))


def test_checkpoints_are_uploaded_by_default_when_online_only(no_credentials, tmp_path):
    assert WandbLogger(save_dir=str(tmp_path), offline=False)._log_model is True  # best and last, at the end
    assert WandbLogger(save_dir=str(tmp_path), offline=False, log_model="all")._log_model == "all"
    assert WandbLogger(save_dir=str(tmp_path))._log_model is False  # no credentials: offline


@pytest.mark.parametrize(
    ("name", "summary"),
    [
        ("val/loss", "min"), ("test/ppl", "min"), ("val/bpc", "min"), ("val/kl", "min"), ("val/fid", "min"),
        ("val/loss_cls", "min"), ("val/acc", "max"), ("test/acc_top5", "max"), ("val/bleu4", "max"),
        ("val/exact_match", "max"), ("val/f1", "max"),
        ("train/loss", None), ("train/acc", None),  # per-step values: the last one
        ("val/elbo", None), ("val/predictions", None), ("epoch", None), ("loss", None),
    ],
)  # fmt: skip
def test_best_summary_by_metric_name(name, summary):
    assert summary_of(name) == summary


# ------------------------------------------------------------------------------ real offline runs
class LossRecorder(L.Callback):
    """The training loss of every step, as the module returned it."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = outputs["loss"].item()  # global_step already counts this step


def tiny_lm(corpus_file: Path) -> tuple[LanguageModel, TextDataModule]:
    """A tiny LSTM language model and its data, built in Python (no CLI config)."""
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    model = LanguageModel(
        RNNLM.from_preset("nano", dm.vocab_size), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        warmup_steps=3, carry_state=True,
    )  # fmt: skip
    return model, dm


def fit(
    logger: WandbLogger, corpus_file: Path, max_steps: int, ckpt_path: str | None = None, **trainer_args
) -> L.Trainer:
    """Train ``tiny_lm`` on the CPU, logging every step; the W&B run is finished and W&B torn down
    afterwards (see ``_finish``)."""
    model, dm = tiny_lm(corpus_file)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
        limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, **trainer_args,
    )  # fmt: skip
    try:
        trainer.fit(model, dm, ckpt_path=ckpt_path)
    finally:
        _finish(logger)
    return trainer


def _finish(logger: WandbLogger) -> None:
    """Finish the run and wait for W&B's service process to exit: ``finish()`` returns before the service
    has written the run file out (on a loaded machine the file still lacked its records), teardown waits."""
    logger.experiment.finish()
    wandb.teardown()


def test_offline_run_holds_the_losses_samples_and_hyperparameters(
    no_credentials, fresh_wandb, tmp_path, corpus_file, caplog
):
    caplog.set_level(logging.INFO, logger=HINT_LOGGER)
    L.seed_everything(0)
    logger = WandbLogger(save_dir=str(tmp_path), name="t")  # no WANDB_MODE, no credentials: offline
    assert logger._offline and _hints(caplog)
    recorder = LossRecorder()
    samples = SampleGeneration(
        ["the cat"], every_n_steps=5, every_n_epochs=None, print_at_end=False,
        generation=GenerationConfig(strategy="greedy", max_new_tokens=8),
    )  # fmt: skip
    fit(logger, corpus_file, 10, callbacks=[recorder, samples], enable_checkpointing=False)

    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    assert (folder / f"run-{logger.version}.wandb").is_file()
    run = read_wandb_run(folder)
    assert run["exit_code"] == 0

    rows = [row for row in run["history"] if "train/loss" in row]
    assert [row["trainer/global_step"] for row in rows] == list(range(10))
    assert [row["train/loss"] for row in rows] == pytest.approx(
        [recorder.losses[s] for s in range(10)], rel=1e-6
    )
    assert run["summary"]["train/loss"] == pytest.approx(recorder.losses[9], rel=1e-6)  # the last value
    assert "train/loss" not in run["metrics"]  # no summary rule of its own

    # SampleGeneration's table, logged at steps 5 and 10, each time with every sample so far.
    tables = [
        (row["trainer/global_step"], row["samples/text"]) for row in run["history"] if "samples/text" in row
    ]
    assert [step for step, _ in tables] == [5, 10]
    for step, table in tables:
        assert table["_type"] == "table-file" and table["path"] in run["files"]
        content = json.loads((folder / "files" / table["path"]).read_text())
        assert content["columns"] == ["step", "prompt", "text"]
        assert [row[:2] for row in content["data"]] == [[s, "the cat"] for s in (5, 10) if s <= step]
        assert all(text.startswith("the cat") for *_, text in content["data"])

    # No CLI config: the run config is the model's and the data's hyperparameters, as with Lightning.
    assert run["config"]["warmup_steps"] == 3 and run["config"]["lr_schedule"] == "cosine"
    assert run["config"]["block_size"] == 32 and run["config"]["batch_size"] == 8


def _next_second() -> None:
    """Wait for the clock's next second: wandb names offline run folders by their start, to the second."""
    now = time.time()
    time.sleep(1 - now % 1 + 0.01)


def test_two_fits_resume_one_run_id_offline(no_credentials, fresh_wandb, tmp_path, corpus_file):
    save_dir, ckpt = str(tmp_path / "runs"), tmp_path / "first.ckpt"
    logger = WandbLogger(save_dir=save_dir, id="resume01", resume="allow")
    fit(logger, corpus_file, 3, enable_checkpointing=False).save_checkpoint(ckpt)
    _next_second()
    logger = WandbLogger(save_dir=save_dir, id="resume01", resume="allow")  # as a restarted job makes it
    fit(logger, corpus_file, 5, ckpt_path=str(ckpt), enable_checkpointing=False)

    folders = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert [f.name.rsplit("-", 1)[1] for f in folders] == ["resume01", "resume01"]
    runs = [read_wandb_run(f) for f in folders]
    assert [(run["id"], run["resumed"], run["exit_code"]) for run in runs] == [("resume01", True, 0)] * 2
    steps = [[row["trainer/global_step"] for row in run["history"] if "train/loss" in row] for run in runs]
    assert steps == [[0, 1, 2], [3, 4]]  # the second run continues where the first stopped


def test_log_config_sets_the_nested_config_and_keeps_other_hyperparameters(
    no_credentials, fresh_wandb, tmp_path
):
    logger = WandbLogger(save_dir=str(tmp_path))
    config_yaml = "model:\n  init_args:\n    lr: 0.1\n    warmup_steps: 3\n"
    logger.log_config(config_yaml, covered={"lr", "warmup_steps"})
    logger.log_hyperparams({"lr": 0.1, "warmup_steps": 3, "num_params": 1234})  # as the Trainer, plus one
    _finish(logger)
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    run = read_wandb_run(folder)
    assert {k: v for k, v in run["config"].items() if k != "_wandb"} == {
        "model": {"init_args": {"lr": 0.1, "warmup_steps": 3}},
        "num_params": 1234,
    }
    assert (folder / "files" / CONFIG_FILE).read_text() == config_yaml and CONFIG_FILE in run["files"]


# ------------------------------------------------------------------------------ the CLI config on W&B
@pytest.fixture(scope="module")
def cli_run(cli, tmp_path_factory) -> tuple[Path, dict, Path]:
    """A smoke run of recipes/char_lstm.yaml through the CLI: (run folder, W&B run read back, W&B run
    folder)."""
    cwd = tmp_path_factory.mktemp("cli_run")
    ok(cli("fit", "--config", str(REPO / "recipes" / "char_lstm.yaml"), "--config", SMOKE, cwd=cwd))
    (folder,) = (cwd / "runs" / "wandb").glob("offline-run-*")
    return run_dir(cwd, "char_lstm"), read_wandb_run(folder), folder


def test_cli_run_config_is_the_full_resolved_config_nested(cli_run):
    run_folder, run, wandb_folder = cli_run
    config_yaml = (run_folder / "config.yaml").read_text()
    config = {key: value for key, value in run["config"].items() if key != "_wandb"}
    assert config == yaml.safe_load(config_yaml)  # nested as in config.yaml, nothing flat beside it
    assert config["model"]["class_path"] == "lightning_seq.modules.LanguageModel"
    assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.004
    assert config["trainer"]["max_steps"] == 4  # the smoke fragment over the recipe
    assert "warmup_steps" not in config and "net" not in config  # the hyperparameters are not repeated
    # The YAML is a file of the run, named apart from W&B's own config.yaml.
    assert CONFIG_FILE in run["files"]
    assert (wandb_folder / "files" / CONFIG_FILE).read_text() == config_yaml


def test_cli_run_metrics_summaries_and_samples(cli_run):
    _, run, wandb_folder = cli_run
    assert run["exit_code"] == 0
    train = [row for row in run["history"] if "train/loss" in row]
    assert [row["trainer/global_step"] for row in train] == [0, 1, 2, 3]
    val_losses = [row["val/loss"] for row in run["history"] if "val/loss" in row]
    assert len(val_losses) == 2  # val_check_interval 2 over 4 steps
    assert run["metrics"]["val/loss"] == {"step_metric": "trainer/global_step", "summary": {"min"}}
    assert run["metrics"]["val/ppl"]["summary"] == {"min"}
    assert run["summary"]["val/loss"] == {"min": min(val_losses)}
    assert isinstance(run["summary"]["train/loss"], float)  # train metrics keep the last value

    (table,) = [row["samples/text"] for row in run["history"] if "samples/text" in row]  # the final samples
    content = json.loads((wandb_folder / "files" / table["path"]).read_text())
    assert content["columns"] == ["step", "prompt", "text"]
    assert [row[:2] for row in content["data"]] == [[4, "The "], [4, "def "]]


# --------------------------------------------------------------------------------------------- sweeps
SWEEP = REPO / "recipes" / "sweeps" / "char_lstm.yaml"


def sample(parameters: dict, rng: random.Random) -> dict:
    """One value of each sweep parameter (``values``, or ``min``/``max`` with a uniform distribution)."""
    values = {}
    for name, spec in parameters.items():
        if "values" in spec:
            values[name] = rng.choice(spec["values"])
        elif spec.get("distribution") == "log_uniform_values":
            values[name] = spec["min"] * (spec["max"] / spec["min"]) ** rng.random()
        else:
            values[name] = rng.uniform(spec["min"], spec["max"])
    return values


class _ProcessRecorder:
    """Takes the place of the process a W&B agent starts for a trial: records its command instead."""

    commands: ClassVar[list[list[str]]] = []

    def __init__(self, command: list[str] | None = None, **kwargs):
        self.commands.append(command)


def agent_command(sweep: dict, values: dict, tmp_path: Path, monkeypatch) -> list[str]:
    """The command a ``wandb agent`` runs for a trial with ``values``, built by the agent's own code."""
    monkeypatch.setattr(wandb_agent, "AgentProcess", _ProcessRecorder)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # the agent writes the trial's values there
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "")  # set by the agent for the trial; restored afterwards
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="sweep1")
    agent._sweep_command = sweep["command"]  # what Agent.run reads from the sweep on the server
    _ProcessRecorder.commands.clear()
    args = {name: {"value": value} for name, value in values.items()}
    agent._command_run({"type": "run", "run_id": "trial1", "program": sweep["program"], "args": args})
    (command,) = _ProcessRecorder.commands
    return command


def at(config: dict, dotted: str):
    """The value of ``config`` at a dotted LightningCLI name such as ``model.init_args.net``."""
    for key in dotted.split("."):
        config = config[key]
    return config


def test_sweep_agent_command_parses_with_the_swept_values(cli, tmp_path, monkeypatch):
    sweep = load_sweep_config(str(SWEEP))
    assert sweep["metric"] == {"name": "val/loss", "goal": "minimize"} and sweep["method"] in (
        "bayes",
        "random",
    )
    values = sample(sweep["parameters"], random.Random(1))
    recipe = yaml.safe_load((REPO / "recipes" / "char_lstm.yaml").read_text())
    assert all(at(recipe, name) != value for name, value in values.items())  # each override must show
    command = agent_command(sweep, values, tmp_path, monkeypatch)
    assert command[:5] == ["/usr/bin/env", "lightning", "fit", "--config", "recipes/char_lstm.yaml"]

    # `python -m lightning_seq` stands in for the `lightning` program; run from the repository root.
    config = yaml.safe_load(ok(cli(*command[2:], "--print_config", cwd=REPO)).stdout)
    for name, value in values.items():
        assert at(config, name) == value, name


@pytest.mark.parametrize(("user_setting", "wandb_lines"), [({}, False), ({"WANDB_SILENT": "false"}, True)])
def test_offline_wandb_keeps_quiet_unless_the_user_sets_its_verbosity(
    cli, tmp_path, user_setting, wandb_lines
):
    """Offline, W&B's own console lines (where the run is, how to sync it) are silenced; a user who sets
    WANDB_SILENT or WANDB_QUIET gets what they asked for."""
    result = ok(cli("fit", "--config", str(REPO / "recipes" / "char_lstm.yaml"), "--config", SMOKE,
                    "--trainer.max_steps=1", cwd=tmp_path, env=user_setting))  # fmt: skip
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    lines = [line for line in output.splitlines() if line.startswith("wandb:")]
    assert bool(lines) == wandb_lines, lines
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))  # the run is written

"""A nested class switched by a later config file or option gets its own defaults, not the old class's
init_args (jsonargparse carries over those the new class takes), and one line on stderr says so."""

import textwrap

import pytest
import torch
from clitools import CSV_ONLY, SMOKE

from lightning_seq.cli import LightningSeqCLI

RECIPE = """
model:
  class_path: lightning_seq.modules.LanguageModel
  init_args:
    net:
      class_path: lightning_seq.nets.RNNLM
      init_args: {cell: gru, embed_dim: 16, hidden_size: 16, num_layers: 1, dropout: 0.3, tie_weights: true}
    optimizer:
      class_path: torch.optim.AdamW
      init_args: {lr: 0.003, weight_decay: 0.05}
data:
  class_path: lightning_seq.data.TextDataModule
  init_args: {tokenizer: {kind: char}, mode: stream, block_size: 16, batch_size: 4}
"""
SGD_LR_20 = "model:\n  init_args:\n    optimizer: {class_path: torch.optim.SGD, init_args: {lr: 20}}\n"
OPTIMIZER = "model.init_args.optimizer"


class ParseOnly(LightningSeqCLI):
    """The CLI that parses its arguments and builds nothing."""

    def instantiate_classes(self) -> None:
        pass


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    """A small LM recipe whose optimizer is AdamW(lr=0.003, weight_decay=0.05); the cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return write(tmp_path / "recipe.yaml", RECIPE)


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def build(recipe: str, *args: str) -> LightningSeqCLI:
    """The CLI's model and data for ``recipe`` (with the smoke and CSV fragments) and ``args``, untrained."""
    return LightningSeqCLI(
        args=["--config", recipe, "--config", SMOKE, "--config", CSV_ONLY, *args], run=False
    )


def optimizer_settings(cli: LightningSeqCLI) -> tuple[str, dict]:
    """The class of the optimizer the model really builds, and its first param group's settings."""
    optimizer = cli.model.optimizer([torch.nn.Parameter(torch.zeros(1))])
    return type(optimizer).__name__, {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}


def switch_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if " replaces " in line]


@pytest.mark.parametrize(
    "switch",
    [
        ["--model.init_args.optimizer=torch.optim.SGD"],
        ["--model.init_args.optimizer", "torch.optim.SGD"],
        ["--model.init_args.optimizer.class_path=torch.optim.SGD"],
        ["--model.init_args.optimizer=SGD"],  # a short name, as jsonargparse allows
    ],
)
def test_a_switch_on_the_command_line_gives_the_new_class_its_own_defaults(switch, recipe, capsys):
    cli = build(recipe, *switch)
    name, group = optimizer_settings(cli)
    assert name == "SGD" and group["lr"] == 1e-3 and group["weight_decay"] == 0  # SGD's defaults
    assert cli.model.hparams["optimizer"]["init_args"]["weight_decay"] == 0  # what the run saves
    assert switch_lines(capsys) == [
        f"{OPTIMIZER}: torch.optim.SGD (on the command line) replaces torch.optim.AdamW (in '{recipe}'); "
        "not carried over: lr=0.003, weight_decay=0.05. Give them again to keep them."
    ]


def test_sgd_switched_to_adamw_gets_adamws_defaults(recipe, tmp_path, capsys):
    sgd = RECIPE.replace("AdamW", "SGD").replace("lr: 0.003, weight_decay: 0.05", "lr: 20, momentum: 0.9")
    sgd = write(tmp_path / "sgd.yaml", sgd)
    cli = build(sgd, f"--{OPTIMIZER}=torch.optim.AdamW")
    name, group = optimizer_settings(cli)
    assert (
        name == "AdamW" and group["lr"] == 1e-3 and group["weight_decay"] == 0.01 and "momentum" not in group
    )
    assert switch_lines(capsys) == [
        f"{OPTIMIZER}: torch.optim.AdamW (on the command line) replaces torch.optim.SGD (in '{sgd}'); "
        "not carried over: lr=20.0. Give it again to keep it."
    ]


def test_a_switch_in_a_later_config_file_keeps_the_files_own_arguments(recipe, tmp_path, capsys):
    fragment = write(tmp_path / "classic.yaml", SGD_LR_20)
    name, group = optimizer_settings(build(recipe, "--config", fragment))
    assert name == "SGD" and group["lr"] == 20 and group["weight_decay"] == 0
    assert switch_lines(capsys) == [
        f"{OPTIMIZER}: torch.optim.SGD (in '{fragment}') replaces torch.optim.AdamW (in '{recipe}'); "
        "not carried over: weight_decay=0.05. Give it again to keep it."
    ]


@pytest.mark.parametrize(
    "switch",
    [
        [f"--{OPTIMIZER}=SGD", f"--{OPTIMIZER}.init_args.lr=20"],
        [f"--{OPTIMIZER}=SGD", "--model.optimizer.lr=20"],
        [f"--{OPTIMIZER}={{class_path: torch.optim.SGD, init_args: {{lr: 20}}}}"],
    ],
)
def test_arguments_given_with_or_after_the_switch_are_kept(switch, recipe, capsys):
    name, group = optimizer_settings(build(recipe, *switch))
    assert name == "SGD" and group["lr"] == 20 and group["weight_decay"] == 0
    (line,) = switch_lines(capsys)
    assert line.endswith("not carried over: weight_decay=0.05. Give it again to keep it.")


def test_an_argument_set_before_the_switch_is_not_kept(recipe, capsys):
    name, group = optimizer_settings(build(recipe, f"--{OPTIMIZER}.init_args.lr=20", f"--{OPTIMIZER}=SGD"))
    assert name == "SGD" and group["lr"] == 1e-3
    assert switch_lines(capsys)[0].endswith(
        "not carried over: lr=20.0, weight_decay=0.05. Give them again to keep them."
    )


@pytest.mark.parametrize(
    "restated",
    [[f"--{OPTIMIZER}=torch.optim.AdamW"], [f"--{OPTIMIZER}=AdamW"], ["--config", "adamw.yaml"]],
)
def test_the_same_class_restated_is_not_a_switch(restated, recipe, tmp_path, capsys):
    write(tmp_path / "adamw.yaml", SGD_LR_20.replace("SGD", "AdamW").replace("lr: 20", "eps: 1.0e-6"))
    name, group = optimizer_settings(build(recipe, *restated))
    assert name == "AdamW" and group["lr"] == 0.003 and group["weight_decay"] == 0.05
    assert switch_lines(capsys) == []


def test_a_net_switch_gives_the_new_net_its_own_defaults(recipe, capsys):
    net = "--model.init_args.net"
    cli = build(recipe, f"{net}=lightning_seq.nets.TransformerLM", f"{net}.init_args.dim=16")
    hparams = cli.model.hparams["net"]["init_args"]
    assert hparams["dropout"] == 0.1 and hparams["dim"] == 16  # TransformerLM's dropout, not RNNLM's 0.3
    assert switch_lines(capsys) == [
        f"model.init_args.net: lightning_seq.nets.TransformerLM (on the command line) replaces "
        f"lightning_seq.nets.RNNLM (in '{recipe}'); not carried over: dropout=0.3. Give it again to keep it."
    ]  # tie_weights: true is TransformerLM's default, so nothing changes there


NETS = """
from torch import nn


class Wide(nn.Module):
    def __init__(self, size: int = 4, width: int = 3):
        super().__init__()


class Narrow(nn.Module):
    def __init__(self, size: int, width: int = 5):
        super().__init__()
"""


def test_an_argument_the_new_class_requires_is_carried_over_and_said_so(
    recipe, tmp_path, monkeypatch, capsys
):
    (tmp_path / "toy_nets.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    toy = write(
        tmp_path / "toy.yaml",
        "model:\n  init_args:\n    net: {class_path: toy_nets.Wide, init_args: {size: 7, width: 9}}\n",
    )
    cli = ParseOnly(
        args=["--config", recipe, "--config", toy, "--model.init_args.net=toy_nets.Narrow"], run=False
    )
    assert cli.config.model.init_args.net.init_args.as_dict() == {"size": 7, "width": 5}
    assert switch_lines(capsys) == [
        f"model.init_args.net: toy_nets.Narrow (on the command line) replaces toy_nets.Wide (in '{toy}'); "
        "carried over, as Narrow has no default for it: size=7; not carried over: width=9. "
        "Give it again to keep it."
    ]


def test_print_config_shows_what_the_new_class_gets(recipe, capsys):
    with pytest.raises(SystemExit):
        ParseOnly(args=["fit", "--config", recipe, f"--{OPTIMIZER}=SGD", "--print_config"])
    printed = capsys.readouterr()
    assert "      class_path: torch.optim.SGD\n      init_args:\n        lr: 0.001\n" in printed.out
    assert "        weight_decay: 0.0\n" in printed.out
    assert "not carried over: lr=0.003, weight_decay=0.05" in printed.err

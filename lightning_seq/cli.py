"""The command line behind ``lightning``, ``lightning-seq`` and ``python -m lightning_seq`` (their entry
points, and the help they print without importing this module, are in :mod:`lightning_seq.commands`).

One LightningCLI with ``fit``, ``validate``, ``test`` and ``predict``; the model and DataModule are
chosen by ``class_path`` in the recipe. Sizes that the data determines (vocabulary size, padding id,
whether batches continue each other; number and names of classes, image size, channels) are linked
from the DataModule into the model, so recipes never state them. Bad input ends with one ``error:``
line and exit status 2.

``fit`` also settles where the run writes and what it resumes (:mod:`lightning_seq.runs`: a Slurm
job's fixed folder, ``--ckpt_path last``), writes checkpoints atomically, and adds the NaN/Inf guard,
the requeue-on-signal callback and the W&B run id keeper unless the recipe configures them.
``lightning-seq submit`` writes and submits a Slurm batch script (:mod:`lightning_seq.slurm`).
"""

import dataclasses
import difflib
import importlib
import inspect
import json
import logging
import os
import pkgutil
import re
import signal
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, ModelSummary, ProgressBar, WeightAveraging
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from lightning_seq.callbacks.fault_tolerance import (
    EXIT_REQUEUE,
    NonFiniteLoss,
    RequeueOnSignal,
    RequeueRequested,
    RunIdentity,
    listen_for,
)
from lightning_seq.callbacks.progress import LineProgress, NetSummary, StepProgressBar
from lightning_seq.checkpointing import (
    AtomicCheckpointIO,
    checkpoint_class,
    names_a_file,
    net_class,
    read_checkpoint,
    recipe_of,
    same_class,
)
from lightning_seq.errors import InputError
from lightning_seq.help import DESCRIPTION, SUBCOMMAND_HELP, SUBCOMMANDS
from lightning_seq.loggers import SaveConfig
from lightning_seq.modules import NetModule
from lightning_seq.runs import (
    plan_evaluation,
    plan_fit,
    predictions_file,
    remove_leftovers,
    runs_folder,
    slurm_job,
)
from lightning_seq.slurm import check_slurm_tasks, submit
from lightning_seq.utils import keep_freed_memory

# the parser's description: the commands it parses, and submit, which it does not
_PARSER_DESCRIPTION = (
    f"{DESCRIPTION} Commands: fit, validate, test and predict (below; add one and --help for its options), "
    "and submit, which runs a recipe as a Slurm batch job (lightning-seq submit --help)."
)

# DataModule attribute -> model (or net) argument. A link applies only where both ends exist: the
# recipe's DataModule has the attribute (an unlabelled image DataModule has no ``num_classes``) AND the
# recipe's model or net takes the argument (a language model takes no ``eos_id``, an unconditional
# generative model no ``classes``). Every other link is skipped, so one list serves every family.
LINKS = (
    ("data.vocab_size", "model.init_args.net.init_args.vocab_size"),
    ("data.src_vocab_size", "model.init_args.net.init_args.src_vocab_size"),
    ("data.tgt_vocab_size", "model.init_args.net.init_args.tgt_vocab_size"),
    ("data.pad_id", "model.init_args.pad_id"),
    ("data.bos_id", "model.init_args.bos_id"),
    ("data.eos_id", "model.init_args.eos_id"),
    ("data.carry_state", "model.init_args.carry_state"),
    ("data.num_classes", "model.init_args.net.init_args.num_classes"),
    ("data.num_classes", "model.init_args.num_classes"),
    ("data.classes", "model.init_args.classes"),
    ("data.image_size", "model.init_args.net.init_args.image_size"),
    ("data.in_channels", "model.init_args.net.init_args.in_channels"),
    ("data.pixels", "model.init_args.pixels"),
)

# How a user changes a linked size instead, for the message that refuses a setting of one.
_DECIDED_BY = {
    "vocab_size": "to change it, change the data's tokenizer (data.init_args.tokenizer)",
    "src_vocab_size": "to change it, change the data's source tokenizer",
    "tgt_vocab_size": "to change it, change the data's target tokenizer",
    "pad_id": "it follows the tokenizer's special tokens",
    "bos_id": "it follows the tokenizer's special tokens",
    "eos_id": "it follows the tokenizer's special tokens",
    "carry_state": "it follows the data's batching (data.init_args.mode)",
    "num_classes": "it follows the labels in the data",
    "classes": "it follows the labels in the data",
    "image_size": "to change it, set data.init_args.image_size",
    "in_channels": "to change it, set data.init_args.channels",
    "pixels": "to change it, set data.init_args.pixels",
}


class _TargetAwareInstantiator(_InstantiatorFn):
    """Lightning's model instantiator, given only the links whose target the model or its net takes.

    jsonargparse skips a link whose target the chosen classes lack, but still reports it as applied,
    and Lightning then writes its value into the model's saved hyperparameters (which a reload would
    pass to a constructor that does not take it). The links that did apply are kept on the CLI, as
    ``applied_links`` (target -> value).
    """

    def __call__(self, class_type: type, *args, applied_instantiation_links: dict, **kwargs):
        config = self.cli.config.get(str(self.cli.subcommand), self.cli.config)
        taken = {key: value for key, value in applied_instantiation_links.items() if key in config}
        check_linked_settings(taken, self.cli.user_settings)
        self.cli._dump_config()
        saved = self.cli.config_dump.get(self.key, {})
        for key in taken:  # a net whose every argument is linked is dumped without its init_args
            _nested_dict(saved, key.split(".")[1:-1])
        self.cli.applied_links.update(taken)
        model = super().__call__(class_type, *args, applied_instantiation_links=taken, **kwargs)
        if isinstance(model, NetModule):
            model.check_optimizations()  # before the Trainer makes the run folder
        return model


def _nested_dict(root: dict, keys: list[str]) -> None:
    for key in keys:
        root = root.setdefault(key, {})


def check_linked_settings(links: dict[str, object], settings: dict[str, tuple[object, str]]) -> None:
    """Refuse a setting of a size the data decides (``--model.init_args.net.init_args.vocab_size=100``).

    The link would replace it without a word; a value equal to the data's is harmless and accepted.

    Args:
        links: the links that apply, target -> the data's value.
        settings: what the user set explicitly (:func:`user_settings`).
    """
    sources = {target: source for source, target in LINKS}
    for target, value in links.items():
        given = settings.get(_plain_key(target))
        if given is None or _same_value(given[0], value):
            continue
        name = target.rsplit(".", 1)[1]
        raise InputError(
            f"{target}: set to {_short(given[0])} {given[1]}, but the data decides it ({sources[target]} is "
            f"{_short(value)}). Fix: remove that setting; {_DECIDED_BY.get(name, 'the data sets it')}."
        )


def user_settings(args: list[str] | dict | None) -> dict[str, tuple[object, str]]:
    """What the user set explicitly in the model: key -> (value, where), later settings winning.

    From the ``--config`` files and the ``--model...`` options of ``args`` (``sys.argv[1:]`` when None),
    or from a dict of arguments. Keys leave out ``init_args``: ``model.net.vocab_size``. The model
    read from a ``--ckpt_path`` is not among them (it is added to the arguments later).
    """
    found: dict[str, tuple[object, str]] = {}
    if isinstance(args, dict):
        for key, value in args.items():
            _flatten(value, key if key not in SUBCOMMANDS else "", "in the arguments", found)
        return found
    for _, settings in settings_in_order(list(sys.argv[1:] if args is None else args)):
        found.update(settings)
    return found


Settings = dict[str, tuple[object, str]]  # key without init_args -> (value, where), as user_settings gives


def settings_in_order(
    argv: list[str], sections: tuple[str, ...] = ("model",), wheres: dict[int, str] | None = None
) -> list[tuple[int, Settings]]:
    """What each ``--config`` file and each ``--<section>...`` option of ``argv`` sets, in their order.

    Args:
        argv: the arguments.
        sections: the options read besides ``--config``: ``--model``, ``--model.init_args.lr``...
        wheres: where an argument came from, by its index, when not from the user (a checkpoint).

    Returns:
        For each file or option: the index in ``argv`` just after it, and its settings.
    """
    found = []
    for i, arg in enumerate(argv):
        option, has_value, value = arg.partition("=")
        end = i + 1 if has_value else i + 2
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        settings: Settings = {}
        if option in ("-c", "--config"):
            _flatten(_read_yaml(value), "", (wheres or {}).get(i, f"in '{value}'"), settings)
        elif option.split(".", 1)[0] in {f"--{section}" for section in sections}:
            loaded = _read_yaml(value) if Path(value).suffix in (".yaml", ".yml") else _yaml_value(value)
            _flatten(loaded, option[2:], (wheres or {}).get(i, "on the command line"), settings)
        else:
            continue
        found.append((end, settings))
    return found


def _read_yaml(path: str) -> object:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):  # reported by check_config_files or the parser
        return None


def _yaml_value(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _flatten(value: object, key: str, where: str, found: dict[str, tuple[object, str]]) -> None:
    if isinstance(value, dict):
        for sub, sub_value in value.items():
            inner = key if sub in ("init_args", "dict_kwargs") else f"{key}.{sub}".strip(".")
            _flatten(sub_value, inner, where, found)
    elif key:
        found[_plain_key(key)] = (value, where)


def _plain_key(key: str) -> str:
    """``model.init_args.net.init_args.vocab_size`` -> ``model.net.vocab_size``."""
    return ".".join(part for part in key.split(".") if part not in ("init_args", "dict_kwargs"))


def _same_value(a: object, b: object) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _short(value: object, width: int = 60) -> str:
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= width else f"{text[: width - 5]}...{text[-1]}"


# ------------------------------------------------------------ a nested class switched by a later setting
# jsonargparse keeps the init_args given for a class nested in the model or the data (its optimizer, its
# net) when a later --config file or option switches it to another class that takes them too: a recipe's
# AdamW weight_decay 0.05 would become SGD's. They are dropped instead, and the new class's defaults used.


@dataclass
class ClassSwitch:
    """A class nested in the model or the data that a later setting replaced with another class.

    Attributes:
        key: the class's parsed key, ``model.init_args.optimizer``.
        old: the class replaced, as it was written.
        old_where: where that class was given (``in 'recipes/word_gru.yaml'``).
        new_where: where the new class was given.
        end: the index in the arguments just after the file or option that gave the new class.
        carried: the arguments set before the switch and not given again since.
    """

    key: str
    old: str
    old_where: str
    new_where: str
    end: int
    carried: set[str] = dataclasses.field(default_factory=set)


def drop_carried_arguments(
    parser: ArgumentParser, argv: list[str], wheres: dict[int, str] | None = None
) -> tuple[list[str], list[str]]:
    """``argv`` with the new class's defaults given back for what a switch of a nested class carried over.

    An argument set for the class before the switch and not given again since gets the new class's
    default, by an option inserted just after the switch (so that ``--print_config``, the saved config
    and the hyperparameters show it), unless the new class has no default for it: then it is kept.
    ``argv`` is parsed once more here only when some key nested in the model or the data is given two
    different names.

    Args:
        parser: the CLI's parser.
        argv: the arguments to parse.
        wheres: where an argument came from, by its index, when not from the user (:func:`settings_in_order`).

    Returns:
        The arguments to parse instead, and one line for each switch that dropped or kept an argument.
    """
    sources = settings_in_order(argv, ("model", "data"), wheres)
    if not _names_change(sources):
        return argv, []
    config = parser.parse_args([arg for arg in argv if arg.partition("=")[0] != "--print_config"])
    config = config[config.subcommand] if config.get("subcommand") else config
    inserted: dict[int, list[str]] = {}
    lines = []
    for plain, key in nested_classes(config).items():
        switch = _last_switch(sources, plain, key)
        if switch is None:
            continue
        option, line = _reset(switch, config[key])
        inserted.setdefault(switch.end, []).extend([option] if option else [])
        lines.extend([line] if line else [])
    return [arg for i, given in enumerate(argv) for arg in (given, *inserted.get(i + 1, []))], lines


def _names_change(sources: list[tuple[int, Settings]]) -> bool:
    """Whether the settings give some key nested in the model or the data two different names, where that
    key also has settings of its own (a class_path or init_args): the only way a switch of a nested class
    can carry arguments over. (A plain string setting changed, ``lr_schedule``, costs no parse.)"""
    keys = {key for _, settings in sources for key in settings}
    named: dict[str, str] = {}
    for _, settings in sources:
        for key, (value, _) in settings.items():
            key = key.removesuffix(".class_path")
            nested = "." in key and key.split(".", 1)[0] in ("model", "data")
            has_own = any(other.startswith(f"{key}.") for other in keys)
            if nested and has_own and isinstance(value, str) and named.setdefault(key, value) != value:
                return True
    return False


def nested_classes(config: Namespace) -> dict[str, str]:
    """The classes nested in the model's and the data's init_args of a parsed config, at any depth:
    key without init_args (``model.optimizer``) -> parsed key (``model.init_args.optimizer``)."""
    found: dict[str, str] = {}
    for section in ("model", "data"):
        if _is_class_spec(config.get(section)):
            _classes_in(config[section].get("init_args"), f"{section}.init_args", section, found)
    return found


def _classes_in(args: object, key: str, plain: str, found: dict[str, str]) -> None:
    if not isinstance(args, Namespace):
        return
    for name, value in vars(args).items():
        if _is_class_spec(value):
            found[f"{plain}.{name}"] = f"{key}.{name}"
            _classes_in(value.get("init_args"), f"{key}.{name}.init_args", f"{plain}.{name}", found)
        else:  # a dataclass's fields
            _classes_in(value, f"{key}.{name}", f"{plain}.{name}", found)


def _is_class_spec(value: object) -> bool:
    return isinstance(value, Namespace) and isinstance(value.get("class_path"), str)


def _last_switch(sources: list[tuple[int, Settings]], plain: str, key: str) -> ClassSwitch | None:
    """The last time the settings replace the class at ``plain`` (a key without init_args) with another
    (``SGD`` and ``torch.optim.SGD`` are one class), and the arguments that it would carry over."""
    named, where, switch = None, "", None
    before: set[str] = set()
    since: set[str] = set()
    for end, settings in sources:
        name, at = _class_named(settings, plain)
        if name is not None and (named is None or not same_class(name, named)):
            if named is not None:
                switch = ClassSwitch(key, named, where, at, end)
                before, since = before | since, set()
            named, where = name, at
        since |= _arguments_set(settings, plain)
    if switch is not None:
        switch.carried = before - since
    return switch


def _class_named(settings: Settings, plain: str) -> tuple[str | None, str]:
    """The class that ``settings`` give at ``plain`` (its ``class_path``, or a class name as its value),
    and where; (None, "") when they give none."""
    for key in (f"{plain}.class_path", plain):
        value, where = settings.get(key, (None, ""))
        if isinstance(value, str) and Path(value).suffix not in (".yaml", ".yml", ".json"):
            return value, where
    return None, ""


def _arguments_set(settings: Settings, plain: str) -> set[str]:
    """The arguments of the class at ``plain`` that ``settings`` set: ``lr`` for ``model.optimizer.lr``."""
    prefix = f"{plain}."
    names = {key[len(prefix) :].split(".", 1)[0] for key in settings if key.startswith(prefix)}
    return names - {"class_path"}


def _reset(switch: ClassSwitch, spec: Namespace) -> tuple[str | None, str | None]:
    """For a switch to the parsed class ``spec``: the option that gives the new class its defaults for what
    the switch carried over (None: nothing to give), and the line that says so (None: nothing carried).
    An argument whose default the new class lacks (or the command line cannot give) stays as carried."""
    defaults, required = _class_defaults(spec.class_path)
    init_args = spec.get("init_args") or Namespace()
    dropped: dict[str, object] = {}
    kept: dict[str, object] = {}
    reset: dict[str, object] = {}
    for name, value in vars(init_args).items():
        if name not in switch.carried or (name not in defaults and name not in required):
            continue  # jsonargparse dropped it already, or the class takes it through **kwargs
        default = _json_ready(defaults.get(name))
        if name in required or default is _NO_JSON:
            kept[name] = value
        elif not _same_value(value, default):
            dropped[name], reset[name] = value, default
    if not dropped and not kept:
        return None, None
    option = None
    if reset:
        option = f"--{switch.key}=" + json.dumps({"class_path": spec.class_path, "init_args": reset})
    return option, _switch_line(switch, spec.class_path, dropped, kept)


_NO_JSON = object()  # a value that JSON cannot give on the command line


def _json_ready(value: object) -> object:
    """``value`` as JSON gives it on the command line (a class or function as its import path), or
    ``_NO_JSON``."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    try:
        return json.loads(json.dumps(value, default=lambda obj: f"{obj.__module__}.{obj.__qualname__}"))
    except (TypeError, ValueError, AttributeError):
        return _NO_JSON


def _switch_line(switch: ClassSwitch, new: str, dropped: dict[str, object], kept: dict[str, object]) -> str:
    """The line about a switch: ``model.init_args.optimizer: torch.optim.SGD (on the command line) replaces
    torch.optim.AdamW (in 'recipes/word_gru.yaml'); not carried over: lr=0.003, weight_decay=0.05. Give
    them again to keep them.``"""
    line = f"{switch.key}: {new} ({switch.new_where}) replaces {switch.old} ({switch.old_where})"
    if kept:
        them = "it" if len(kept) == 1 else "them"
        line += f"; carried over, as {new.rpartition('.')[2]} has no default for {them}: {_assignments(kept)}"
    if dropped:
        them = "it" if len(dropped) == 1 else "them"
        line += f"; not carried over: {_assignments(dropped)}. Give {them} again to keep {them}"
    return f"{line}."


def _assignments(values: dict[str, object]) -> str:
    return ", ".join(f"{name}={_short(value)}" for name, value in values.items())


class _Parser(LightningArgumentParser):
    """A parse error is one ``error:`` line naming the field, with the closest valid names and the fix
    (:func:`parse_error_line`); a typo is never taken for the option it abbreviates."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --trainer.max_step is a typo, not --trainer.max_steps
        super().__init__(*args, **kwargs)

    def print_usage(self, file=None) -> None:
        print(f"usage: {self.prog} --config RECIPE.yaml [--section.key=value ...]", file=file or sys.stderr)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):  # nested: its caller reports
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        print(f"error: {parse_error_line(message, parser)}", file=sys.stderr)
        sys.exit(2)


# ------------------------------------------------------------------------ parse errors in one line
# jsonargparse explains a rejected value as a tree: each nested key ('Parser key "net"'), each class
# tried ("Problem with given class_path 'lightning_seq.nets.RNNLM'"), and every alternative of a Union
# (the None that a subclass option also accepts). One line keeps the path of keys and the innermost reason.
_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
_HELP = "--help lists the options"
_OPTIMIZER_ARGS = ("lr", "betas", "eps", "weight_decay", "momentum")  # a module's lr is its optimizer's


def parse_error_line(message: str, parser: ArgumentParser) -> str:
    """jsonargparse's ``message`` as one line: ``<field>: <what is wrong>. Fix: <what to do>.``

    Unknown options and classes come with the closest valid names (``did you mean --trainer.max_steps?``,
    the classes the module has), values with what was expected.
    """
    text = message.strip()
    unknown = re.match(r"unrecognized arguments: (\S+)", text)
    if unknown and not unknown.group(1).startswith("--"):
        return (
            f"'{unknown.group(1)}': a value without an option. Fix: give settings as --section.key=value "
            "and recipes as --config FILE."
        )
    if unknown:
        return _unknown_option(unknown.group(1).split("=", 1)[0].removeprefix("--"), parser, "--")
    unknown = re.search(r"(?:does not accept option|^Option) '([\w.]+)'", text)
    group = re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", text)
    if group:
        return _unknown_option(f"{group.group(1)}.{group.group(2)}", parser, "")
    if unknown and not _KEY.search(text):
        return _unknown_option(unknown.group(1), parser, "")
    field = _key_chain(text)
    if not field:
        return _plain_error(text)
    return _value_error(field, text)


def _plain_error(text: str) -> str:
    """A message that names no nested key, as one line with a fix."""
    required = re.search(r"the following arguments are required: (.*)", text)
    if required:
        return (
            f"{required.group(1)}: not set. Fix: give a recipe (--config recipes/NAME.yaml sets the model "
            "and the data) or set them."
        )
    line = " ".join(text.split())
    if "subcommand" in line and "not provided" in line:
        return f"{line} Fix: start with one, e.g. lightning fit --config recipes/char_lstm.yaml."
    return line if "Fix:" in line else f"{line.rstrip('.')}. Fix: correct the command line ({_HELP})."


def _key_chain(text: str) -> str:
    """The field jsonargparse's tree is about: its nested keys along one branch (each indented deeper
    than the last), joined by ``.init_args.`` inside a class and by ``.`` inside a dataclass."""
    field, depth, inside = "", -1, "."
    for line in text.splitlines():
        match = _KEY.search(line)
        if match is None:
            tried = _CLASS.search(line)
            if tried:
                inside = "." if _is_dataclass(tried.group(1)) else ".init_args."
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= depth:
            break
        if "callable class" in line[: match.start()]:  # an optimizer factory: its arguments
            inside = ".init_args."
        field = f"{field}{inside}{match.group(1)}" if field else match.group(1)
        depth, inside = indent, "."
    return field


def _is_dataclass(class_path: str) -> bool:
    try:
        module_name, name = class_path.rsplit(".", 1)
        return dataclasses.is_dataclass(getattr(importlib.import_module(module_name), name))
    except (ValueError, ImportError, AttributeError):
        return False


def _value_error(field: str, text: str) -> str:
    tried = _CLASS.findall(text)
    missing = re.search(r"module '([\w.]+)' has no attribute '(\w+)'", text)
    if missing:
        module, name = missing.groups()
        given = [*tried, *re.findall(r"(?:Got|Given) value: ([\w.]+)", text)]
        bad = next((path for path in given if f"{module}.{name}" in path), f"{module}.{name}")
        return _unknown_class(field, bad, module, name)
    no_module = re.search(r"No module named '([\w.]+)'", text)
    if no_module:
        return (
            f"{field}: no module '{no_module.group(1)}'. Fix: check the class_path "
            "(a module and a class in it, e.g. lightning_seq.nets.RNNLM)."
        )
    option = re.search(r"Option '([\w.]+)' is not accepted", text)
    if option and tried:
        return _unknown_class_option(field, tried[-1], option.group(1))
    subclass = re.search(r"Import path (\S+) does not correspond to a subclass of (\w+)", text)
    if subclass:
        path, base = subclass.groups()
        return f"{field}: {path} is not a {base}. Fix: give the class_path of a {base}."
    required = re.search(r"the following arguments are required: ([\w.]+)", text)
    if required:
        inside = "." if tried and _is_dataclass(tried[-1]) else ".init_args."
        key = f"{field}{inside}{required.group(1)}"
        return f"{key}: not set. Fix: set it in the recipe or with --{key}=..."
    value = _given_value(text)
    choices = _literal_choices(text)
    if choices:
        return f"{field}: {value!r} is not one of {', '.join(choices)}. Fix: use one of them."
    kinds = [_KINDS[t] for t in re.findall(r"Expected a <class '(\w+)'>", text) if t in _KINDS]
    if kinds:
        return f"{field}: {value!r} is not {kinds[0]}. Fix: give {kinds[0]}."
    reason = _innermost_reason(text)
    return f"{field}: {reason.rstrip('.')}. Fix: correct {field} ({_HELP})."


def _given_value(text: str) -> str:
    """The value the user gave, as jsonargparse quotes it (not the namespaces it was merged into)."""
    for value in re.findall(r"(?:Got|Given) value: (.*?)(?:\. Got value:.*)?$", text, flags=re.M):
        if not value.startswith(("Namespace(", "NestedArg(", "{")):
            return value
    return "?"


def _literal_choices(text: str) -> list[str]:
    choices: list[str] = []
    for group in re.findall(r"Expected a typing\.Literal\[(.*?)\]", text):
        for choice in (c.strip().strip("'\"") for c in group.split(",")):
            if choice not in choices:
                choices.append(choice)
    return choices


def _innermost_reason(text: str) -> str:
    noise = ("Given value", "Subtypes", "Errors:", "Does not validate", "Parser key", "Problem with given")
    lines = [line.strip(" -") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(noise) and "NoneType" not in line]
    return lines[-1] if lines else text.splitlines()[0]


def _unknown_option(key: str, parser: ArgumentParser, dashes: str) -> str:
    """``--trainer.max_step: no such option; did you mean --trainer.max_steps? Fix: ...``"""
    options = _option_names(parser)
    if dashes and key in options and f"--{key}" not in parser._option_string_actions:
        return f"--{key}: given before the subcommand. Fix: put it after, e.g. lightning fit --{key}=..."
    guess = difflib.get_close_matches(key, options, n=1, cutoff=0.75)
    if not guess and "." in key:  # a misspelled section: --modle.x
        section, rest = key.split(".", 1)
        sections = {option.split(".", 1)[0] for option in options}
        guess = [f"{s}.{rest}" for s in difflib.get_close_matches(section, sections, n=1, cutoff=0.6)]
    hint = f"; did you mean {dashes}{guess[0]}?" if guess else "."
    return f"{dashes}{key}: no such option{hint} Fix: correct the name ({_HELP})."


def _option_names(parser: ArgumentParser) -> list[str]:
    """Every option of ``parser`` and its subcommands, without dashes: ``trainer.max_steps``."""
    parsers = [parser]
    subcommands = getattr(parser, "_subcommands_action", None)
    if subcommands is not None:
        parsers += list(subcommands._name_parser_map.values())
    return sorted({o.lstrip("-") for p in parsers for o in p._option_string_actions if o.startswith("--")})


def _unknown_class(field: str, path: str, module_name: str, name: str) -> str:
    """``model.init_args.net: no class 'lightning_seq.nets.ViTT'; did you mean lightning_seq.nets.ViT?``"""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return f"{field}: no class '{path}'. Fix: check the class_path."
    names = list(getattr(module, "__all__", None) or [n for n in dir(module) if not n.startswith("_")])
    if hasattr(module, "__path__"):  # a package: its modules too (lightning_seq.netz -> nets)
        names += [m.name for m in pkgutil.iter_modules(module.__path__) if not m.name.startswith("_")]
    guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = "."
    if guess:
        hint = f"; did you mean {path.replace(f'{module_name}.{name}', f'{module_name}.{guess[0]}', 1)}?"
    classes = [n for n in names if inspect.isclass(getattr(module, n, None))]
    fix = "check the class_path"
    if path.endswith(f".{name}") and classes:
        fix = f"use one of the classes of {module_name}: {', '.join(classes)}"
    return f"{field}: no class '{path}'{hint} Fix: {fix}."


def _unknown_class_option(field: str, class_path: str, option: str) -> str:
    """``model.init_args.lrr: LanguageModel has no option 'lrr'; did you mean ...? Fix: ...``"""
    options = _class_options(class_path)
    nested = [f"optimizer.init_args.{name}" for name in _OPTIMIZER_ARGS if "optimizer" in options]
    guess = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
    guess = guess or [n for n in nested if difflib.get_close_matches(option, [n.split(".")[-1]], cutoff=0.6)]
    hint = f"; did you mean {guess[0]}?" if guess else "."
    name = class_path.rsplit(".", 1)[-1]
    return (
        f"{field}.init_args.{option}: {name} has no option '{option}'{hint} "
        f"Fix: use one of its options: {', '.join(options)}."
    )


def _class_options(class_path: str) -> list[str]:
    """The arguments a class takes on the command line (its constructor's, through ``**kwargs`` too)."""
    parser = _class_parser(class_path)
    if parser is None:  # only the hint is lost
        return []
    dests = [a.dest.split(".", 1)[0] for a in parser._actions if a.dest not in ("help", "config")]
    return sorted(set(dests), key=dests.index)


def _class_defaults(class_path: str) -> tuple[Namespace, set[str]]:
    """A class's constructor defaults as jsonargparse reads them, and its required arguments (empty when
    the class does not import)."""
    parser = _class_parser(class_path)
    try:
        defaults = parser.get_defaults()
    except Exception:  # no parser, or a default that does not validate: nothing is reset
        return Namespace(), set()
    return defaults, {action.dest for action in parser._actions if action.required}


def _class_parser(class_path: str) -> ArgumentParser | None:
    """A parser of a class's constructor arguments; None when the class does not import or parse."""
    try:
        module_name, name = class_path.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except Exception:
        return None
    return parser


class LightningSeqCLI(LightningCLI):
    """LightningCLI with data-to-model links; any LightningModule / LightningDataModule by class_path."""

    def __init__(self, args: list[str] | None = None, run: bool = True):
        self.applied_links: dict[str, object] = {}  # link target -> value, once the model is built
        self.user_settings = user_settings(args)  # to refuse settings of linked sizes
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs"},
            parser_kwargs={"description": _PARSER_DESCRIPTION},
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        self.parser_class = _Parser
        return super().init_parser(**kwargs)

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs) -> None:
        """Lightning's subcommands, each with a whole sentence of help (Lightning cuts the Trainer's
        docstrings after their first line: "never run on your", "Useful to")."""
        super()._add_subcommands(parser, **kwargs)
        for action in parser._actions:
            for choice in getattr(action, "_choices_actions", []):
                choice.help = SUBCOMMAND_HELP.get(choice.dest, choice.help)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument(
                "--output",
                type=str | None,
                default=None,
                help="Where the predictions go: a .jsonl file, or a folder for the default name "
                "(default: predictions_<checkpoint>.jsonl in the checkpoint's run folder).",
            )
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")

    def _add_instantiators(self) -> None:
        """Lightning's instantiators of the model and the data, the model's aware of link targets."""
        self.parser.add_instantiator(
            _TargetAwareInstantiator(cli=self, key="model"),
            _get_module_type(self._model_class),
            subclasses=self.subclass_mode_model,
        )
        self.parser.add_instantiator(
            _InstantiatorFn(cli=self, key="data"),
            _get_module_type(self._datamodule_class),
            subclasses=self.subclass_mode_data,
        )

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        if isinstance(args, dict):  # LightningCLI(args={...}) from Python
            self.config = parser.parse_object(args)
            return
        given = list(sys.argv[1:] if args is None else args)
        argv = with_checkpoint_model(given)
        from_checkpoint = {i: "from --ckpt_path" for i, arg in enumerate(argv) if arg not in given}
        argv, lines = drop_carried_arguments(parser, argv, from_checkpoint)
        if rank_zero_only.rank == 0:  # one line per run, not one per DDP process
            for line in lines:
                print(line, file=sys.stderr)
        self.config = parser.parse_args(argv)

    def _parse_ckpt_path(self) -> None:
        """Done in :meth:`parse_arguments`, so that command-line overrides beat the checkpoint."""

    def before_instantiate_classes(self) -> None:
        """Settle the run folder and the checkpoint (:mod:`lightning_seq.runs`): ``--ckpt_path last`` is
        the newest ``last.ckpt`` of the recipe's runs in every subcommand, and must hold its model; then
        remove what earlier runs of the recipe left behind."""
        if self.subcommand not in ("fit", "validate", "test", "predict"):
            return
        config = self.config[self.subcommand]
        asked, keep = config.get("ckpt_path"), None
        if self.subcommand == "fit":
            check_slurm_tasks(config["trainer"])
            keep = plan_fit(config)
        else:
            plan_evaluation(config, self.subcommand)
            # A checkpoint's evaluation restores no state of the callbacks that saved it (the W&B run id
            # keeper, the checkpoint callbacks, the weight averaging): nothing is missing.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks used")
        if self.subcommand == "predict":  # no run of its own: predictions go beside the checkpoint
            config["trainer"]["logger"] = False
        if asked == "last":
            check_last_model(config)
        remove_leftovers(runs_folder(config["trainer"]), keep=keep)  # once nothing can refuse the run

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        """The recipe's Trainer, writing checkpoints atomically, with the progress bar that counts steps;
        in ``fit``, plus the safety callbacks; in the other commands, without the callbacks that only
        act in training, and in ``predict`` with no config.yaml. A setting Lightning rejects is one line
        naming it."""
        plugins = _listed(config.get("plugins"))
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand != "fit":
            config["callbacks"] = _evaluation_callbacks(config.get("callbacks"))
        callbacks = [*callbacks, *_default_callbacks(config, callbacks, fit=self.subcommand == "fit")]
        check_trainer_counts(config)
        if self.subcommand == "predict":
            self.save_config_callback = None  # no run folder: no config.yaml (a CLI runs one command)
        try:
            return super()._instantiate_trainer(config, callbacks)
        except (MisconfigurationException, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise trainer_setting_error(err) from None

    def after_predict(self) -> None:
        """Show text predictions and save every prediction, one JSON line each, to ``--output`` or beside the
        checkpoint (:func:`lightning_seq.runs.predictions_file`)."""
        batches = self.trainer.predict_loop.predictions or []
        if batches and isinstance(batches[0], list) and batches[0] and isinstance(batches[0][0], list):
            batches = [b for loader in batches for b in loader]  # several dataloaders
        items = [item for batch in batches for item in (batch if isinstance(batch, list) else [batch])]
        if not self.trainer.is_global_zero or not items:
            return
        config = self.config["predict"]
        path = predictions_file(config.get("ckpt_path"), config.get("output"))
        replaced = path.is_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item.tolist() if hasattr(item, "tolist") else item) + "\n")
        console = Console()
        for i, item in enumerate(items):
            if isinstance(item, str):
                console.print(
                    Panel(Text(item), title=f"prediction {i + 1}", title_align="left", expand=False)
                )
        again = " (replacing the earlier ones)" if replaced else ""
        noun = "prediction" if len(items) == 1 else "predictions"
        console.print(f"{len(items)} {noun} written to {path}{again}", soft_wrap=True)  # the whole path


def main(args: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, with a one-line message; 3 when a run
    stopped on Slurm's requeue signal after saving its checkpoint)."""
    keep_freed_memory()
    _quiet_third_party_notices()
    argv = sys.argv[1:] if args is None else args
    in_slurm = slurm_job() is not None
    if in_slurm:
        listen_for(signal.SIGUSR1)  # Slurm's warning may come before training starts
    try:
        return _run(argv, args)
    finally:
        if in_slurm:
            # A warning that comes once the command has finished has nothing left to save. Python puts
            # back the default action of its handled signals (death, for SIGUSR1) while it shuts down,
            # and W&B and gloo can take seconds there; an ignored signal stays ignored.
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _run(argv: list[str], args: list[str] | None) -> int:
    try:
        if argv[:1] == ["submit"]:
            return submit(argv[1:])
        check_config_files(argv)
        LightningSeqCLI(args=args)
    except RequeueRequested as stop:
        print(f"stopped for requeue: {stop}; the job resumes from it when requeued.", file=sys.stderr)
        return EXIT_REQUEUE
    except Exception as err:
        cause = _input_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    return 0


def _quiet_third_party_notices() -> None:
    """Hide notices that are not about the user's run (an advert, a torch/Lightning deprecation, and
    outside a Slurm allocation Lightning's hint to launch with ``srun``, which it gives wherever Slurm
    is installed)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings(
            "ignore", message="The `srun` command is available on your system but is not used"
        )
    noise = ("💡 Tip", "Trainer already configured with model summary callbacks")  # an advert; NetSummary
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith(noise)
    )


def _config_args(argv: list[str]) -> list[tuple[int, str]]:
    """Each ``-c``/``--config PATH`` or ``--config=PATH`` in ``argv``: (index just after it, PATH).

    A final ``-c``/``--config`` without a value gives ``(len(argv) + 1, "")``. Values are not consumed:
    ``--config --config=x`` gives both.
    """
    found = []
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config"):
            found.append((i + 2, argv[i + 1] if i + 1 < len(argv) else ""))
        elif arg.startswith("--config="):
            found.append((i + 1, arg.split("=", 1)[1]))
    return found


def check_config_files(argv: list[str]) -> None:
    """Fail early, naming the file, when a ``--config`` file is missing or is not valid YAML."""
    for end, value in _config_args(argv):
        if end > len(argv):  # a final --config without a value: the parser reports it
            continue
        path = Path(value)
        if not path.is_file():
            raise InputError(
                f"--config: '{path}' does not exist. Fix: check the path (recipes are in recipes/)."
            )
        try:
            yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            problem = getattr(err, "problem", None) or err
            raise InputError(
                f"--config: '{path}' is not valid YAML{line}: {problem}. Fix: correct the file."
            ) from None


OWN_MODEL = "checkpoint"  # ``--model=checkpoint``: the checkpoint's own model, in place of the recipe's


def with_checkpoint_model(argv: list[str]) -> list[str]:
    """Insert the model saved in ``--ckpt_path`` after the last ``--config`` file, when it is the recipe's.

    Precedence, lowest first: recipe files, the checkpoint's model (its architecture must match
    the weights), then any ``--model...`` override that follows, e.g. decoding settings for
    ``predict``. (Lightning alone applies the checkpoint last, over the command line.)

    The checkpoint's model must be the one the recipe builds: the same LightningModule class and,
    where both name one, the same net class (an LSTM checkpoint does not go into ``gpt.yaml``). Another
    one is refused, naming both and the recipe the checkpoint came from, unless ``--model=checkpoint``
    asks for the checkpoint's own model in place of the recipe's. Without a ``--config`` that names a
    model, the checkpoint's is taken as it is.

    The checkpoint is read as ``--weights_only`` says (weights-only unless it is ``false``), so a bad
    ``--ckpt_path`` (missing, a folder, truncated, not a checkpoint, holding Python objects) is one
    clear error here, before a run folder exists. Lightning's own words (``last``, ``best``...) and
    URLs are left to :meth:`LightningSeqCLI.before_instantiate_classes`.
    """
    values = _option_values(argv, ("--ckpt_path", "--weights_only"))
    argv, own = _without_own_model(argv)
    path = values.get("--ckpt_path")
    if not names_a_file(path):
        if own:
            raise InputError(
                f"--model={OWN_MODEL}: takes the model saved in the file that --ckpt_path names, and "
                f"--ckpt_path is {'not given' if path is None else repr(path)}. Fix: add --ckpt_path "
                f"PATH.ckpt, or drop --model={OWN_MODEL} to build the recipe's model."
            )
        return argv
    weights_only = values.get("--weights_only", "").strip().lower() != "false"
    # mmap: only the hyperparameters are read here; Lightning loads the weights later
    checkpoint = read_checkpoint(path, field="--ckpt_path", weights_only=weights_only)
    hparams = checkpoint.get("hyper_parameters")
    model_json = _model_json(hparams)
    if own and model_json is None:
        raise InputError(
            f"--model={OWN_MODEL}: '{path}' does not hold its model as settings (it was saved from Python, "
            f"or its settings hold Python objects). Fix: drop --model={OWN_MODEL} and give the recipe "
            "that builds its model."
        )
    if not own:
        where, own_model = f"--ckpt_path: '{path}'", f"add --model={OWN_MODEL}"
        refuse_other_model(checkpoint, where, recipe_model(argv), own_model)
    if model_json is None:  # saved from Python, or live Python objects: the recipe's model stays
        return argv
    configs = _config_args(argv)
    at = max(configs[-1][0] if configs else 0, 1)  # after the last --config, the subcommand at least
    return [*argv[:at], f"--model={model_json}", *argv[at:]]


def _option_values(argv: list[str], options: tuple[str, ...]) -> dict[str, str]:
    """The last value of each of ``options`` in ``argv`` (``--option value`` or ``--option=value``)."""
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for option in options:
            if arg == option and i + 1 < len(argv):
                values[option] = argv[i + 1]
            elif arg.startswith(f"{option}="):
                values[option] = arg.split("=", 1)[1]
    return values


def _without_own_model(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--model=checkpoint`` (or ``--model checkpoint``), and whether it was there."""
    kept, own, skip = [], False, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == f"--model={OWN_MODEL}":
            own = True
        elif arg == "--model" and i + 1 < len(argv) and argv[i + 1] == OWN_MODEL:
            own = skip = True
        else:
            kept.append(arg)
    return kept, own


def _model_json(hparams: object) -> str | None:
    """The model of a checkpoint's hyperparameters as a ``--model`` value, or None when they hold none
    (saved from Python) or hold live Python objects (loaded with ``--weights_only false``)."""
    if not isinstance(hparams, dict) or "_class_path" not in hparams:
        return None
    init_args = {k: v for k, v in hparams.items() if k not in ("_instantiator", "_class_path")}
    try:
        return json.dumps({"class_path": hparams["_class_path"], "init_args": init_args})
    except TypeError:
        return None


@dataclass
class RecipeModel:
    """The model classes that a command's ``--config`` files and ``--model...`` options name.

    Attributes:
        module: the LightningModule's class path (None: nothing names one).
        net: its net's class path (None: nothing names one).
        source: where the module's class was named (a recipe file), for messages.
    """

    module: str | None = None
    net: str | None = None
    source: str = "the command line"

    def update(self, value: object, source: str) -> None:
        """Apply a ``model`` value: a ``{class_path, init_args}`` dict or a class name."""
        if isinstance(value, str):
            self.module, self.source = value, source
        elif isinstance(value, dict):
            if isinstance(value.get("class_path"), str):
                self.module, self.source = value["class_path"], source
            init_args = value.get("init_args") if isinstance(value.get("init_args"), dict) else value
            if "net" in init_args:
                self.update_net(init_args["net"])

    def update_net(self, value: object) -> None:
        """Apply a ``net`` value: a ``{class_path, init_args}`` dict or a class name."""
        if isinstance(value, dict):
            value = value.get("class_path")
        if isinstance(value, str):
            self.net = value


_MODEL_OPTIONS = ("-c", "--config", "--model", "--model.class_path", "--model.init_args.net",
                  "--model.init_args.net.class_path")  # fmt: skip


def recipe_model(argv: list[str]) -> RecipeModel:
    """The model classes that ``argv`` builds: its ``--config`` files' ``model`` sections and its
    ``--model`` options, applied in order (``--model=checkpoint`` taken out)."""
    subcommand = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    model = RecipeModel()
    for i, arg in enumerate(argv):
        option, has_value, value = arg.partition("=")
        if option not in _MODEL_OPTIONS:
            continue
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        if option in ("-c", "--config"):
            doc = _read_yaml(value)
            section = doc.get(subcommand) if isinstance(doc, dict) and subcommand in doc else doc
            if isinstance(section, dict) and "model" in section:
                model.update(section["model"], value)
        elif option == "--model":
            is_file = Path(value).suffix in (".yaml", ".yml") and Path(value).is_file()
            model.update(_read_yaml(value) if is_file else _yaml_value(value), "--model on the command line")
        elif option == "--model.class_path":
            model.update(value, f"{option} on the command line")
        else:
            model.update_net(value if option.endswith("class_path") else _yaml_value(value))
    return model


def refuse_other_model(checkpoint: dict, where: str, recipe: RecipeModel, own: str) -> None:
    """Refuse a checkpoint whose model is not the one ``recipe`` builds (another LightningModule class,
    or another net class where both name one), naming both and the recipe the checkpoint came from.

    Args:
        checkpoint: the checkpoint, as read.
        where: what the message starts with (the field and the file).
        recipe: the classes the command builds.
        own: how to ask for the checkpoint's own model instead, for the fix.

    Raises:
        InputError: the models differ.
    """
    module, net = checkpoint_class(checkpoint), net_class(checkpoint)
    if module is None or recipe.module is None:
        return
    same_net = net is None or recipe.net is None or same_class(net, recipe.net)
    if same_class(module, recipe.module) and same_net:
        return
    files = recipe_of(checkpoint)
    if files is None:
        came_from = "its recipe is not recorded in it"
    else:
        came_from = f"trained with {' + '.join(files)}" if files else "trained without a --config file"
    saved = _model_words(module, None if same_net else net, recipe.module)
    wanted = _model_words(recipe.module, None if same_net else recipe.net, module)
    run_of = f" (a run of {recipe.source})" if recipe.source.endswith((".yaml", ".yml")) else ""
    raise InputError(
        f"{where} is a checkpoint of {saved} ({came_from}), but {recipe.source} builds {wanted}. Fix: "
        f"give a checkpoint of {wanted}{run_of}, or {own} to use the checkpoint's own model in place of "
        "the recipe's."
    )


def _model_words(module: str, net: str | None, other: str) -> str:
    """``LanguageModel with net RNNLM``: short class names, the full path where ``other``'s short name is
    the same but the class is not."""
    short = module.rpartition(".")[2]
    name = module if short == other.rpartition(".")[2] and not same_class(module, other) else short
    return f"{name} with net {net.rpartition('.')[2]}" if net else name


def check_last_model(config: object) -> None:
    """Refuse the checkpoint that ``--ckpt_path last`` found when it holds another model than the parsed
    ``config`` builds (runs of several recipes share a folder when their loggers share a name)."""
    path = config["ckpt_path"]
    checkpoint = read_checkpoint(path, weights_only=config.get("weights_only") is not False)
    files = [str(file) for file in config.get("config") or [] if file is not None]
    recipe = RecipeModel(
        _config_value(config, "model.class_path"),
        _config_value(config, "model.init_args.net.class_path"),
        " + ".join(files) or "the command line",
    )
    where = f"--ckpt_path last: the newest last.ckpt, '{path}',"
    refuse_other_model(checkpoint, where, recipe, f"give --ckpt_path '{path}' --model={OWN_MODEL}")


def _config_value(config: object, key: str) -> str | None:
    """A string at the dotted ``key`` of a parsed config, or None."""
    try:
        value = config.get(key)
    except (AttributeError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def _default_callbacks(config: dict, callbacks: list[Callback], fit: bool) -> list[Callback]:
    """What a command adds unless the recipe has its own: in ``fit``, the NaN/Inf guard, the requeue on
    Slurm's signal, the W&B run id keeper and (unless off) the model summary without FLOPs that nothing
    counted; in every command, unless off, the progress bar that counts steps and shows a true it/s
    (plain lines when standard output is not a terminal)."""
    present = [*_listed(config.get("callbacks")), *callbacks]
    kinds = {type(c) for c in present}
    safety = (NonFiniteLoss(), RequeueOnSignal(), RunIdentity()) if fit else ()
    added: list[Callback] = [c for c in safety if type(c) not in kinds]
    has_bar = any(isinstance(c, ProgressBar) for c in present)
    if config.get("enable_progress_bar") is not False and not has_bar:
        # "step 1019/1400" rather than "Epoch 13/-2"; where the output is a file, plain lines
        added.append(StepProgressBar() if sys.stdout.isatty() else LineProgress())
    has_summary = any(isinstance(c, ModelSummary) for c in present)
    if fit and config.get("enable_model_summary") is not False and not has_summary:
        added.append(NetSummary())  # no "Total FLOPs: 0"
    return added


def _evaluation_callbacks(given: object) -> list[Callback]:
    """The recipe's callbacks for ``validate``, ``test`` and ``predict``, less those that act only while
    training: checkpoint callbacks (which save nothing here, and warn that their folder has changed) and
    weight averaging (the checkpoint's weights are its average already: Lightning saves the average as
    the state dict, and warns here that it cannot restore its own state)."""
    return [c for c in _listed(given) if not isinstance(c, (Checkpoint, WeightAveraging))]


def _listed(value: object) -> list:
    """A Trainer setting that takes one item or a list of them (``callbacks``, ``plugins``), as a list."""
    return [] if value is None else value if isinstance(value, list) else [value]


def check_trainer_counts(config: dict) -> None:
    """Refuse the counts Lightning accepts but divides by once training runs (a ZeroDivisionError)."""
    accumulate = config.get("accumulate_grad_batches")
    if isinstance(accumulate, int) and accumulate < 1:
        raise InputError(
            f"trainer.accumulate_grad_batches: expected 1 or more, got {accumulate}. "
            "Fix: use 1 (a step every batch) or more."
        )
    every = config.get("check_val_every_n_epoch")
    if isinstance(every, int) and every < 1:
        raise InputError(
            f"trainer.check_val_every_n_epoch: expected 1 or more, got {every}. Fix: use 1 or more, "
            "or null to validate every val_check_interval steps."
        )


def _input_error(err: BaseException | None) -> InputError | None:
    """The InputError that caused ``err``, if any (jsonargparse wraps errors raised in constructors).

    Lightning's ``MisconfigurationException`` counts as one: Lightning raises it for settings it
    rejects or that contradict each other (``enable_checkpointing: false`` beside a
    ``ModelCheckpoint``); the message names the setting (:func:`trainer_setting_error`).
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        if isinstance(err, MisconfigurationException):
            return trainer_setting_error(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def trainer_setting_error(err: Exception) -> InputError:
    """Lightning's objection to the Trainer's settings as one line: the setting its message names first
    (``trainer.accelerator``), Lightning's words, and the fix."""
    message = " ".join(str(err).split()).rstrip(".!")
    setting = _setting_named(message)
    if setting is None:
        return InputError(f"trainer: {message}. Fix: change the setting it names (recipe or command line).")
    fix = _TRAINER_FIXES.get(setting, "change trainer.{setting} in the recipe or on the command line")
    return InputError(f"trainer.{setting}: {message}. Fix: {fix.format(setting=setting, **_machine())}.")


def _setting_named(message: str) -> str | None:
    """The Trainer argument that Lightning's ``message`` names first."""
    names = [name for name in inspect.signature(Trainer.__init__).parameters if name != "self"]
    patterns = {**{rf"\b{name}\b": name for name in names}, **_LIGHTNING_WORDS}
    named = [(m.start(), name) for pattern, name in patterns.items() if (m := re.search(pattern, message))]
    return min(named)[1] if named else None


# Lightning's words for a setting in messages that do not spell out its name.
_LIGHTNING_WORDS = {r"(?i)\bgpu backend\b": "accelerator"}
_TRAINER_FIXES = {
    "accelerator": "use --trainer.accelerator=auto, or one this machine has ({accelerators})",
    "devices": "use --trainer.devices=auto, or a number from 1 to what this machine has ({devices})",
    "strategy": "use --trainer.strategy=auto (ddp for several devices)",
    "precision": "use one of 32-true, bf16-mixed, 16-mixed (a GPU) or 64-true",
    "num_nodes": "use 1 or more",
    "max_steps": "use -1 (no limit) or a number of steps >= 0",
    "max_epochs": "use -1 (no limit) or a number of epochs >= 0",
    "enable_checkpointing": "remove the ModelCheckpoint callback, or set trainer.enable_checkpointing: true",
    "enable_progress_bar": "remove the progress bar callback, or set trainer.enable_progress_bar: true",
    "limit_train_batches": "use a fraction in [0.0, 1.0] or a number of batches",
    "limit_val_batches": "use a fraction in [0.0, 1.0] or a number of batches",
    "limit_test_batches": "use a fraction in [0.0, 1.0] or a number of batches",
    "limit_predict_batches": "use a fraction in [0.0, 1.0] or a number of batches",
    "val_check_interval": "use a fraction of an epoch in (0.0, 1.0], a number of steps, or DD:HH:MM:SS",
}


def _machine() -> dict[str, str]:
    """The accelerators and devices this machine has, for the fixes of :data:`_TRAINER_FIXES`."""
    accelerators, devices = ["cpu"], f"{os.cpu_count()} CPU cores"
    if torch.cuda.is_available():
        accelerators.append("gpu")
        devices = f"{torch.cuda.device_count()} GPU(s), {devices}"
    if torch.backends.mps.is_available():
        accelerators.append("mps")
    return {"accelerators": ", ".join(accelerators), "devices": devices}

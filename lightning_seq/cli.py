"""The command line: ``lightning``, ``lightning-seq`` and ``python -m lightning_seq``.

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

import json
import logging
import signal
import sys
import warnings
from collections.abc import Callable
from importlib import metadata, util
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _get_module_type, _InstantiatorFn
from lightning.pytorch.plugins.io import CheckpointIO
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
from lightning_seq.checkpointing import AtomicCheckpointIO, names_a_file, read_checkpoint
from lightning_seq.errors import InputError
from lightning_seq.loggers import SaveConfig
from lightning_seq.runs import plan_fit, slurm_job
from lightning_seq.slurm import check_slurm_tasks, submit
from lightning_seq.utils import run_dir

SUBCOMMANDS = ("fit", "validate", "test", "predict", "submit")

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
        self.cli._dump_config()
        saved = self.cli.config_dump.get(self.key, {})
        for key in taken:  # a net whose every argument is linked is dumped without its init_args
            _nested_dict(saved, key.split(".")[1:-1])
        self.cli.applied_links.update(taken)
        return super().__call__(class_type, *args, applied_instantiation_links=taken, **kwargs)


def _nested_dict(root: dict, keys: list[str]) -> None:
    for key in keys:
        root = root.setdefault(key, {})


class _Parser(LightningArgumentParser):
    """On a parse error, one usage line instead of every option of the subcommand."""

    def print_usage(self, file=None) -> None:
        print(f"usage: {self.prog} --config RECIPE.yaml [--section.key=value ...]", file=file or sys.stderr)


class LightningSeqCLI(LightningCLI):
    """LightningCLI with data-to-model links; any LightningModule / LightningDataModule by class_path."""

    def __init__(self, args: list[str] | None = None, run: bool = True):
        self.applied_links: dict[str, object] = {}  # link target -> value, once the model is built
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            save_config_callback=SaveConfig,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs"},
            parser_kwargs={
                "description": "lightning_seq: train sequence and generative models from YAML recipes."
            },
            args=args,
            run=run,
        )

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        self.parser_class = _Parser
        return super().init_parser(**kwargs)

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
        self.config = parser.parse_args(with_checkpoint_model(list(sys.argv[1:] if args is None else args)))

    def _parse_ckpt_path(self) -> None:
        """Done in :meth:`parse_arguments`, so that command-line overrides beat the checkpoint."""

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit":
            config = self.config["fit"]
            check_slurm_tasks(config["trainer"])
            plan_fit(config)

    def _instantiate_trainer(self, config: dict, callbacks: list[Callback]) -> Trainer:
        """The recipe's Trainer, writing checkpoints atomically; in ``fit``, plus the safety callbacks."""
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand == "fit":
            present = {type(c) for c in [*(config.get("callbacks") or []), *callbacks]}
            defaults = [NonFiniteLoss(), RequeueOnSignal(), RunIdentity()]
            callbacks = [*callbacks, *(c for c in defaults if type(c) not in present)]
        return super()._instantiate_trainer(config, callbacks)

    def after_predict(self) -> None:
        """Show text predictions and save every prediction to ``<run dir>/predictions.jsonl``."""
        batches = self.trainer.predict_loop.predictions or []
        if batches and isinstance(batches[0], list) and batches[0] and isinstance(batches[0][0], list):
            batches = [b for loader in batches for b in loader]  # several dataloaders
        items = [item for batch in batches for item in (batch if isinstance(batch, list) else [batch])]
        if not self.trainer.is_global_zero or not items:
            return
        path = run_dir(self.trainer) / "predictions.jsonl"
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
        console.print(f"{len(items)} predictions written to {path}")


def main(args: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for bad input, with a one-line message; 3 when a run
    stopped on Slurm's requeue signal after saving its checkpoint)."""
    _quiet_third_party_notices()
    argv = sys.argv[1:] if args is None else args
    if slurm_job() is not None:
        listen_for(signal.SIGUSR1)  # Slurm's warning may come before training starts
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
    """Hide notices that are not about the user's run (an advert, a torch/Lightning deprecation)."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
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


def with_checkpoint_model(argv: list[str]) -> list[str]:
    """Insert the model saved in ``--ckpt_path`` after the last ``--config`` file.

    Precedence, lowest first: recipe files, the checkpoint's model (its architecture must match
    the weights), then any ``--model...`` override that follows, e.g. decoding settings for
    ``predict``. (Lightning alone applies the checkpoint last, over the command line.)

    The checkpoint is read as ``--weights_only`` says (weights-only unless it is ``false``), so a bad
    ``--ckpt_path`` (missing, a folder, truncated, not a checkpoint, holding Python objects) is one
    clear error here, before a run folder exists. Lightning's own words (``last``, ``best``...) and
    URLs are left to the run.
    """
    values: dict[str, str] = {}
    for i, arg in enumerate(argv):
        for option in ("--ckpt_path", "--weights_only"):
            if arg == option and i + 1 < len(argv):
                values[option] = argv[i + 1]
            elif arg.startswith(f"{option}="):
                values[option] = arg.split("=", 1)[1]
    path = values.get("--ckpt_path")
    if not names_a_file(path):
        return argv
    weights_only = values.get("--weights_only", "").strip().lower() != "false"
    # mmap: only the hyperparameters are read here; Lightning loads the weights later
    hparams = read_checkpoint(path, field="--ckpt_path", weights_only=weights_only).get("hyper_parameters")
    if not isinstance(hparams, dict) or "_class_path" not in hparams:
        return argv
    hparams = {k: v for k, v in hparams.items() if k != "_instantiator"}
    model = {"class_path": hparams.pop("_class_path"), "init_args": hparams}
    try:
        model_json = json.dumps(model)
    except TypeError:  # live Python objects (--weights_only false): the recipe's model stays
        return argv
    configs = _config_args(argv)
    at = max(configs[-1][0] if configs else 0, 1)  # after the last --config, the subcommand at least
    return [*argv[:at], f"--model={model_json}", *argv[at:]]


def _input_error(err: BaseException | None) -> InputError | None:
    """The InputError that caused ``err``, if any (jsonargparse wraps errors raised in constructors).

    Lightning's ``MisconfigurationException`` counts as one: Lightning raises it for settings that
    contradict each other (``enable_checkpointing: false`` beside a ``ModelCheckpoint``), and its
    message says which.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        if isinstance(err, MisconfigurationException):
            return InputError(f"{err} Fix: change one of the two settings (recipe or command line).")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def lightning_main() -> int:
    """The ``lightning`` command: ours, or the Lightning cloud CLI (``lightning-sdk``) for its commands.

    ``lightning-sdk`` installs a ``lightning`` command too. A first argument that is none of our
    subcommands (and no option) goes to it when it is installed; otherwise we show our help.
    """
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-") and argv[0] not in SUBCOMMANDS:
        sdk = _lightning_sdk_cli()
        if sdk is not None:
            return sdk()
        _print_help()
        print(
            f"error: unknown command '{argv[0]}'; expected one of {', '.join(SUBCOMMANDS)}.", file=sys.stderr
        )
        return 2
    return main()


def _lightning_sdk_cli() -> Callable[[], int] | None:
    """The entry point of the ``lightning-sdk`` package's CLI, when that package is installed."""
    if util.find_spec("lightning_sdk") is None:
        return None
    for entry in metadata.entry_points(group="console_scripts", name="lightning-sdk"):
        return entry.load()
    return None


def _print_help() -> None:
    argv, sys.argv = sys.argv, [sys.argv[0], "--help"]
    try:
        LightningSeqCLI()
    except SystemExit:
        pass
    finally:
        sys.argv = argv

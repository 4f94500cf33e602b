"""Loggers: a WandbLogger that never prompts, the LightningCLI config on the W&B run, and a
CSVLogger that a resumed run appends to.

:class:`WandbLogger` is online when W&B credentials exist and offline otherwise. Credentials are
``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE``, or an entry for the W&B host in ``~/.netrc`` (what
``wandb login`` writes). ``WANDB_MODE`` (``online``/``offline``/``disabled``) and an explicit
``offline`` argument take precedence. Offline runs are written under ``<save_dir>/wandb/`` and can be
uploaded later with ``wandb sync``; offline, W&B's own console lines are silenced (``WANDB_SILENT``)
unless ``WANDB_SILENT`` or ``WANDB_QUIET`` is set already.

:class:`SaveConfig` is the CLI's config saver: Lightning's ``config.yaml`` in the run folder, and the
same resolved config as the config (and a file) of every W&B run of the trainer; it also marks the
run folder as a live run's and records the recipe's file names in every checkpoint.

:class:`CSVLogger` is Lightning's, except that a run resumed into its folder keeps the rows already
in ``metrics.csv`` (Lightning deletes them) and appends its own.
"""

import csv
import netrc
import os
from argparse import Namespace
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

import lightning as L
import yaml
from lightning.fabric.utilities.logger import _convert_params
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lightning_seq.runs import hold_run_folder

if TYPE_CHECKING:
    from wandb import Run

# The full LightningCLI config as a file of the W&B run. Not ``config.yaml``: W&B writes its own file of
# that name (the run config in its format) into the same folder.
CONFIG_FILE = "lightning_config.yaml"

# The summary W&B keeps of a ``val/...`` or ``test/...`` metric, by the last part of its name or that
# part's first word (``loss_cls``, ``acc_top5``): the best value instead of the last one. Train metrics
# are noisy per-step values and keep the last. ``elbo`` is left out on purpose: some log the bound
# (to maximize), others its negative (to minimize).
SUMMARY_BY_QUANTITY = {
    **dict.fromkeys(
        ("loss", "nll", "ppl", "bpc", "bpd", "bpt", "kl", "fid", "error", "err", "wer", "cer", "mse", "mae"),
        "min",
    ),
    **dict.fromkeys(
        ("acc", "bleu", "bleu4", "chrf", "exact_match", "f1", "precision", "recall", "auroc", "psnr", "ssim"),
        "max",
    ),
}
BEST_SUMMARY_STAGES = ("val", "test")


def wandb_credentials_found() -> bool:
    """Whether ``wandb`` would find an API key without asking for one."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    # Looked up as wandb does: the machine is the URL's host:port (what `wandb login --host` writes),
    # and an entry without a password is no API key.
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(str(path)).authenticators(host) if path.is_file() else None
    except (netrc.NetrcParseError, OSError):
        return False
    return entry is not None and bool(entry[2])


def summary_of(name: str) -> str | None:
    """The W&B summary for metric ``name`` (``"min"``/``"max"``), or None for W&B's default (last)."""
    stage, _, quantity = name.rpartition("/")
    if stage.rpartition("/")[2] not in BEST_SUMMARY_STAGES:
        return None
    return SUMMARY_BY_QUANTITY.get(quantity) or SUMMARY_BY_QUANTITY.get(quantity.split("_")[0])


class WandbLogger(_WandbLogger):
    """Lightning's WandbLogger, online or offline by itself.

    - **Config**: under the CLI the run config is the full resolved LightningCLI config, nested as in
      ``config.yaml`` (see :class:`SaveConfig`); the module's and DataModule's saved hyperparameters,
      which repeat its ``model`` and ``data`` sections, are not added again, flat, beside it (sizes
      linked from the data, such as ``vocab_size``, are in the checkpoint and ``hparams.yaml``).
      Used from Python without the CLI, the run config is those hyperparameters, as with Lightning's.
    - **Summaries**: ``val/`` and ``test/`` metrics keep their best value in the run summary
      (``val/loss.min``, ``val/acc.max``; see ``SUMMARY_BY_QUANTITY``), plotted against
      ``trainer/global_step``; other metrics keep their last value.
    - **Checkpoints**: online runs upload the best and last checkpoints of each ``ModelCheckpoint`` as
      ``model`` artifacts when training ends (``log_model=True``, the default; ``"all"`` uploads every
      checkpoint as it is written). Offline runs never do: artifacts need a server.
    - **Resuming**: pass the run's ``id`` (or set ``WANDB_RUN_ID``) with ``resume="allow"`` to continue
      the same W&B run after a restart. Offline, each restart writes a new ``offline-run-*`` folder
      for that same run id; sync them in order.

    Args:
        name: display name of the run.
        save_dir: the folder under which ``wandb/`` run files are written.
        project: the W&B project.
        offline: force offline (True) or online (False); None decides from ``WANDB_MODE`` and the
            credentials found.
        log_model: upload checkpoints as artifacts (online only).
        id: the run id, to resume a run.
        resume: ``wandb.init``'s resume mode: ``"allow"`` continues run ``id`` if it exists,
            ``"must"`` fails if it does not (online only), ``"never"`` fails if it does.
        tags: tags of the run.
        group: group of the run.
        **kwargs: passed to ``wandb.init``.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str = "runs",
        project: str = "lightning_seq",
        offline: bool | None = None,
        log_model: Literal["all"] | bool = True,
        id: str | None = None,
        resume: Literal["allow", "must", "never", "auto"] | bool | None = "allow",
        tags: list[str] | None = None,
        group: str | None = None,
        **kwargs: Any,
    ):
        if offline is None:
            offline = _offline_by_default(save_dir)
        if offline:
            log_model = False  # artifacts need a server
            if not {"WANDB_SILENT", "WANDB_QUIET"} & os.environ.keys():
                # W&B's own 7 lines only repeat where the run is and how to sync it (our line says it).
                # Its run settings do not reach the lines printed at exit; the variable does.
                os.environ["WANDB_SILENT"] = "true"
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(
            name=name, save_dir=save_dir, project=project, offline=offline, log_model=log_model, id=id,
            resume=resume, tags=tags, group=group, **kwargs,
        )  # fmt: skip
        if self._wandb_init.get("anonymous") is None:  # wandb warns that the setting is deprecated
            self._wandb_init.pop("anonymous", None)
        self._in_config: frozenset[str] = frozenset()  # hyperparameters the CLI config holds
        self._summaries_defined: set[str] = set()

    @rank_zero_only
    def log_config(self, config_yaml: str, covered: Iterable[str] = ()) -> None:
        """Make the full LightningCLI config (its YAML text) the run config, and a file of the run.

        Args:
            config_yaml: the config, as LightningCLI writes it to ``config.yaml``.
            covered: names of hyperparameters that the config holds already (the module's and the
                DataModule's); later :meth:`log_hyperparams` calls leave them out.
        """
        set_run_config(self.experiment, config_yaml)
        self._in_config = frozenset(covered)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        """Add ``params`` to the run config, except those the full CLI config holds already: the Trainer
        logs the module's and DataModule's hyperparameters, which repeat its ``model`` and ``data``
        sections, flat and under other names. Other values (logged by hand) are kept."""
        params = {key: value for key, value in _convert_params(params).items() if key not in self._in_config}
        if params:
            super().log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics``; the first time a metric is seen, define its summary (see ``summary_of``)."""
        for name in metrics.keys() - self._summaries_defined:
            self._define_summary(name)
        super().log_metrics(metrics, step)

    def _define_summary(self, name: str) -> None:
        self._summaries_defined.add(name)
        summary = summary_of(name)
        if summary is None:
            return
        full_name = f"{self._prefix}{self.LOGGER_JOIN_CHAR}{name}" if self._prefix else name
        # A metric's own definition replaces the `*` one Lightning made, so it repeats the x-axis.
        step_metric = "global_step" if self._wandb_init.get("sync_tensorboard") else "trainer/global_step"
        self.experiment.define_metric(full_name, step_metric=step_metric, summary=summary)


def _offline_by_default(save_dir: str) -> bool:
    """Offline unless ``WANDB_MODE`` says otherwise or credentials exist; says so when it falls back."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    # Not for WANDB_MODE=disabled: Lightning would then set WANDB_MODE=dryrun and write a run anyway.
    offline = mode in ("offline", "dryrun") or (
        mode not in ("online", "disabled") and not wandb_credentials_found()
    )
    if offline and mode not in ("offline", "dryrun", "disabled"):
        runs = Path(save_dir) / "wandb"
        rank_zero_info(
            "wandb: no credentials found (WANDB_API_KEY or `wandb login`), logging offline to "
            f"{runs}; upload later with `wandb sync {runs}/offline-run-*`"
        )
    return offline


def set_run_config(run: "Run", config_yaml: str) -> None:
    """Set the W&B ``run``'s config to the YAML config, nested, and save the YAML as ``CONFIG_FILE``.

    ``allow_val_change``: a sweep agent or a resumed run may have set some of these keys already.
    """
    run.config.update(yaml.safe_load(config_yaml), allow_val_change=True)
    if run.disabled:  # no run folder
        return
    path = Path(run.dir) / CONFIG_FILE
    path.write_text(config_yaml, encoding="utf-8")
    run.save(str(path), base_path=run.dir, policy="now")


class SaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the run folder, the same config on every W&B run, and the recipe's
    file names in every checkpoint.

    For each W&B logger of the trainer the run config becomes the full resolved config as nested
    dicts, shown and swept as ``model.init_args.optimizer.init_args.lr``, and the YAML is saved as a
    file of the run, ``lightning_config.yaml``. Rank zero only (Lightning calls ``save_config`` there).

    Before the config is written, the run folder of a CSV or TensorBoard logger is marked as this
    live run's (:func:`lightning_seq.runs.hold_run_folder`), so that no other run takes it for a
    leftover. Each checkpoint records the ``--config`` files as they were given, under
    ``callbacks.SaveConfig.recipe`` (read back by :func:`lightning_seq.checkpointing.recipe_of`).
    """

    _marker: IO[str] | None = None  # the run folder's marker, locked while this run lives

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.save_to_log_dir and not self.already_saved:
            folder = trainer.log_dir  # a collective under DDP, as in Lightning's setup: on every rank
            first = trainer.loggers[0] if trainer.loggers else None
            versioned = isinstance(first, (_CSVLogger, TensorBoardLogger))
            if trainer.is_global_zero and folder and versioned and self._marker is None:
                self._marker = hold_run_folder(Path(folder), stage)
        super().setup(trainer, pl_module, stage)

    def state_dict(self) -> dict[str, Any]:
        files = self.config.get("config") if hasattr(self.config, "get") else None
        return {"recipe": [str(file) for file in files or [] if file is not None]}

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, _WandbLogger)]
        if not loggers:
            return
        # The text of config.yaml: Lightning saves it with the same parser, config and skip_none=False.
        config_yaml = self.parser.dump(self.config, skip_none=False)
        covered = {*pl_module.hparams_initial, *getattr(trainer.datamodule, "hparams_initial", {})}
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.log_config(config_yaml, covered)
            else:  # Lightning's own logger: the config is set, but hyperparameters are added beside it
                set_run_config(logger.experiment, config_yaml)


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing ``metrics.csv`` instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])  # new columns rewrite the file, rows kept


class CSVLogger(_CSVLogger):
    """Lightning's CSVLogger; a run resumed into the same folder appends to its ``metrics.csv``.

    After a requeue every step appears once. After a crash (``kill -9``), the steps between the last
    checkpoint and the crash are trained and logged again: their rows appear twice, the later ones
    from the resumed run.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

"""The W&B logger: credentials, the offline fallback, and a real offline run read back from its files."""

import json
import logging
import struct
import zlib
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb
from wandb.proto import wandb_internal_pb2

from lightning_seq.callbacks import SampleGeneration
from lightning_seq.data import TextDataModule
from lightning_seq.decoding import GenerationConfig
from lightning_seq.loggers import WandbLogger, wandb_credentials_found
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM

API_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters, the shape of a W&B key


# ------------------------------------------------------------------------------ reading .wandb files
# wandb 0.31 writes offline runs to ``run-<id>.wandb``: a 7-byte header (b":W&B", magic 0xBEE1 as
# little-endian uint16, version 0) followed by LevelDB-log-style records in 32 KiB blocks. Each
# physical record is a 7-byte header (CRC-32 of type byte + payload: uint32; payload length: uint16;
# type: 1 full, 2 first, 3 middle, 4 last chunk) and its payload; a block's tail shorter than a header
# is zero padding. Joined chunks are serialized ``wandb_internal_pb2.Record`` messages. The Python SDK
# no longer ships a reader (the Go core reads these files), hence this one.

_BLOCK = 32 * 1024
_HEADER = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list[wandb_internal_pb2.Record]:
    """All records of a ``.wandb`` run file, in order; checks the file header and every checksum."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    records, chunks, pos = [], [], 7
    while pos + _HEADER.size <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER.size:  # padding at the end of a block
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if kind == 0 and length == 0:  # preallocated, never written
            continue
        assert zlib.crc32(bytes([kind]) + payload) == crc, f"{path}: bad checksum at byte {pos}"
        chunks.append(payload)
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
            chunks = []
    return records


def _items(items) -> dict:
    """``{key: value}`` of history/config/summary items (values are stored as JSON). A media value
    (a table, an image) comes as several items under a nested key, e.g. ``("samples", "path")``; they
    are gathered into one dict: ``{"samples": {"path": ..., "_type": "table-file", ...}}``."""
    out: dict = {}
    for item in items:
        *parents, last = item.nested_key or [item.key]
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = json.loads(item.value_json)
    return out


def read_wandb_run(run_dir: Path) -> dict:
    """An offline run folder read back: ``history`` (one dict per logged row), ``config``, ``summary``
    (the last value of each key) and ``exit_code`` (None if the run was not finished)."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    run = {"history": [], "config": {}, "summary": {}, "exit_code": None}
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


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


# ------------------------------------------------------------------------------- a real offline run
class LossRecorder(L.Callback):
    """The training loss of every step, as the module returned it."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses[trainer.global_step - 1] = outputs["loss"].item()  # global_step already counts this step


def test_offline_run_holds_the_losses_samples_and_config(
    no_credentials, fresh_wandb, tmp_path, corpus_file, caplog
):
    caplog.set_level(logging.INFO, logger=HINT_LOGGER)
    L.seed_everything(0)
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    model = LanguageModel(
        RNNLM.from_preset("tiny", dm.vocab_size), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        warmup_steps=3, carry_state=True,
    )  # fmt: skip
    logger = WandbLogger(save_dir=str(tmp_path), name="t")  # no WANDB_MODE, no credentials: offline
    assert logger._offline and _hints(caplog)
    recorder = LossRecorder()
    samples = SampleGeneration(
        ["the cat"], every_n_steps=5, every_n_epochs=None, print_at_end=False,
        generation=GenerationConfig(strategy="greedy", max_new_tokens=8),
    )  # fmt: skip
    trainer = L.Trainer(
        max_steps=10, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1, limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[recorder, samples],
    )  # fmt: skip
    try:
        trainer.fit(model, dm)
    finally:
        logger.experiment.finish()  # the run file is complete only once the run is finished

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert (run_dir / f"run-{logger.version}.wandb").is_file()
    run = read_wandb_run(run_dir)
    assert run["exit_code"] == 0

    rows = [row for row in run["history"] if "train/loss" in row]
    assert [row["trainer/global_step"] for row in rows] == list(range(10))
    assert [row["train/loss"] for row in rows] == pytest.approx(
        [recorder.losses[s] for s in range(10)], rel=1e-6
    )
    assert run["summary"]["train/loss"] == pytest.approx(recorder.losses[9], rel=1e-6)

    # SampleGeneration's text tables: logged at steps 5 and 10, each a table file among the run's files.
    tables = [(row["trainer/global_step"], row["samples"]) for row in run["history"] if "samples" in row]
    assert [step for step, _ in tables] == [5, 10]
    for step, table in tables:
        assert table["_type"] == "table-file" and table["nrows"] == 1
        content = json.loads((run_dir / "files" / table["path"]).read_text())
        assert content["columns"] == ["step", "prompt", "text"]
        ((logged_step, prompt, text),) = content["data"]
        assert logged_step == step and prompt == "the cat" and text.startswith("the cat")

    assert run["config"]["warmup_steps"] == 3  # the model's hyperparameters
    assert run["config"]["lr_schedule"] == "cosine"
    assert run["config"]["block_size"] == 32 and run["config"]["batch_size"] == 8  # and the data's

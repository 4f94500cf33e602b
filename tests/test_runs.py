"""Run folders, `--ckpt_path last` and the batch script `lightning-seq submit` writes (no cluster needed)."""

import os
import time
from pathlib import Path

import pytest
import torch
from clitools import REPO, SMOKE, assert_one_error, ok

from lightning_seq.errors import InputError
from lightning_seq.runs import plan_fit
from lightning_seq.slurm import BODY

RECIPE = str(REPO / "recipes" / "char_lstm.yaml")


def test_submit_dry_run_takes_the_numbers_from_the_recipe_and_the_options(cli, tmp_path):
    fragment = tmp_path / "gpus.yaml"
    fragment.write_text("trainer: {devices: 4, num_nodes: 2, accelerator: gpu}\n")
    args = ["submit", "--config", RECIPE, "--config", str(fragment), "--time", "12:00:00",
            "--partition", "gpu", "--dry-run", "--model.init_args.optimizer.init_args.lr=0.001"]  # fmt: skip
    script = ok(cli(*args, cwd=tmp_path)).stdout
    lines = script.splitlines()
    for option in ("--job-name=char_lstm", "--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4",
                   "--time=12:00:00", "--partition=gpu", "--signal=USR1@90", "--requeue"):  # fmt: skip
        assert f"#SBATCH {option}" in lines, script
    assert "--trainer.accelerator=gpu --model.init_args.optimizer.init_args.lr=0.001" in script
    assert script.endswith(BODY + "\n")
    assert list((tmp_path / "runs" / "slurm").glob("char_lstm-*.sbatch"))  # kept as the record

    cpu = ok(
        cli("submit", "--config", RECIPE, "--nodes", "1", "--tasks-per-node", "2", "--dry-run", cwd=tmp_path)
    )
    assert "#SBATCH --ntasks-per-node=2" in cpu.stdout and "--gpus-per-node" not in cpu.stdout
    assert "--trainer.accelerator=cpu" in cpu.stdout


def test_submit_and_resume_name_what_is_missing(cli, tmp_path):
    missing = cli("submit", "--config", "recipes/nope.yaml", "--dry-run", cwd=tmp_path)
    assert_one_error(missing, "'recipes/nope.yaml' does not exist", "submit, missing recipe")
    last = cli("fit", "--config", RECIPE, "--config", SMOKE, "--ckpt_path", "last", cwd=tmp_path)
    message = (
        "--ckpt_path last: no checkpoint at 'runs/char_lstm/*/checkpoints/last.ckpt'. Fix: train first "
        "(no run under 'runs/char_lstm' has saved a last.ckpt yet)"
    )
    assert_one_error(last, message, "last")
    assert not (tmp_path / "runs" / "char_lstm").exists()


def test_last_resumes_the_newest_run_in_its_folder_and_w_and_b_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for version, (age, run_id) in {"version_0": (100, "older"), "version_1": (10, "newer"),
                                   "version_2": (200, "oldest")}.items():  # fmt: skip
        path = Path("runs", "job", version, "checkpoints", "last.ckpt")
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {}, "callbacks": {"RunIdentity": {"wandb_id": run_id}}}, path)
        os.utime(path, (time.time() - age,) * 2)
    Path("runs/job/version_3/checkpoints").mkdir(parents=True)  # the newest run: died before saving
    loggers = [
        {"class_path": "lightning_seq.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "job"}},
        {"class_path": "lightning_seq.loggers.WandbLogger", "init_args": {"save_dir": "runs", "name": "job"}},
    ]
    config = {"trainer": {"logger": loggers}, "ckpt_path": "last"}
    plan_fit(config)
    assert config["ckpt_path"] == str(Path("runs/job/version_1/checkpoints/last.ckpt"))
    assert loggers[0]["init_args"]["version"] == "version_1" and loggers[1]["init_args"]["id"] == "newer"

    (tmp_path / "runs/job/version_1/checkpoints/last.ckpt").write_bytes(b"cut")  # a torn copy
    torn = r"^--ckpt_path: '.*version_1/checkpoints/last\.ckpt' is not a readable checkpoint"
    with pytest.raises(InputError, match=torn):
        plan_fit({"trainer": {"logger": loggers}, "ckpt_path": "last"})

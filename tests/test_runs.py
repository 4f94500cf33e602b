"""Run folders, `--ckpt_path last` and the batch script `lightning-seq submit` writes (no cluster needed)."""

import os
import time
from pathlib import Path
from typing import IO

import pytest
import torch
from clitools import REPO, SMOKE, assert_one_error, ok

from lightning_seq.errors import InputError
from lightning_seq.runs import hold_run_folder, plan_evaluation, plan_fit, predictions_file, remove_leftovers
from lightning_seq.slurm import BODY

RECIPE = str(REPO / "recipes" / "char_lstm.yaml")
JOB = {"class_path": "lightning_seq.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "job"}}


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


def test_last_says_which_run_it_resumes_when_a_newer_run_has_no_checkpoint(
    tmp_path, monkeypatch, lightning_log
):
    monkeypatch.chdir(tmp_path)
    old = Path("runs/job/version_0/checkpoints/last.ckpt")
    old.parent.mkdir(parents=True)
    torch.save({"state_dict": {}, "global_step": 40}, old)
    os.utime(old, (time.time() - 60,) * 2)
    newer = hold_run_folder(Path("runs/job/version_1"), "fit")  # started after that save, saved nothing
    newer.close()
    validation = hold_run_folder(Path("runs/job/version_2"), "validate")  # not a training run
    validation.close()
    config = {"trainer": {"logger": JOB}, "ckpt_path": "last"}
    assert plan_fit(config) == "version_0" and config["ckpt_path"] == str(old)
    said = {message for message in lightning_log.messages if message.startswith("--ckpt_path last")}
    assert said == {
        "--ckpt_path last: resuming 'runs/job/version_0' from its last.ckpt (step 40); the newer run "
        "'runs/job/version_1' has no checkpoint."
    }


def test_only_ended_runs_that_hold_nothing_but_their_config_are_leftovers(tmp_path, lightning_log):
    runs = tmp_path / "job"

    def run(name: str, *files: str, live: bool = False, marker: bool = True) -> IO[str] | None:
        folder = runs / name
        folder.mkdir(parents=True)
        held = hold_run_folder(folder, "fit") if marker else None
        for file in files:
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            if not file.endswith("/"):
                (folder / file).write_text("x")
        if held is not None and not live:
            held.close()  # its process ended
        return held

    run("version_0", "config.yaml")
    run("version_1", "config.yaml", "hparams.yaml", "tokenizer.json", "src_tokenizer.json", "checkpoints/")
    live = run("version_2", "config.yaml", live=True)  # preparing its data, on this or another host
    run("version_3", "config.yaml", marker=False)  # from an older version, or made by hand
    run("version_4", "config.yaml", "hparams.yaml", "metrics.csv")  # it took steps
    run("version_5", "config.yaml", "checkpoints/epoch=0.ckpt")
    run("version_6", "hparams.yaml")  # no config
    run("version_7", "config.yaml", "predictions/step_000000.png")  # died after its sanity check
    run("version_8", "config.yaml", "predictions/step_000002.png")  # validated after two steps
    run("slurm-7", "config.yaml")  # the folder this run continues
    (runs / "notes.txt").write_text("not a run")
    try:
        removed = [runs / "version_0", runs / "version_1", runs / "version_7"]
        assert remove_leftovers(runs, keep="slurm-7") == removed
    finally:
        live.close()
    assert sorted(p.name for p in runs.iterdir()) == [
        "notes.txt", "slurm-7", "version_2", "version_3", "version_4", "version_5", "version_6", "version_8"
    ]  # fmt: skip
    said = (
        f"{runs}: removed version_0, version_1, version_7, left by runs that stopped before their first step"
    )
    assert said in lightning_log.text
    assert remove_leftovers(runs, keep="slurm-7") == [runs / "version_2"]  # its run has ended now


def test_best_names_the_newest_checkpoint_to_give_instead(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, age in (("epoch=3-step=40.ckpt", 50), ("last.ckpt", 10), ("epoch=1-step=20.ckpt", 90)):
        path = Path("runs/job/version_0/checkpoints") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age,) * 2)
    config = {"trainer": {"logger": JOB}, "ckpt_path": "best"}
    best = r"e\.g\. 'runs/job/version_0/checkpoints/epoch=3-step=40\.ckpt' \(the newest\)\.$"
    with pytest.raises(InputError, match=rf"^--ckpt_path best: .* `lightning test` has none\. Fix: .*{best}"):
        plan_evaluation(config, "test")
    elsewhere = {"trainer": {"default_root_dir": "other", "logger": None}, "ckpt_path": "last"}
    with pytest.raises(InputError, match=r"^--ckpt_path last: no checkpoint at 'other/lightning_logs/\*/"):
        plan_evaluation(elsewhere, "predict")


def test_predictions_go_beside_the_checkpoint_or_to_the_output_given(tmp_path):
    run = tmp_path / "runs" / "swin" / "version_3"
    assert predictions_file(str(run / "checkpoints" / "best.ckpt"), None) == run / "predictions_best.jsonl"
    loose = tmp_path / "shared" / "model.ckpt"  # not in a run folder: its own folder
    assert predictions_file(str(loose), None) == tmp_path / "shared" / "predictions_model.jsonl"
    assert predictions_file(str(loose), str(tmp_path / "out.jsonl")) == tmp_path / "out.jsonl"
    assert predictions_file(str(loose), str(tmp_path)) == tmp_path / "predictions_model.jsonl"  # a folder
    assert predictions_file(None, None) == Path("predictions.jsonl")  # untrained weights: here

"""slurm/ and ``lightning-seq submit`` on a real single-node Slurm cluster started for the tests.

The ``slurm_cluster`` fixture installs (Debian packages, as root) and starts the cluster with
``slurm/local/cluster.sh``, and stops what it started. Where Slurm cannot be installed the tests
are skipped, except under CI (``CI`` set), where that is a failure.
"""

import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from clitools import REPO, checkpointing_fragment
from wandbfiles import read_wandb_run

from lightning_seq.slurm import BODY

CLUSTER = REPO / "slurm" / "local" / "cluster.sh"
TRAIN, SWEEP = REPO / "slurm" / "train.sbatch", REPO / "slurm" / "sweep.sbatch"
RECIPE = str(REPO / "recipes" / "char_lstm.yaml")

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


@pytest.fixture(scope="session")
def slurm_cluster():
    """The environment for sbatch/squeue with a running local cluster (4 CPUs declared on 2 cores)."""
    if shutil.which("slurmctld") is None:
        if os.geteuid() != 0 and not os.environ.get("CI"):
            pytest.skip(
                "Slurm is not installed and installing it needs root: bash slurm/local/cluster.sh install"
            )
        subprocess.run(["bash", str(CLUSTER), "install"], check=True)
    state = Path(tempfile.mkdtemp(prefix="lightning_seq_slurm-"))
    state.chmod(0o755)  # munged refuses a socket below a folder that others cannot enter
    env = {**os.environ, "LIGHTNING_SEQ_SLURM_DIR": str(state), "LIGHTNING_SEQ_SLURM_CPUS": "4"}
    started = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    env["SLURM_CONF"] = re.search(r"SLURM_CONF=(\S+)", started.stdout).group(1)
    yield env
    subprocess.run(["bash", str(CLUSTER), "stop"], env=env, check=True)
    shutil.rmtree(state, ignore_errors=True)


def _job_env(cluster_env: dict) -> dict:
    """What a job inherits from sbatch: our environment, with this Python's scripts on the PATH."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    return {**os.environ, **cluster_env, "PATH": path, "PYTHONWARNINGS": "ignore"}


def _sbatch(env: dict, cwd: Path, *args: str, timeout: int = 600) -> tuple[int, str, str]:
    """``sbatch --wait ARGS``: (final exit status, job id, the job's output file text)."""
    out = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--output=job-%j.out", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    job = out.stdout.strip().split(";")[0]
    assert job.isdigit(), out.stderr
    log = cwd / f"job-{job}.out"
    return out.returncode, job, log.read_text() if log.is_file() else ""


def _fragment(folder: Path, steps: int, hidden: int = 128) -> str:
    """A char LSTM on shuffled windows: last.ckpt every 5 steps, a CSV row at every step."""
    net = {"embed_dim": 32, "hidden_size": hidden, "num_layers": 1, "dropout": 0.1}
    data = {"mode": "window", "block_size": 64, "batch_size": 8}
    return checkpointing_fragment(folder, steps, 5, 25, net, data, seed=3)


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_batch_scripts_end_with_the_shared_body():
    """slurm/train.sbatch, slurm/sweep.sbatch and the scripts `submit` writes run the same commands."""
    assert TRAIN.read_text().endswith(BODY) and SWEEP.read_text().endswith(BODY)


def test_train_sbatch_runs_a_recipe_as_two_process_ddp(slurm_cluster, tmp_path):
    env = _job_env(slurm_cluster)
    status, job, log = _sbatch(
        env, tmp_path, "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
        str(TRAIN), "--config", RECIPE, "--config", _fragment(tmp_path, 10), "--trainer.accelerator=cpu",
    )  # fmt: skip
    assert status == 0, log[-3000:]
    assert "MEMBER: 2/2" in log, log[-3000:]  # Lightning's "Initializing distributed" of rank 1
    run = tmp_path / "runs" / "job" / f"slurm-{job}"
    assert _last(run)["global_step"] == 10
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()


def test_requeue_on_the_time_limit_resumes_and_ends_with_the_uninterrupted_weights(slurm_cluster, tmp_path):
    """A 2-minute job warned 60 s before its limit (slurmctld sends it 30-60 s after the start) saves
    last.ckpt, exits 3, is requeued, resumes in the same folder and W&B run, and finishes with the
    step count and weights of the same job run without a limit, and with every step logged once."""
    env = _job_env(slurm_cluster)
    steps = 1400  # longer than the 30-60 s before the warning, even on a faster machine
    common = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1"]
    fit = [
        "--config",
        RECIPE,
        "--config",
        _fragment(tmp_path, steps, hidden=256),
        "--trainer.accelerator=cpu",
    ]
    limited = subprocess.Popen(
        ["sbatch", "--wait", "--parsable", "--output=job-%j.out", *common, "--time=2", "--signal=USR1@60",
         str(TRAIN), *fit],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    status, ref_job, ref_log = _sbatch(env, reference_dir, *common, "--time=20", str(TRAIN), *fit)
    assert status == 0, ref_log[-3000:]
    out, err = limited.communicate(timeout=900)
    job = out.strip().split(";")[0]
    log = (tmp_path / f"job-{job}.out").read_text()
    assert limited.returncode == 0, err + log[-3000:]
    requeues = log.count("requeueing job")  # each run of the job gets the warning 30-60 s in
    assert requeues >= 1, log[-3000:]
    print(f"requeued {requeues} time(s); job {job}")

    run, reference = (
        tmp_path / "runs" / "job" / f"slurm-{job}",
        reference_dir / "runs" / "job" / f"slurm-{ref_job}",
    )
    saved, expected = _last(run), _last(reference)
    assert saved["global_step"] == expected["global_step"] == steps
    for name, value in expected["state_dict"].items():
        assert torch.equal(saved["state_dict"][name], value), name

    with (run / "metrics.csv").open() as f:
        train_steps = [int(row["step"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert sorted(train_steps) == list(range(steps)), "a step is missing or was logged twice"

    wandb_runs = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == requeues + 1 and len({p.name.rsplit("-", 1)[1] for p in wandb_runs}) == 1
    history = [row for p in wandb_runs for row in read_wandb_run(p)["history"] if "train/loss" in row]
    steps_logged = [row["trainer/global_step"] for row in history]
    assert sorted(steps_logged) == sorted(set(steps_logged)), "a step was logged twice"
    assert set(steps_logged) == set(range(steps)), "a step is missing"


def test_a_job_whose_tasks_do_not_match_the_devices_fails_with_one_message(slurm_cluster, tmp_path):
    """Instead of waiting forever at "Initializing distributed"."""
    env = _job_env(slurm_cluster)
    fit = f"lightning fit --config {RECIPE} --config {_fragment(tmp_path, 4)} --trainer.accelerator=cpu"
    cases = {
        "--ntasks-per-node=2 on --nodes=1": (["--ntasks-per-node=2"], f"srun {fit} --trainer.devices=1"),
        "without --ntasks-per-node": (["--ntasks=2"], f"srun {fit} --trainer.devices=2"),
        "the batch script itself": (["--ntasks-per-node=2"], f"{fit} --trainer.devices=2"),
    }
    for message, (options, command) in cases.items():
        status, _, log = _sbatch(
            env, tmp_path, *options, "--cpus-per-task=1", "--time=2", f"--wrap={command}"
        )
        assert status == 2, f"{message}: exit {status}\n{log[-2000:]}"
        errors = {line for line in log.splitlines() if line.startswith("error: Slurm:")}
        assert len(errors) == 1 and message in errors.pop(), log[-2000:]


def test_submit_writes_the_script_and_submits_it(slurm_cluster, tmp_path):
    fragment = _fragment(tmp_path, 6)
    env = _job_env(slurm_cluster)
    done = subprocess.run(
        [sys.executable, "-m", "lightning_seq", "submit", "--config", RECIPE, "--config", fragment,
         "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "00:05:00", "--trainer.max_steps=5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job = re.search(r"Submitted batch job (\d+)", done.stdout).group(1)
    assert _wait(job, env) == "COMPLETED"
    assert _last(tmp_path / "runs" / "job" / f"slurm-{job}")["global_step"] == 5


def _wait(job: str, env: dict, timeout: float = 120) -> str:
    """Wait for a job to finish; its final state (squeue keeps finished jobs for MinJobAge = 30 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], env=env,
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish in {timeout} s: {state}")


def test_sweep_array_trains_one_line_of_overrides_per_task(slurm_cluster, tmp_path):
    lrs = ["0.001", "0.003"]
    overrides = tmp_path / "lrs.txt"
    overrides.write_text("".join(f"--model.init_args.optimizer.init_args.lr={lr}\n" for lr in lrs))
    status, job, _ = _sbatch(
        _job_env(slurm_cluster), tmp_path, "--array=0-1", "--gpus-per-node=0", "--cpus-per-task=1",
        "--output=job-%A_%a.out", str(SWEEP), str(overrides), "--config", RECIPE, "--config",
        _fragment(tmp_path, 5), "--trainer.accelerator=cpu",
    )  # fmt: skip
    assert status == 0, "\n".join(p.read_text()[-2000:] for p in tmp_path.glob("job-*.out"))
    for task, lr in enumerate(lrs):
        run = tmp_path / "runs" / "job" / f"slurm-{job}_{task}"
        assert _last(run)["global_step"] == 5
        config = (run / "config.yaml").read_text()
        assert f"lr: {lr}" in config, config


def test_outside_a_slurm_allocation_there_is_no_hint_to_launch_with_srun(
    slurm_cluster, cli, tmp_path, monkeypatch
):
    """Lightning warns that ``srun`` "is available on your system but is not used" wherever Slurm is
    installed; outside an allocation that is noise on every command, so the command line drops it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    with pytest.warns(UserWarning, match="`srun` command is available"):  # Lightning's own, here
        SLURMEnvironment._validate_srun_used()
    fragments = REPO / "recipes" / "fragments"
    result = cli(
        "fit", "--config", RECIPE, "--config", str(fragments / "smoke.yaml"),
        "--config", str(fragments / "csv_only.yaml"), cwd=tmp_path, env={"PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "`srun` command is available" not in result.stderr

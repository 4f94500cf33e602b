"""The GAN recipes (DCGAN, class-conditional GAN) through the command line: fresh processes, the real
recipes at the nano size on a few hundred embedded scenes, samples from their checkpoints in fresh
processes, bad settings refused with one line, and kill -9 resumes (at a logged step, and between a
discriminator and a generator update) that end with the uninterrupted weights of both nets, both
optimizers and the moving average."""

import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from clitools import (
    FEW_SAMPLES,
    REPO,
    SMALL_IMAGES,
    SMOKE,
    assert_one_error,
    checkpointing_fragment,
    kill_after,
    metric_columns,
    ok,
    run_dir,
    samples_in_a_fresh_process,
)

RECIPE = {name: str(REPO / "recipes" / f"{name}.yaml") for name in ("dcgan", "cgan")}
NANO = "--model.init_args.net.init_args.preset=nano"


@pytest.mark.parametrize("name", RECIPE)
def test_both_gan_recipes_train_validate_and_sample_through_the_cli(name, cli, tmp_path):
    recipe = RECIPE[name]
    ok(cli("fit", "--config", recipe, "--config", SMOKE, *SMALL_IMAGES, NANO, *FEW_SAMPLES, cwd=tmp_path))
    run = run_dir(tmp_path, name)
    columns = metric_columns(run)
    expected = {"train/loss_d", "train/loss_g", "train/d_real", "train/d_fake", "val/loss_d", "val/loss_g"}
    assert expected | {"val/fid", "val/kid"} <= columns, columns
    assert ("val/cond_acc" in columns) == (name == "cgan")
    steps = [int(line.split(",")[1]) for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert max(steps) == 3, "max_steps=4 counts generator steps (one discriminator step each)"

    # the checkpoint alone rebuilds the model: two fresh processes draw the same images
    best = run / "checkpoints" / "best.ckpt"
    arguments = "8, labels=torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])" if name == "cgan" else "8"
    first, second = (samples_in_a_fresh_process("GAN", best, tmp_path, arguments) for _ in range(2))
    assert first == second
    images = torch.tensor(first)
    assert images.shape == (8, 3, 32, 32)
    assert images.min() >= -1.0 and images.max() <= 1.0  # the data's convention: symmetric pixels


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("cgan", "--data.init_args.labels=none", "a class-conditional model needs the number of classes"),
        (
            "dcgan",
            "--model.init_args.net.init_args.latent_size=0",
            "model.init_args.net.init_args.latent_size",
        ),
        ("dcgan", "--data.init_args.image_size=28", "data.init_args.image_size=32"),
        ("dcgan", "--data.init_args.labels=class", "the net is conditioned on 6 classes"),
    ],
    ids=["conditional-on-unlabelled", "latent-size-0", "side-28", "unconditional-on-labelled"],
)
def test_bad_gan_settings_are_one_clear_line(name, setting, message, cli, tmp_path):
    result = cli(
        "fit", "--config", RECIPE[name], "--config", SMOKE, *SMALL_IMAGES, NANO, setting, cwd=tmp_path
    )
    assert_one_error(result, message, setting)
    assert not (tmp_path / "runs").exists(), "nothing is written before the settings are checked"


# A GAN that kills its own process (SIGKILL) right after the discriminator's update of the step
# KILL_AFTER_DISCRIMINATOR_AT, before the generator's: the weights then differ from every checkpoint.
KILLER = """
import os, signal
from lightning_seq.modules import GAN

class KilledBetweenUpdates(GAN):
    def discriminator_step(self, *args, **kwargs):
        stats = super().discriminator_step(*args, **kwargs)
        if str(self.global_step) == os.environ.get("KILL_AFTER_DISCRIMINATOR_AT"):
            os.kill(os.getpid(), signal.SIGKILL)
        return stats
"""


@pytest.mark.slow
def test_a_gan_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(cli, tmp_path):
    """Per-item noise is a function of the step and the item, and the checkpoint holds both nets, both
    optimizers, the moving average and the RNG (flips), so a run killed at a logged step, or
    between the two updates of a step, then resumed with ``--ckpt_path last``, ends bitwise where an
    uninterrupted one does (crossing epoch boundaries: 8 steps an epoch; two discriminator updates a step)."""
    (tmp_path / "killer.py").write_text(textwrap.dedent(KILLER))
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    data = {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 32, "num_workers": 0}
    steps = 42  # a multiple of the checkpoint interval (3): last.ckpt holds the final step

    def args(folder):
        folder.mkdir()
        fragment = checkpointing_fragment(folder, steps, 3, 10, {"preset": "nano"}, data)
        return [
            "fit", "--config", RECIPE["cgan"], "--config", fragment,
            "--model.class_path=killer.KilledBetweenUpdates", "--model.init_args.n_critic=2",
        ]  # fmt: skip

    reference = tmp_path / "reference"
    ok(cli(*args(reference), cwd=reference, env=env))
    expected = torch.load(reference / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    assert expected["global_step"] == steps

    def assert_resumes_to_the_reference(folder, killed):
        ok(cli(*killed, "--ckpt_path", "last", cwd=folder, env=env))
        state = torch.load(folder / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
        assert state["global_step"] == steps
        for key, value in expected["state_dict"].items():
            assert torch.equal(state["state_dict"][key], value), f"{folder.name}: {key} differs"
        for mine, theirs in zip(state["optimizer_states"], expected["optimizer_states"], strict=True):
            for param, moments in theirs["state"].items():
                for name, tensor in moments.items():
                    assert torch.equal(mine["state"][param][name], tensor), f"{folder.name}: optimizer {name}"

    folder = tmp_path / "kill-at-a-step"
    killed = args(folder)
    killed_at = kill_after(killed, folder, 17, env, column="train/loss_g")
    assert killed_at < steps - 1
    assert_resumes_to_the_reference(folder, killed)

    folder = tmp_path / "kill-between-updates"
    killed = args(folder)
    result = cli(*killed, cwd=folder, env={**env, "KILL_AFTER_DISCRIMINATOR_AT": "13"})
    assert result.returncode == -9, f"exit {result.returncode}: the run was to kill itself at step 13"
    assert_resumes_to_the_reference(folder, killed)


def test_the_gan_recipes_differ_only_in_their_model():
    """Same data (labels aside), length and evaluation, so their FID and KID line up on one W&B panel."""
    dcgan, cgan = (yaml.safe_load(Path(RECIPE[name]).read_text()) for name in ("dcgan", "cgan"))
    for recipe in (dcgan, cgan):
        recipe["data"]["init_args"].pop("labels")
        recipe["trainer"].pop("logger")  # named after the recipe
    assert dcgan["data"] == cgan["data"]
    assert dcgan["trainer"] == cgan["trainer"]

"""The diffusion recipes (DDPM, class-conditional DDPM with guidance) through the command line: fresh
processes, the real recipes at the nano size on a few hundred embedded scenes, samples from their
checkpoints in fresh processes (the moving average, identical twice), bad settings refused with one
line, and a kill -9 resume that ends with the uninterrupted weights of the net and of its average."""

from pathlib import Path

import pytest
import torch
import yaml
from clitools import (
    CSV_ONLY,
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
from imagefiles import write_hub_layout

RECIPE = {name: str(REPO / "recipes" / f"{name}.yaml") for name in ("ddpm", "ddpm_cond")}
NANO = "--model.init_args.net.init_args.preset=nano"
# FID/KID at a smoke run's size, of 10 DDIM steps, validating within the first epoch (the recipes
# validate every 4 epochs)
QUICK = [*FEW_SAMPLES, "--trainer.check_val_every_n_epoch=1", "--model.init_args.sample_steps=10"]


@pytest.mark.parametrize("name", RECIPE)
def test_both_diffusion_recipes_train_validate_and_sample_through_the_cli(name, cli, tmp_path):
    recipe = RECIPE[name]
    ok(cli("fit", "--config", recipe, "--config", SMOKE, *SMALL_IMAGES, NANO, *QUICK, cwd=tmp_path))
    run = run_dir(tmp_path, name)
    columns = metric_columns(run)
    assert {"train/loss", "val/loss", "val/fid", "val/kid"} <= columns, columns
    assert ("val/cond_acc" in columns) == (name == "ddpm_cond")

    # the checkpoint alone rebuilds the model and its moving average: two fresh processes draw the same
    best = run / "checkpoints" / "best.ckpt"
    state = torch.load(best, weights_only=True)["state_dict"]
    assert any(key.startswith("net_ema.") for key in state) and any(key.startswith("net.") for key in state)
    first, second = (samples_in_a_fresh_process("Diffusion", best, tmp_path, "6, steps=5") for _ in range(2))
    assert first == second
    images = torch.tensor(first)
    assert images.shape == (6, 3, 16, 16)
    assert images.min() >= -1.0 and images.max() <= 1.0  # the data's convention: symmetric pixels


# An unknown schedule or parameterisation is refused in tests/modules/test_diffusion.py; a conditional
# recipe on unlabelled data, for every generative family, in test_cli_gan.py and test_cli_generative.py.
@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("ddpm", "--model.init_args.guidance=3", "needs a class-conditional model"),
        ("ddpm", "--model.init_args.timesteps=1", "model.init_args.timesteps: expected an integer >= 2"),
        ("ddpm", "--data.init_args.image_size=18", "model.init_args.net.init_args.image_size"),
    ],
    ids=["guidance-unconditional", "one-step", "side-18"],
)
def test_bad_diffusion_settings_are_one_clear_line(name, setting, message, cli, tmp_path):
    result = cli("fit", "--config", RECIPE[name], "--config", SMOKE, *SMALL_IMAGES, setting, cwd=tmp_path)
    assert_one_error(result, message, setting)
    assert not (tmp_path / "runs").exists(), "nothing is written before the settings are checked"


@pytest.mark.slow
def test_a_diffusion_model_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(cli, tmp_path):
    """Timesteps, noise and label dropout are functions of the step and the item, and the checkpoint holds
    the net, its moving average, the optimizer and the RNG, so a resumed run (crossing epoch boundaries:
    8 steps an epoch) ends bitwise where an uninterrupted one does, average included."""
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    data = {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 32, "num_workers": 0}
    steps = 45

    def args(folder):
        folder.mkdir()
        fragment = checkpointing_fragment(folder, steps, 3, 10, {"preset": "nano", "dropout": 0.1}, data)
        return ["fit", "--config", RECIPE["ddpm_cond"], "--config", fragment]

    reference = tmp_path / "reference"
    ok(cli(*args(reference), cwd=reference, env=one_thread))
    expected = torch.load(reference / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    assert any(key.startswith("net_ema.") for key in expected["state_dict"])
    folder = tmp_path / "killed"
    killed = args(folder)
    killed_at = kill_after(killed, folder, 19, one_thread)
    assert killed_at < steps - 1
    ok(cli(*killed, "--ckpt_path", "last", cwd=folder, env=one_thread))
    state = torch.load(folder / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == expected["global_step"] == steps
    for key, value in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][key], value), f"killed at {killed_at}: {key} differs"


def test_the_diffusion_recipes_differ_only_in_conditioning():
    """Same data (labels aside), length, optimizer and evaluation, so their FID and KID line up."""
    ddpm, cond = (yaml.safe_load(Path(RECIPE[name]).read_text()) for name in ("ddpm", "ddpm_cond"))
    for recipe in (ddpm, cond):
        recipe["data"]["init_args"].pop("labels")
        recipe["trainer"].pop("logger")  # named after the recipe
        recipe["trainer"]["callbacks"][0]["init_args"].pop("per_class", None)
        for key in ("conditional", "label_dropout", "guidance"):
            recipe["model"]["init_args"].pop(key, None)
    assert ddpm == cond


@pytest.mark.slow
def test_one_override_trains_the_conditional_recipe_on_a_hub_dataset(cli, tmp_path):
    """Grey 28x28 images with 3 classes in the Hugging Face hub layout (as mnist; cifar10's is the same):
    the recipe trains with `--data.init_args.dataset` and, for FID/KID and cond_acc, a feature net trained
    on the same data by the resnet_se recipe; the classes flow into the U-Net and the module, and the
    images are read at the recipe's 16x16 RGB."""
    root = tmp_path / "digits"
    write_hub_layout(root, grey=True)
    data = [f"--data.init_args.dataset={root}", "--data.init_args.batch_size=8"]
    quick = ["--config", CSV_ONLY, "--config", SMOKE, *data]
    resnet = str(REPO / "recipes" / "resnet_se.yaml")
    ok(cli("fit", "--config", resnet, *quick, cwd=tmp_path))
    classifier = run_dir(tmp_path, "lightning_logs")  # csv_only.yaml's run name
    feature_net = classifier / "checkpoints" / "last.ckpt"
    sampling = [
        f"--trainer.callbacks.init_args.feature_net={feature_net}", "--trainer.check_val_every_n_epoch=1",
        "--trainer.callbacks.init_args.num_samples=16", "--trainer.callbacks.init_args.batch_size=8",
        "--trainer.callbacks.init_args.kid_subset_size=8", "--model.init_args.sample_steps=5",
    ]  # fmt: skip
    ok(cli("fit", "--config", RECIPE["ddpm_cond"], *quick, NANO, *sampling, cwd=tmp_path))
    run = run_dir(tmp_path, "lightning_logs")
    assert run != classifier and {"val/fid", "val/kid", "val/cond_acc"} <= metric_columns(run)
    hparams = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    net = hparams["net"]["init_args"]
    assert (net["in_channels"], net["num_classes"], net["image_size"]) == (3, 3, 16)
    assert hparams["num_classes"] == 3

"""Generative recipes (VAE, conv VAE, gated PixelCNN) through the command line: fresh processes, the
real recipes at the nano size on a few hundred embedded scenes, their checkpoints read back in fresh
processes, bad settings refused, and a kill -9 resume that ends with the uninterrupted weights."""

from pathlib import Path

import pytest
import torch
import yaml
from clitools import (
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

RECIPE = {name: str(REPO / "recipes" / f"{name}.yaml") for name in ("vae", "vae_conv", "pixelcnn")}
MODULE = {"vae": "VariationalAutoencoder", "vae_conv": "VariationalAutoencoder", "pixelcnn": "PixelCNNModel"}
NANO = "--model.init_args.net.init_args.preset=nano"
FEW_IWAE = {"vae": ["--model.init_args.iwae_samples=20"], "vae_conv": ["--model.init_args.iwae_samples=20"]}


def test_the_generative_recipes_share_one_dataset():
    """Same data in all three (batches aside), so their nats and bits/dim line up on one W&B panel."""
    data = [yaml.safe_load(Path(path).read_text())["data"] for path in RECIPE.values()]
    for d in data:
        d["init_args"].pop("batch_size")
    assert all(d == data[0] for d in data[1:])


@pytest.mark.parametrize("name", RECIPE)
def test_every_generative_recipe_trains_tests_and_samples_through_the_cli(name, cli, tmp_path):
    recipe = RECIPE[name]
    ok(cli("fit", "--config", recipe, "--config", SMOKE, *SMALL_IMAGES, NANO, cwd=tmp_path))
    run = run_dir(tmp_path, name)
    assert {"train/loss", "train/nll", "train/bpd", "val/loss", "val/nll", "val/bpd"} <= metric_columns(run)
    if name != "pixelcnn":
        assert {"val/elbo", "val/recon", "val/kl", "val/kl_dim/0", "val/active_units"} <= metric_columns(run)
    best = run / "checkpoints" / "best.ckpt"
    ok(cli("test", "--config", recipe, *SMALL_IMAGES, NANO, *FEW_IWAE.get(name, []), "--ckpt_path", str(best),
           "--trainer.logger=false", cwd=tmp_path))  # fmt: skip

    # the checkpoint alone rebuilds the model: two fresh processes draw the same images
    first, second = (samples_in_a_fresh_process(MODULE[name], best, tmp_path) for _ in range(2))
    assert first == second
    images = torch.tensor(first)
    assert images.shape == (8, 1, 28, 28)
    assert set(images.unique().tolist()) <= {0.0, 1.0}  # in the data's convention: binary pixels


def test_validate_measures_sample_quality_with_the_recipes_feature_net(cli, tmp_path):
    """``lightning validate`` always measures FID/KID (the default feature net: trained once, cached)."""
    ok(cli("fit", "--config", RECIPE["vae"], "--config", SMOKE, *SMALL_IMAGES, NANO, cwd=tmp_path))
    last = run_dir(tmp_path, "vae") / "checkpoints" / "last.ckpt"
    out = ok(cli("validate", "--config", RECIPE["vae"], *SMALL_IMAGES, NANO, "--ckpt_path", str(last),
                 "--trainer.limit_val_batches=2", cwd=tmp_path))  # fmt: skip
    assert "val/fid" in out.stdout and "val/kid" in out.stdout, out.stdout[-2000:]


@pytest.mark.parametrize(
    "name, setting, message",
    [
        ("pixelcnn", "--model.init_args.conditional=true", "needs the number of classes"),
        ("vae", "--data.init_args.pixels=uint8", "a bernoulli likelihood is a distribution of binary pixels"),
        ("vae", "--model.init_args.net.init_args.latent_size=0", "model.init_args.net.init_args.latent_size"),
        ("pixelcnn", "--data.init_args.labels=class", "the net is conditioned on 6 classes"),
    ],
    ids=["conditional-on-unlabelled", "uint8-with-bernoulli", "latent-size-0", "unconditional-on-labelled"],
)
def test_bad_generative_settings_are_one_clear_line(name, setting, message, cli, tmp_path):
    result = cli("fit", "--config", RECIPE[name], "--config", SMOKE, *SMALL_IMAGES, setting, cwd=tmp_path)
    assert_one_error(result, message, setting)
    assert not (tmp_path / "runs").exists(), "nothing is written before the settings are checked"


@pytest.mark.slow
def test_a_vae_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(cli, tmp_path):
    """Dynamic binarisation and the per-item reparameterisation noise are functions of the step and the
    item, so a resumed run (crossing epoch boundaries: 8 steps an epoch) ends bitwise where an
    uninterrupted one does."""
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    data = {"num_train": 256, "num_val": 64, "num_test": 64, "batch_size": 32}
    steps = 60
    net = {"preset": "conv_small", "widths": [8, 16], "hidden": [32]}  # the recipe's layout, narrower

    def args(folder):
        folder.mkdir()
        fragment = checkpointing_fragment(folder, steps, 3, 10, net, data)
        return ["fit", "--config", RECIPE["vae_conv"], "--config", fragment]

    reference = tmp_path / "reference"
    ok(cli(*args(reference), cwd=reference, env=one_thread))
    expected = torch.load(reference / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    for target in (13, 37):
        folder = tmp_path / f"kill{target}"
        killed = args(folder)
        killed_at = kill_after(killed, folder, target, one_thread)
        assert killed_at < steps - 1
        ok(cli(*killed, "--ckpt_path", "last", cwd=folder, env=one_thread))
        state = torch.load(folder / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
        assert state["global_step"] == expected["global_step"] == steps
        for key, value in expected["state_dict"].items():
            assert torch.equal(state["state_dict"][key], value), f"killed at {killed_at}: {key} differs"

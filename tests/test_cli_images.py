"""Image recipes through the command line: fresh processes, real recipes, the embedded scenes."""

import csv
import json
from pathlib import Path

import pytest
import torch
from clitools import (
    CSV_ONLY,
    DDP,
    RECIPES,
    REPO,
    SMALL_IMAGES,
    SMOKE,
    assert_one_error,
    metric_columns,
    ok,
    predictions_of,
    run_dir,
    run_python,
    snapshot,
)
from imagefiles import class_folders, write_hub_layout
from PIL import Image

IMAGE_RECIPES = [p for p in RECIPES if "lightning_seq.modules.ImageClassifier" in p.read_text()]
RESNET_SE = str(REPO / "recipes" / "resnet_se.yaml")


def needs_teacher(recipe: Path) -> bool:
    return "teacher:" in recipe.read_text()


@pytest.fixture(scope="module")
def teacher(cli, tmp_path_factory) -> tuple[Path, Path]:
    """A smoke run of recipes/resnet_se.yaml (CSV logging only): (working folder, best checkpoint)."""
    cwd = tmp_path_factory.mktemp("teacher")
    ok(cli("fit", "--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, *SMALL_IMAGES, cwd=cwd))
    return cwd, run_dir(cwd, "lightning_logs") / "checkpoints" / "best.ckpt"  # csv_only: default name


def test_there_are_four_image_classifier_recipes():
    assert {p.stem for p in IMAGE_RECIPES} == {"swin", "vit", "resnet_se", "deit"}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", IMAGE_RECIPES, ids=lambda p: p.stem)
def test_every_image_recipe_trains_through_the_cli(recipe, teacher, cli, tmp_path):
    extra = [f"--model.init_args.teacher={teacher[1]}"] if needs_teacher(recipe) else []
    ok(cli("fit", "--config", str(recipe), "--config", SMOKE, *SMALL_IMAGES, *extra, cwd=tmp_path))
    run = run_dir(tmp_path, recipe.stem)
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run / name).is_file(), name
    assert {"train/loss", "val/loss", "val/acc", "val/acc_top5"} <= metric_columns(run)
    if extra:
        assert {"train/loss_cls", "train/loss_distill"} <= metric_columns(run)
    grids = sorted((run / "predictions").glob("step_*.png"))
    assert grids and Image.open(grids[-1]).size[0] >= 4 * 96  # 16 labelled tiles, 4 a row
    assert list((tmp_path / "runs" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run"


def accuracy_in_a_fresh_process(ckpt: Path, cwd: Path) -> float:
    """Test accuracy of ``ImageClassifier.load_from_checkpoint`` (the checkpoint alone) on the same data."""
    script = f"""
        import torch
        from lightning_seq.data import ImageDataModule
        from lightning_seq.modules import ImageClassifier
        model = ImageClassifier.load_from_checkpoint({str(ckpt)!r}).eval()
        dm = ImageDataModule(num_train=256, num_val=64, num_test=64, batch_size=32, num_workers=0)
        dm.setup("test")
        right = total = 0
        with torch.no_grad():
            for batch in dm.test_dataloader():
                batch = dm.transform(batch, train=False)
                right += int((model(batch["image"]).argmax(-1) == batch["label"]).sum())
                total += len(batch["label"])
        print(right / total)
    """
    return float(run_python(script, cwd=cwd))


@pytest.mark.slow
def test_a_checkpoint_tests_and_predicts_alone_with_the_averaged_weights(teacher, cli):
    cwd, ckpt = teacher
    ok(
        cli(
            "test",
            "--config",
            RESNET_SE,
            "--config",
            CSV_ONLY,
            *SMALL_IMAGES,
            "--ckpt_path",
            str(ckpt),
            cwd=cwd,
        )
    )
    rows = list(csv.DictReader((run_dir(cwd, "lightning_logs") / "metrics.csv").open()))
    from_cli = float(next(r["test/acc"] for r in rows if r.get("test/acc")))
    assert accuracy_in_a_fresh_process(ckpt, cwd) == pytest.approx(from_cli, abs=1e-6)

    saved = torch.load(ckpt, weights_only=True)
    ema, current = saved["state_dict"], saved["current_model_state"]  # EMAWeightAveraging's layout
    assert any(not torch.equal(ema[k], current[k]) for k in ema if ema[k].is_floating_point())

    runs = sorted((cwd / "runs" / "lightning_logs").iterdir())
    predict = ["predict", "--config", RESNET_SE, "--config", CSV_ONLY, *SMALL_IMAGES, f"--ckpt_path={ckpt}"]
    result = ok(cli(*predict, cwd=cwd))
    # beside the checkpoint, in its run: no run folder of its own, and none of the warnings about the
    # callbacks that saved the checkpoint (weight averaging, checkpoint folder, missing callbacks)
    assert sorted((cwd / "runs" / "lightning_logs").iterdir()) == runs
    assert "WeightAveraging" not in result.stderr and "dirpath" not in result.stderr, result.stderr
    assert "callbacks used to create the checkpoint" not in result.stderr, result.stderr
    predictions = predictions_of(ckpt)
    shapes = {"circle", "square", "triangle", "star", "cross", "ring"}
    assert len(predictions) == 64 and all(p["pred"] in shapes and p["label"] in shapes for p in predictions)
    output = cwd / "elsewhere" / "rows.jsonl"
    result = ok(cli(*predict, f"--output={output}", cwd=cwd))
    assert [json.loads(line) for line in output.read_text().splitlines()] == predictions
    assert f"64 predictions written to {output}" in result.stdout


def test_bad_image_input_gets_one_clear_error(teacher, cli, tmp_path):
    cwd, _ = teacher
    folder = class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=3, sizes=((8, 8),))
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    before = snapshot(cwd / "runs")
    cases = {
        "corrupt image": ([f"--data.init_args.dataset={folder}"], "broken.png"),
        "missing folder": (["--data.init_args.dataset=no/such/folder"], "no/such/folder"),
        "missing teacher": ([f"--model.init_args.teacher={tmp_path}/none/*.ckpt"], "no checkpoint at"),
    }
    for case, (args, message) in cases.items():
        result = cli("fit", "--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, *args, cwd=cwd)
        assert_one_error(result, message, case)
    assert before.items() <= snapshot(cwd / "runs").items()  # the earlier run is untouched


@pytest.mark.slow
def test_one_override_switches_a_recipe_to_other_data(cli, tmp_path):
    """Grey 28x28 images in the Hugging Face hub layout (as mnist): channels and classes flow into the net."""
    root = tmp_path / "digits"
    write_hub_layout(root, grey=True)
    swin = str(REPO / "recipes" / "swin.yaml")
    data = [f"--data.init_args.dataset={root}", "--data.init_args.batch_size=8"]
    ok(cli("fit", "--config", swin, "--config", CSV_ONLY, "--config", SMOKE, *data, cwd=tmp_path))
    ckpt = run_dir(tmp_path, "lightning_logs") / "checkpoints" / "last.ckpt"
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    net = hparams["net"]["init_args"]
    assert (net["in_channels"], net["num_classes"], net["image_size"]) == (1, 3, 32)
    assert hparams["classes"] == ["a", "b", "c"]


@pytest.mark.slow
def test_two_process_ddp_trains_an_image_recipe_and_draws_on_rank_zero(cli, tmp_path):
    args = ["--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, *SMALL_IMAGES, *DDP]
    ok(cli("fit", *args, cwd=tmp_path, timeout=300))
    run = run_dir(tmp_path, "lightning_logs")
    assert {"val/acc", "val/acc_top5"} <= metric_columns(run)
    grids = [p.name for p in sorted((run / "predictions").glob("*.png"))]
    assert grids == ["step_000002.png", "step_000004.png"]

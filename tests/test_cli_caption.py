"""The captioning recipes through the command line: fresh processes, the real recipes at the nano size on a
few dozen embedded scenes, the caption metrics and attention maps of a run, test and predict from its
checkpoint, captions of image files from that checkpoint alone in a fresh process, real data in the COCO
layout with one override, bad data refused with one line, and a kill -9 resume that ends with the weights
of an uninterrupted run."""

import json
from pathlib import Path

import pytest
import torch
from clitools import (
    FEW_CAPTIONS,
    REPO,
    SMOKE,
    assert_one_error,
    checkpointing_fragment,
    kill_after,
    metric_columns,
    ok,
    predictions_of,
    run_dir,
    run_python,
)
from PIL import Image
from wandbfiles import read_wandb_run

from lightning_seq.modules.caption_metrics import coco_scores_unavailable

RECIPE = {name: str(REPO / "recipes" / f"{name}.yaml") for name in ("caption", "caption_transformer")}
NANO = "--model.init_args.net.init_args.preset=nano"
FEW_SCENES = [*FEW_CAPTIONS, "--trainer.check_val_every_n_epoch=1"]
METRICS = {f"val/bleu{n}" for n in range(1, 5)} | {"val/cider", "val/scene_acc", "val/loss", "val/ppl"}
METRICS |= {"val/grounding", "val/grounding_chance"}


def image_files(folder: Path, count: int = 3) -> list[Path]:
    """``count`` real PNG files of different sizes (the data resizes them)."""
    folder.mkdir(parents=True)
    files = []
    for i in range(count):
        image = Image.new("RGB", (40 + 8 * i, 36), (30 * i, 80, 200 - 40 * i))
        image.paste((250, 220, 40), (8, 8, 24, 24))
        files.append(folder / f"photo{i}.png")
        image.save(files[-1])
    return files


@pytest.mark.parametrize("name", RECIPE)
def test_both_caption_recipes_train_score_and_draw_attention_through_the_cli(name, cli, tmp_path):
    ok(cli("fit", "--config", RECIPE[name], "--config", SMOKE, NANO, *FEW_SCENES, cwd=tmp_path))
    run = run_dir(tmp_path, name)
    columns = metric_columns(run)
    assert columns >= METRICS, METRICS - columns
    assert sorted(p.name for p in (run / "attention").iterdir())[-1] == "step_000004.png"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "tokenizer" in state and state["image_stats"]["image_size"] == 32
    # on W&B (an offline run, read back from its files): the attention grid and the table of captions
    (wandb_run,) = (tmp_path / "runs").rglob("offline-run-*")
    logged = {key for row in read_wandb_run(wandb_run)["history"] for key in row}
    assert {"val/attention", "val/captions", "val/cider"} <= logged


def test_a_captioner_checkpoint_tests_predicts_and_captions_files_in_a_fresh_process(cli, tmp_path):
    ok(cli("fit", "--config", RECIPE["caption"], "--config", SMOKE, NANO, *FEW_SCENES, cwd=tmp_path))
    last = run_dir(tmp_path, "caption") / "checkpoints" / "last.ckpt"
    result = ok(cli("test", "--config", RECIPE["caption"], NANO, *FEW_CAPTIONS, f"--ckpt_path={last}",
                    "--trainer.logger=false", cwd=tmp_path))  # fmt: skip
    for name in ("test/bleu4", "test/cider", "test/scene_acc", "test/grounding", "test/grounding_chance"):
        assert name in result.stdout, name
    # the official COCO scores, by pycocoevalcap (its Java tokenizer and METEOR), or one line saying why not
    missing = coco_scores_unavailable()
    if missing is None:
        assert all(f"test/coco_{name}" in result.stdout for name in ("bleu4", "meteor", "rouge_l", "cider"))
    else:
        assert result.stderr.count("Official COCO caption scores skipped") == 1

    files = image_files(tmp_path / "photos")
    photos = f"--data.init_args.predict_images={tmp_path / 'photos'}"
    predict = ["predict", "--config", RECIPE["caption"], NANO, f"--ckpt_path={last}", photos, *FEW_CAPTIONS]
    ok(cli(*predict, cwd=tmp_path))
    rows = predictions_of(last)
    assert sorted(Path(r["file"]).name for r in rows) == [f.name for f in files]
    assert all(isinstance(r["caption"], str) and r["score"] <= 0 for r in rows)

    # the checkpoint alone captions the files, as predict did (same resizing and normalisation)
    script = (
        "import json\nfrom lightning_seq.modules import Captioner\n"
        f"model = Captioner.load_from_checkpoint({str(last)!r})\n"
        f"print(json.dumps(model.caption({[str(f) for f in sorted(files)]!r})))\n"
    )
    captions = json.loads(run_python(script, tmp_path).splitlines()[-1])
    by_file = {Path(r["file"]).name: r["caption"] for r in rows}
    assert captions == [by_file[f.name] for f in sorted(files)]


def write_coco(root: Path, broken: str | None = None) -> Path:
    """A COCO captions folder with real PNG files: ``annotations/captions_{train,val}2017.json`` and
    ``train2017/``, ``val2017/``; ``broken="json"`` cuts the val file short."""
    for split, count in (("train2017", 12), ("val2017", 4)):
        images = image_files(root / split, count)
        entries = [
            {"id": i + 1, "file_name": f.name, "height": 36, "width": 40} for i, f in enumerate(images)
        ]
        words = ["a yellow square on a blue photo", "a square in the top left", "yellow on blue"]
        notes = [
            {"id": 10 * e["id"] + k, "image_id": e["id"], "caption": text}
            for e in entries
            for k, text in enumerate(words)
        ]
        path = root / "annotations" / f"captions_{split}.json"
        path.parent.mkdir(exist_ok=True)
        text = json.dumps({"images": entries, "annotations": notes})
        path.write_text(text[:50] if broken == "json" and split == "val2017" else text)
    return root


def test_one_override_trains_the_recipe_on_a_coco_folder(cli, tmp_path):
    coco = write_coco(tmp_path / "coco")
    data = [
        f"--data.init_args.source={coco}",
        "--data.init_args.batch_size=4",
        "--trainer.check_val_every_n_epoch=1",
    ]
    ok(cli("fit", "--config", RECIPE["caption"], "--config", SMOKE, NANO, *data, cwd=tmp_path))
    columns = metric_columns(run_dir(tmp_path, "caption"))
    assert {"val/bleu4", "val/cider"} <= columns and "val/scene_acc" not in columns  # no scenes to parse


def test_a_malformed_coco_file_is_one_clear_line_and_nothing_is_written(cli, tmp_path):
    coco = write_coco(tmp_path / "coco", broken="json")
    setting = f"--data.init_args.source={coco}"
    result = cli("fit", "--config", RECIPE["caption"], "--config", SMOKE, NANO, setting, cwd=tmp_path)
    assert_one_error(result, "captions_val2017.json", setting)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_captioner_killed_with_sigkill_resumes_to_the_weights_of_an_uninterrupted_run(cli, tmp_path):
    """The caption drawn for each image is a function of the seed, the epoch and the image, and the
    checkpoint holds the optimizer, the RNG (dropout) and the loader's place, so a resumed run (crossing
    epoch boundaries: 4 steps an epoch) ends bitwise where an uninterrupted one does."""
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    data = {"train_size": 64, "val_size": 16, "test_size": 16, "batch_size": 16, "num_workers": 0}
    steps = 30

    def args(folder):
        folder.mkdir()
        fragment = checkpointing_fragment(folder, steps, 3, 10, {"preset": "nano", "dropout": 0.2}, data)
        return [
            "fit",
            "--config",
            RECIPE["caption"],
            "--config",
            fragment,
            "--model.init_args.decode_val_batches=0",
        ]

    reference = tmp_path / "reference"
    ok(cli(*args(reference), cwd=reference, env=one_thread))
    expected = torch.load(reference / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    folder = tmp_path / "killed"
    killed = args(folder)
    killed_at = kill_after(killed, folder, 13, one_thread)
    assert killed_at < steps - 1
    ok(cli(*killed, "--ckpt_path", "last", cwd=folder, env=one_thread))
    state = torch.load(folder / "runs/job/version_0/checkpoints/last.ckpt", weights_only=True)
    assert state["global_step"] == expected["global_step"] == steps
    for key, value in expected["state_dict"].items():
        assert torch.equal(state["state_dict"][key], value), f"killed at {killed_at}: {key} differs"


def test_the_caption_recipes_differ_only_in_their_decoder():
    """Same data, length, optimizer schedule and evaluation, so their scores line up."""
    import yaml

    lstm, transformer = (yaml.safe_load(Path(RECIPE[name]).read_text()) for name in RECIPE)
    for recipe in (lstm, transformer):
        recipe["trainer"].pop("logger")  # named after the recipe
        recipe["model"]["init_args"].pop("net")
        recipe["model"]["init_args"].pop("attention_penalty", None)
        recipe["model"]["init_args"]["optimizer"]["init_args"].pop("lr")
    assert lstm == transformer

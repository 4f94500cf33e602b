"""CaptionDataModule and the scene captions: five references per scene that parse back to its objects,
the embedded data through the real COCO reader, COCO / Karpathy / Flickr8k / Hugging Face files read
from real PNGs, batches as the captioner expects them, per-epoch caption draws, resume, sharding, and one
clear line for each kind of bad entry."""

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lightning_seq.data import CaptionDataModule, scenes
from lightning_seq.data.captions import read_coco
from lightning_seq.data.scenes import caption_variants, make_scene, parse_objects
from lightning_seq.data.tokenizers import TokenizerConfig
from lightning_seq.errors import InputError

SMALL = {"train_size": 40, "val_size": 10, "test_size": 10, "batch_size": 8, "num_workers": 0}
EVERY_WORD = TokenizerConfig(kind="word", min_frequency=1)


def png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def coco_folder(root: Path, val_words: str = "a dog on grass") -> Path:
    """COCO layout: 4 train images with 2 captions each, 2 val images with 1 each."""
    for name, count, text in (("train2017", 4, "a cat on a mat"), ("val2017", 2, val_words)):
        images, annotations = [], []
        for i in range(count):
            png(root / name / f"{i:012d}.jpg".replace(".jpg", ".png"), seed=i)
            images.append({"id": 100 + i, "file_name": f"{i:012d}.png", "height": 30, "width": 40})
            for j in range(2 if name.startswith("train") else 1):
                annotations.append(
                    {"id": len(annotations), "image_id": 100 + i, "caption": f"{text} {i} {j}"}
                )
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        coco = {"images": images, "annotations": annotations}
        (root / "annotations" / f"captions_{name}.json").write_text(json.dumps(coco))
    return root


def karpathy_file(root: Path, splits=("train", "restval", "train", "val", "test")) -> Path:
    images = []
    for i, split in enumerate(splits):
        png(root / "val2014" / f"im{i}.jpg", seed=i)
        sentences = [{"raw": f"A picture number {i}.", "tokens": []}, {"tokens": ["photo", str(i)]}]
        images.append(
            {"filepath": "val2014", "filename": f"im{i}.jpg", "split": split, "sentences": sentences}
        )
    path = root / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def flickr_folder(root: Path) -> Path:
    names = [f"{1000 + i}_abc.jpg" for i in range(6)]
    for i, name in enumerate(names):
        png(root / "Flicker8k_Dataset" / name, seed=i)
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    lines = [f"{name}#{n}\tA dog runs {i} {n} ." for i, name in enumerate(names) for n in range(5)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (text / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:4]) + "\n")
    (text / "Flickr_8k.devImages.txt").write_text(names[4] + "\n")
    (text / "Flickr_8k.testImages.txt").write_text(names[5] + "\n")
    return root


def module(source, tmp_path: Path, **settings) -> CaptionDataModule:
    args = {
        **SMALL,
        "batch_size": 2,
        "tokenizer": EVERY_WORD,
        "cache_dir": str(tmp_path / "cache"),
        **settings,
    }
    return CaptionDataModule(source=None if source is None else str(source), **args)


# --------------------------------------------------------------------------------------- scenes
def test_variants_are_five_distinct_texts_that_name_every_object_and_parse_back():
    for index in range(300):
        scene = make_scene(0, index, 32, *scenes.CAPTION_OBJECTS, scenes.CAPTION_OBJECT_SIZE)
        variants = caption_variants(scene)
        assert len(variants) == 5 == len(set(variants))
        assert variants == caption_variants(scene)  # a function of the scene
        truth = Counter((o.color, o.shape) for o in scene.objects)
        for text in variants:
            assert Counter(parse_objects(text)) == truth, text
            assert not {"small", "large", "big"} & set(text.split())


def test_variants_follow_fixed_templates_from_positions():
    left = scenes.SceneObject("star", "red", 10, 5, 20)
    right = scenes.SceneObject("ring", "blue", 10, 25, 8)
    scene = scenes.Scene([right, left], background=(0, 0, 0))
    assert caption_variants(scene) == [
        "a red star to the left of a blue ring",
        "a blue ring to the right of a red star",
        "a red star and a blue ring",
        "there is a blue ring and a red star",
        "a blue ring above a red star",
    ]


def test_parse_objects_reads_colour_shape_pairs_in_any_case_and_plural():
    assert parse_objects("Two RED stars, and a blue ring next to a green.") == [
        ("red", "star"),
        ("blue", "ring"),
    ]
    assert parse_objects("a dog on a mat") == []


def test_caption_scenes_are_readable_at_32_pixels():
    for index in range(50):
        scene = make_scene(0, index, 32, *scenes.CAPTION_OBJECTS, scenes.CAPTION_OBJECT_SIZE)
        assert 2 <= len(scene.objects) <= 3
        assert min(o.size for o in scene.objects) >= 8


# ------------------------------------------------------------------------------- embedded data
def test_embedded_scenes_round_trip_through_the_coco_reader(tmp_path):
    dm = module(None, tmp_path, tokenizer=None)
    dm.prepare_data()
    coco = json.loads((dm.scenes_path / "annotations" / "captions_val.json").read_text())
    assert len(coco["images"]) == 10 and len(coco["annotations"]) == 50
    entry = coco["images"][3]
    assert {"id", "file_name", "height", "width", "objects"} <= set(entry)
    assert set(entry["objects"][0]) == {"shape", "color", "bbox"}
    splits = read_coco(dm.scenes_path)
    assert [len(splits[s].images) for s in ("train", "val", "test")] == [40, 10, 10]
    assert all(len(c) == 5 for c in splits["train"].captions)

    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["index"].tolist() == [0, 1]
    mine = [a["caption"] for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"]]
    assert batch["references"][0] == mine
    box = np.array(coco["images"][0]["objects"][0]["bbox"]) / 32
    assert np.allclose(batch["objects"][0][0]["bbox"], box)
    assert (dm.in_channels, dm.image_size, dm.pixels) == (3, 32, "normalized")
    assert dm.tokenizer.decode(batch["captions"][0].tolist()) == mine[0]  # first reference
    images = dm.on_after_batch_transfer(batch, 0)["images"]
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 32)
    raw = dm.split_dataset("val")[0]["image"].float() / 255  # (C, H, W) in [0, 1]
    assert torch.allclose(dm.denormalize(images)[0], raw, atol=1e-5)


def test_train_batches_are_bos_words_eos_padded_and_longest_first(tmp_path):
    dm = module(None, tmp_path, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"images", "captions"}
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.uint8
    captions = batch["captions"]
    assert captions.dtype == torch.long and (captions[:, 0] == dm.bos_id).all()
    lengths = (captions != dm.pad_id).sum(1)
    assert lengths.tolist() == sorted(lengths.tolist(), reverse=True)
    for row, n in zip(captions, lengths, strict=True):
        assert row[n - 1] == dm.eos_id and (row[n:] == dm.pad_id).all()
    assert dm.max_target_length == max(
        len(c) - 1 for c in (dm.split_dataset("train", train=True).captions[i] for i in range(200))
    )
    normalized = dm.on_after_batch_transfer(batch, 0)["images"]
    assert abs(normalized.mean().item()) < 0.5


def test_max_length_cuts_captions_but_keeps_eos(tmp_path):
    dm = module(None, tmp_path, max_length=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["captions"].shape[1] == 5 and (batch["captions"][:, -1] == dm.eos_id).all()
    assert dm.max_target_length == 4


def test_the_caption_of_each_image_is_drawn_per_epoch_deterministically(tmp_path):
    dm = module(None, tmp_path)
    dataset = dm.split_dataset("train", train=True)
    first, again = dataset.keys(0), dm.split_dataset("train", train=True).keys(0)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, dataset.keys(1))
    assert (first[:, 0] == np.arange(40)).all() and (first[:, 1] < 5).all()
    assert len(set(first[:, 1].tolist())) > 1

    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    seen = [b["captions"] for b in loader]
    loader.sampler.set_epoch(1)
    assert all(torch.equal(a, b["captions"]) for a, b in zip(seen, loader, strict=True))


def test_pairs_all_sees_every_image_caption_pair_once(tmp_path):
    dm = module(None, tmp_path, pairs="all")
    dataset = dm.split_dataset("train", train=True)
    assert len(dataset) == 200
    keys = {tuple(k) for k in dataset.keys(0).tolist()}
    assert keys == {(i, k) for i in range(40) for k in range(5)}


def test_resume_mid_epoch_gives_the_remaining_batches(tmp_path):
    dm = module(None, tmp_path, batch_size=4)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    [next(it) for _ in range(3)]
    state = loader.state_dict()
    rest = [b["captions"] for b in it]

    other = module(None, tmp_path, batch_size=4)
    other.setup("fit")
    resumed = other.train_dataloader()
    resumed.load_state_dict(state)
    again = [b["captions"] for b in resumed]
    assert len(again) == len(rest) == 7
    assert all(torch.equal(a, b) for a, b in zip(again, rest, strict=True))


def test_two_ranks_cover_every_val_image_exactly_once(tmp_path):
    dm = module(None, tmp_path, val_size=11, batch_size=3)
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)
        seen += [i for b in dm.val_dataloader() for i in b["index"].tolist()]
    assert sorted(seen) == list(range(11))


def test_predict_reads_a_folder_of_images(tmp_path):
    for i in range(3):
        png(tmp_path / "mine" / f"{i}.png", seed=i)
    dm = module(None, tmp_path, predict_images=str(tmp_path / "mine"))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert batches[0]["images"].shape == (2, 3, 32, 32)
    assert [Path(f).name for b in batches for f in b["files"]] == ["0.png", "1.png", "2.png"]


def test_state_dict_refuses_another_vocabulary(tmp_path):
    dm = module(None, tmp_path)
    state = dm.state_dict()
    dm.load_state_dict(state)
    with pytest.raises(InputError, match=r"data\.tokenizer"):
        dm.load_state_dict({**state, "vocab_size": dm.vocab_size + 1})


# --------------------------------------------------------------------------------- real sources
def test_coco_folder_with_test_as_val_and_a_tokenizer_of_train_words_only(tmp_path):
    dm = module(coco_folder(tmp_path / "coco", val_words="a zebra on grass"), tmp_path)
    dm.setup("fit")
    assert (dm.meta["splits"]["train"]["images"], dm.meta["splits"]["val"]["images"]) == (4, 2)
    assert dm.meta["splits"]["test"]["images"] == 2
    vocab = dm.tokenizer.get_vocab()
    assert "▁cat" in vocab and "▁zebra" not in vocab and "▁grass" not in vocab
    val = next(iter(dm.val_dataloader()))
    assert val["references"] == [["a zebra on grass 0 0"], ["a zebra on grass 1 0"]]
    assert val["objects"] == [None, None]
    unk = dm.tokenizer.token_to_id("<|unk|>")
    assert unk in val["captions"][0].tolist()
    assert dm.tokenizer.decode(val["captions"][0].tolist()) == "a on 0 0"  # unknown words dropped


def test_karpathy_json_with_restval_in_train(tmp_path):
    path = karpathy_file(tmp_path / "k")
    dm = module(path, tmp_path)
    dm.setup("fit")
    assert {s: dm.meta["splits"][s]["images"] for s in ("train", "val", "test")} == {
        "train": 3,
        "val": 1,
        "test": 1,
    }
    val = next(iter(dm.val_dataloader()))
    assert val["references"] == [["A picture number 3.", "photo 3"]]
    assert dm.tokenizer.decode(val["captions"][0].tolist()) == "a picture number."  # "3": val only


def test_karpathy_images_below_image_root(tmp_path):
    path = karpathy_file(tmp_path / "k")
    moved = tmp_path / "json" / "dataset_coco.json"
    moved.parent.mkdir()
    path.rename(moved)
    with pytest.raises(InputError, match="image_root"):
        module(moved, tmp_path).prepare_data()
    module(moved, tmp_path, image_root=str(tmp_path / "k")).prepare_data()


def test_flickr8k_folder(tmp_path):
    dm = module(flickr_folder(tmp_path / "f8k"), tmp_path)
    dm.setup("fit")
    assert [dm.meta["splits"][s]["images"] for s in ("train", "val", "test")] == [4, 1, 1]
    val = next(iter(dm.val_dataloader()))
    assert val["references"][0] == [f"A dog runs 4 {n} ." for n in range(5)]
    assert len(list(dm.train_dataloader())) == 2


def test_local_hugging_face_datasets_with_caption_lists_or_one_caption_per_row(tmp_path):
    import datasets

    rows = {"image": [], "captions": []}
    for i in range(6):
        png(tmp_path / "img" / f"{i}.png", seed=i)
        rows["image"].append(str(tmp_path / "img" / f"{i}.png"))
        rows["captions"].append([f"a thing {i}", f"another thing {i}"])
    features = datasets.Features(
        {"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}
    )
    table = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": table.select(range(4)), "validation": table.select([4, 5])}).save_to_disk(
        str(tmp_path / "lists")
    )
    dm = module(tmp_path / "lists", tmp_path)
    dm.setup("fit")
    val = next(iter(dm.val_dataloader()))
    assert val["references"] == [["a thing 4", "another thing 4"], ["a thing 5", "another thing 5"]]
    assert val["images"].shape == (2, 3, 32, 32)

    flat = {"image": [p for p in rows["image"] for _ in range(2)], "caption": [], "id": list(range(12))}
    flat["caption"] = [c for pair in rows["captions"] for c in pair]
    features = datasets.Features(
        {"image": datasets.Image(), "caption": datasets.Value("string"), "id": datasets.Value("int64")}
    )
    table = datasets.Dataset.from_dict(flat, features=features)
    datasets.DatasetDict({"train": table}).save_to_disk(str(tmp_path / "flat"))
    dm = module(tmp_path / "flat", tmp_path, val_fraction=0.2)
    dm.prepare_data()
    splits = dm.meta["splits"]
    assert (splits["train"]["images"], splits["val"]["images"], splits["train"]["captions"]) == (5, 1, 10)
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))
    assert len(val["references"][0]) == 2 and val["references"][0][0].startswith("a thing")


# ------------------------------------------------------------------------------------ bad input
def _edit(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _bad_coco(root: Path, problem: str) -> tuple[Path, list[str]]:
    coco_folder(root)
    train = root / "annotations" / "captions_train2017.json"
    if problem == "caption without image":
        _edit(train, lambda d: d["annotations"][1].update(image_id=999))
        return root, [str(train), "annotations[1]", "999"]
    if problem == "missing image file":
        (root / "train2017" / "000000000002.png").unlink()
        return root, [str(train), "images[2]", "000000000002.png"]
    if problem == "image without caption":
        _edit(train, lambda d: d.update(annotations=[a for a in d["annotations"] if a["image_id"] != 101]))
        return root, [str(train), "images[1]", "no caption"]
    if problem == "empty caption":
        _edit(train, lambda d: d["annotations"][0].update(caption="  "))
        return root, [str(train), "annotations[0]", "empty caption"]
    if problem == "malformed json":
        train.write_text('{"images": [}')
        return root, [str(train), "not valid JSON", "line 1"]
    if problem == "corrupt image":
        (root / "val2017" / "000000000001.png").write_bytes(b"\x89PNG not really")
        return root, [str(root / "val2017" / "000000000001.png"), "cannot read"]
    if problem == "missing captions file":
        train.unlink()
        return root, ["captions_train", "annotations"]
    raise AssertionError(problem)


@pytest.mark.parametrize(
    "problem",
    [
        "caption without image",
        "missing image file",
        "image without caption",
        "empty caption",
        "malformed json",
        "corrupt image",
        "missing captions file",
    ],
)
def test_each_bad_coco_input_gives_one_message_naming_file_and_entry(tmp_path, problem):
    root, named = _bad_coco(tmp_path / "coco", problem)
    with pytest.raises(InputError) as err:
        module(root, tmp_path).prepare_data()
    message = str(err.value)
    assert "\n" not in message and "Fix:" in message
    for part in named:
        assert part in message, (part, message)


def test_karpathy_unknown_split_and_missing_file(tmp_path):
    path = karpathy_file(tmp_path / "k", splits=("train", "train", "holdout"))
    with pytest.raises(InputError, match=r"images\[2\] \('im2.jpg'\) has the split 'holdout'") as err:
        module(path, tmp_path).prepare_data()
    assert str(path) in str(err.value)
    with pytest.raises(InputError, match="does not exist"):
        module(tmp_path / "k" / "dataset_flickr8k.json", tmp_path)


def test_flickr8k_errors_name_the_list_and_the_line(tmp_path):
    root = flickr_folder(tmp_path / "f8k")
    listing = root / "Flickr8k_text" / "Flickr_8k.devImages.txt"
    listing.write_text("9999_none.jpg\n")
    with pytest.raises(InputError, match=r"line 1 \('9999_none\.jpg'\) has no caption") as err:
        module(root, tmp_path).prepare_data()
    assert str(listing) in str(err.value)
    (root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").unlink()
    with pytest.raises(InputError, match=r"Flickr_8k\.trainImages\.txt"):
        module(root, tmp_path).prepare_data()

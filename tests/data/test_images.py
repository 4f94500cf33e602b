import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from imagefiles import class_folders, loose_images, random_image, save_image, write_hub_layout
from PIL import Image
from trainers import quiet_trainer

from lightning_seq.data import scenes
from lightning_seq.data.augment import ImageAugment
from lightning_seq.data.decode import decode_image, is_grey, open_image
from lightning_seq.data.images import ImageDataModule
from lightning_seq.data.pixels import from_uint8
from lightning_seq.data.scenes import COLORS, SHAPES
from lightning_seq.errors import InputError

SMALL = {"num_train": 200, "num_val": 40, "num_test": 40, "batch_size": 32, "num_workers": 0}
NO_AUGMENT = ImageAugment(crop_scale=None, hflip=False)


def metadata_of(folder: Path) -> dict[str, dict]:
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    return {r["file_name"]: r for r in map(json.loads, lines)}


def test_embedded_shapes_give_uint8_batches_with_labels_from_the_metadata():
    dm = ImageDataModule(**SMALL)
    dm.prepare_data()
    assert (dm.num_classes, dm.classes, dm.in_channels, dm.image_size) == (6, list(SHAPES), 3, 32)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (32,) and batch["label"].dtype == torch.int64

    for split, folder, count in (("train", "train", 200), ("val", "val", 40), ("test", "test", 40)):
        items = dm.split_dataset(split)
        assert len(items) == count
        records = metadata_of(dm.scenes_path / folder)
        for path, label in zip(items.images, items.labels, strict=True):
            assert records[Path(path).name]["shape"] == SHAPES[label]
    item = dm.split_dataset("val")[3]
    on_disk = np.array(Image.open(dm.split_dataset("val").images[3]))  # (32, 32, 3)
    assert torch.equal(item["image"], torch.from_numpy(on_disk).permute(2, 0, 1))


def test_embedded_shapes_labelled_by_colour():
    dm = ImageDataModule(label_by="color", **SMALL)
    assert dm.classes == list(COLORS)
    items = dm.split_dataset("train")
    records = metadata_of(dm.scenes_path / "train")
    assert [records[Path(p).name]["color"] for p in items.images] == [dm.classes[y] for y in items.labels]


@pytest.mark.parametrize("image_size", [16, 28, 64])
def test_embedded_shapes_at_other_sizes(image_size):
    dm = ImageDataModule(
        image_size=image_size, num_train=24, num_val=8, num_test=8, batch_size=8, num_workers=0
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (8, 3, image_size, image_size)
    expected = np.array(scenes.render(scenes.make_scene(0, 1_000_000_002, image_size)))  # (S, S, 3)
    assert torch.equal(dm.split_dataset("val")[2]["image"], torch.from_numpy(expected).permute(2, 0, 1))


def test_default_scenes_are_the_images_they_always_were():
    # Item i of a split is scene offset + i of collection 0, the offsets 0, 1e9 and 2e9 as before the
    # splits were renamed; the pixel hashes were taken before the change: recipes' figures rest on them.
    dm = ImageDataModule(**SMALL)
    before = {
        ("train", 0): "b64a37902cdcbad9",
        ("val", 3): "f60123cd394f4d50",
        ("test", 5): "cc8beca995d2d407",
    }
    for (split, i), digest in before.items():
        offset = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}[split]
        scene = scenes.make_scene(0, offset + i)
        expected = np.array(scenes.render(scene))  # (32, 32, 3)
        items = dm.split_dataset(split)
        assert (
            Path(items.images[i]).name == f"{i:06d}.png" and SHAPES[items.labels[i]] == scene.objects[0].shape
        )
        assert torch.equal(items[i]["image"], torch.from_numpy(expected).permute(2, 0, 1))
        assert hashlib.sha256(expected.tobytes()).hexdigest()[:16] == digest, "the embedded scenes changed"


def test_multi_object_scenes_follow_their_settings():
    settings = dict(min_objects=2, max_objects=3, object_size=(0.4, 0.6), image_size=64)
    dm = ImageDataModule(**settings, num_train=24, num_val=8, num_test=8, batch_size=8, num_workers=0)
    assert dm.scenes_path != ImageDataModule(image_size=64, num_train=24, num_val=8, num_test=8).scenes_path
    items = dm.split_dataset("train")
    records = metadata_of(dm.scenes_path / "train")
    assert {len(r["objects"]) for r in records.values()} == {2, 3}
    for i in (0, 5, 11):
        record = records[Path(items.images[i]).name]
        scene = scenes.make_scene(0, record["index"], 64, 2, 3, (0.4, 0.6))
        assert record["objects"] == [asdict(o) for o in scene.objects]
        assert SHAPES[items.labels[i]] == scene.objects[0].shape  # labelled by the first object
        expected = torch.from_numpy(np.array(scenes.render(scene))).permute(2, 0, 1)  # (3, 64, 64)
        assert torch.equal(items[i]["image"], expected)
    for record in records.values():
        n = len(record["objects"])  # n objects: 1 / sqrt(n) of the range; crowded ones may shrink to half
        low, high = round(0.4 * 64 / np.sqrt(n)), round(0.6 * 64 / np.sqrt(n))
        assert all(low // 2 <= o["size"] <= high for o in record["objects"])


def test_grey_scenes_are_the_rgb_ones_converted():
    dm = ImageDataModule(channels=1, **SMALL)
    assert dm.in_channels == 1 and dm.mean.shape == (1,) and dm.std.shape == (1,)
    assert dm.cache_path != ImageDataModule(**SMALL).cache_path
    rgb = scenes.render(scenes.make_scene(0, 1_000_000_003))
    assert torch.equal(
        dm.split_dataset("val")[3]["image"], torch.from_numpy(np.array(rgb.convert("L")))[None]
    )
    grey = (
        np.stack([np.asarray(Image.open(p).convert("L")) for p in dm.split_dataset("train").images]) / 255.0
    )
    assert np.allclose(dm.mean.numpy(), grey.mean(), atol=1e-6) and np.allclose(
        dm.std.numpy(), grey.std(), atol=1e-6
    )
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (32, 1, 32, 32)


def test_28_pixel_grey_unit_variant():
    dm = ImageDataModule(image_size=28, channels=1, pixels="unit", augment=NO_AUGMENT, **SMALL)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    batch = dm.transform(dict(raw, image=raw["image"].clone()), train=True)
    assert batch["image"].shape == (32, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert torch.equal(batch["image"], raw["image"] / 255.0) and set(batch) == {"image", "label", "index"}
    rgb = scenes.render(scenes.make_scene(0, 5, 28))
    assert torch.equal(
        dm.split_dataset("train")[5]["image"], torch.from_numpy(np.array(rgb.convert("L")))[None]
    )


def encoded(image: Image.Image, fmt: str, **kwargs) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return {"bytes": buffer.getvalue(), "path": None}


def test_decoding_common_modes_and_exif_orientation():
    rgb = Image.fromarray(random_image(np.random.default_rng(4), 50, 80))
    sixteen_bit = Image.fromarray(np.random.default_rng(5).integers(0, 65535, (50, 80)).astype(np.uint16))
    for image, fmt, kwargs, grey in (
        (rgb.convert("P"), "PNG", {"transparency": 0}, False),
        (rgb.convert("RGBA"), "PNG", {}, False),
        (rgb.convert("LA"), "PNG", {}, True),
        (sixteen_bit, "PNG", {}, True),
        (rgb.convert("CMYK"), "JPEG", {}, False),
        (rgb, "WEBP", {}, False),
    ):
        ref = encoded(image, fmt, **kwargs)
        with open_image(ref) as opened:
            assert is_grey(opened) == grey, image.mode
        for channels in (1, 3):
            array = decode_image(ref, 32, channels)
            assert array.shape == (32, 32, channels) and array.dtype == np.uint8
            assert 100 < array.mean() < 155  # random pixels, scaled to 8 bits
    photo = Image.new("RGB", (60, 30), (255, 0, 0))
    photo.paste((0, 0, 255), (30, 0, 60, 30))  # red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: red on top
    upright = decode_image(encoded(photo, "JPEG", exif=exif), 16, 3).astype(int)
    assert upright[:6, :, 0].mean() > 200 and upright[-6:, :, 2].mean() > 200


def test_class_folders_of_mixed_sizes_are_resized_and_cropped(tmp_path):
    root = class_folders(tmp_path / "animals", sizes=((32, 32), (40, 24), (17, 50)))
    dm = ImageDataModule(dataset=str(root), image_size=16, val_fraction=0.2, batch_size=4, num_workers=0)
    assert dm.classes == ["cat", "dog", "fox"] and dm.in_channels == 3
    assert {s: len(dm.split_dataset(s)) for s in ("train", "val", "test")} == {
        "train": 14,
        "val": 4,
        "test": 4,
    }
    for split in ("train", "val"):
        items = dm.split_dataset(split)
        assert [Path(p).parent.name for p in items.images] == [dm.classes[y] for y in items.labels]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.uint8

    tall = Image.open(root / "dog" / "1.png")  # 24 wide, 40 high: its central 24 x 24 square, resized
    assert tall.size == (24, 40)
    square = tall.resize((16, 16), Image.Resampling.BICUBIC, box=(0, 8, 24, 32))
    items = dm.split_dataset("train")
    i = [Path(p) for p in items.images].index(root / "dog" / "1.png")
    assert torch.equal(items[i]["image"], torch.from_numpy(np.array(square)).permute(2, 0, 1))


def test_grey_class_folders_give_one_channel(tmp_path):
    root = class_folders(tmp_path / "digits", classes=("0", "1", "2"), grey=True, sizes=((28, 28),))
    dm = ImageDataModule(dataset=str(root), image_size=28, batch_size=4, num_workers=0)
    assert dm.in_channels == 1 and dm.mean.shape == (1,) and dm.std.shape == (1,)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (4, 1, 28, 28)

    save_image(root / "2" / "colour.png", random_image(np.random.default_rng(0), 28, 28))
    assert ImageDataModule(dataset=str(root), image_size=28).in_channels == 3  # one colour image: RGB


def test_split_folders_decide_the_splits_not_file_names(tmp_path):
    root = tmp_path / "data"
    class_folders(root, per_class=4, prefix="train")
    class_folders(root, per_class=2, prefix="valid")
    class_folders(root, per_class=1, prefix="test")
    rng = np.random.default_rng(1)
    save_image(root / "train" / "cat" / "test_photo.png", random_image(rng, 32, 32))  # still train
    dm = ImageDataModule(dataset=str(root), batch_size=2, num_workers=0)
    sizes = {s: len(dm.split_dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 13, "val": 6, "test": 3}
    assert all("/test/" in p for p in dm.split_dataset("test").images)


def test_image_folder_with_metadata_jsonl(tmp_path):
    root = tmp_path / "meta"
    rng = np.random.default_rng(2)
    for split, count in (("train", 9), ("test", 3)):
        lines = []
        for i in range(count):
            save_image(root / split / "img" / f"{i}.png", random_image(rng, 20, 20))
            kind = ("apple", "pear", "plum")[i % 3]
            lines.append(
                {"file_name": f"img/{i}.png", "label": kind, "weight": i * 1.5, "kind": kind.upper()}
            )
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    dm = ImageDataModule(dataset=str(root), image_size=20, val_fraction=0.2, batch_size=2, num_workers=0)
    assert dm.classes == ["apple", "pear", "plum"]
    test = dm.split_dataset("test")
    assert [Path(p).name for p in test.images] == ["0.png", "1.png", "2.png"]
    assert test.labels.tolist() == [0, 1, 2]

    by_kind = ImageDataModule(dataset=str(root), image_size=20, label_column="kind")
    assert by_kind.classes == ["APPLE", "PEAR", "PLUM"]
    with pytest.raises(InputError, match=r"no column 'species'.*image, label, weight, kind"):
        ImageDataModule(dataset=str(root), image_size=20, label_column="species").prepare_data()
    with pytest.raises(InputError, match=r"holds Value.*float"):
        ImageDataModule(dataset=str(root), image_size=20, label_column="weight").prepare_data()


def test_hub_layout_folder_goes_through_the_hub_code_path(tmp_path):
    root = tmp_path / "hubby"
    write_hub_layout(root, grey=True)
    dm = ImageDataModule(dataset=str(root), image_size=28, batch_size=8, num_workers=0, val_fraction=0.1)
    assert dm.meta["kind"] == "hub" and dm.meta["image_column"] == "img"
    assert (dm.classes, dm.in_channels) == (["a", "b", "c"], 1)
    assert {s: len(dm.split_dataset(s)) for s in ("train", "val", "test")} == {
        "train": 27,
        "val": 3,
        "test": 9,
    }
    assert dm.meta["splits"]["val"]["source_split"] == "train"  # carved from train
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 28, 28) and batch["image"].dtype == torch.uint8
    test = dm.split_dataset("test")
    assert test.labels.tolist() == [i % 3 for i in range(9)]


def test_unreadable_images_are_named_or_skipped(tmp_path):
    root = class_folders(tmp_path / "broken")
    good = (root / "cat" / "0.png").read_bytes()
    (root / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "fox" / "garbage.png").write_bytes(b"this is not a png at all")
    with pytest.raises(InputError, match=r"truncated\.png.*2 of the images.*skip_bad_images: true"):
        ImageDataModule(dataset=str(root), num_workers=0).prepare_data()

    dm = ImageDataModule(dataset=str(root), num_workers=0, skip_bad_images=True)
    with pytest.warns(UserWarning, match="left out 2 unreadable images"):
        dm.prepare_data()
    assert dm.cache_hit is True  # the verification is not repeated
    names = [Path(p).name for s in ("train", "val") for p in dm.split_dataset(s).images]
    assert len(names) == 18 and "truncated.png" not in names and "garbage.png" not in names


def test_normalisation_statistics_are_measured_once_and_correct(tmp_path):
    dm = ImageDataModule(cache_dir=str(tmp_path), **SMALL)
    dm.prepare_data()
    assert dm.cache_hit is False
    meta_file = dm.cache_path / "meta.json"
    written = meta_file.stat().st_mtime_ns
    pixels = np.stack([np.asarray(Image.open(p)) for p in dm.split_dataset("train").images]) / 255.0
    assert np.allclose(dm.mean.numpy(), pixels.mean(axis=(0, 1, 2)), atol=1e-6)
    assert np.allclose(dm.std.numpy(), pixels.std(axis=(0, 1, 2)), atol=1e-6)

    again = ImageDataModule(cache_dir=str(tmp_path), **SMALL)
    again.prepare_data()
    assert again.cache_hit is True and meta_file.stat().st_mtime_ns == written
    assert torch.equal(again.mean, dm.mean)

    given = ImageDataModule(mean=[0.5], std=[0.25, 0.5, 1.0], **SMALL)
    assert given.mean.tolist() == [0.5] * 3 and given.std.tolist() == [0.25, 0.5, 1.0]
    images = torch.rand(2, 3, 4, 4)
    assert torch.allclose(given.denormalize(given.normalize(images)), images, atol=1e-6)


class Probe(L.LightningModule):
    """Keeps every batch it is given, and the raw uint8 images before the DataModule transforms them."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.batches: dict[str, list] = {"train": [], "val": []}

    def on_before_batch_transfer(self, batch, dataloader_idx):
        batch["raw"] = batch["image"].clone()
        return batch

    def training_step(self, batch, batch_idx):
        self.batches["train"].append(batch)
        return self.layer(batch["image"].mean().view(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        self.batches["val"].append(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.filterwarnings("ignore:You have overridden `on_before_batch_transfer`")
def test_training_batches_are_augmented_and_mixed_evaluation_batches_only_normalised(tmp_path):
    dm = ImageDataModule(augment=ImageAugment(mixup_alpha=0.4, cutmix_alpha=1.0), **SMALL)
    probe = Probe()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(probe, datamodule=dm)
    for batch in probe.batches["train"]:
        assert batch["image"].dtype == torch.float32 and batch["image"].shape == (32, 3, 32, 32)
        assert batch["target"].shape == (32, 6)
        assert torch.allclose(batch["target"].sum(1), torch.ones(32))
        assert not torch.allclose(batch["image"], dm.normalize(batch["raw"]))
    for batch in probe.batches["val"]:
        assert "target" not in batch
        assert torch.equal(batch["image"], dm.normalize(batch["raw"]))
        assert abs(float(batch["image"].mean())) < 0.5  # roughly centred

    path = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["datamodule_hyper_parameters"]["augment"]["mixup_alpha"] == 0.4
    assert checkpoint["ImageDataModule"]["classes"] == list(SHAPES)
    restored = ImageDataModule.load_from_checkpoint(path)
    assert restored.classes == list(SHAPES) and restored.augment == dm.augment


def test_loaders_with_worker_processes_shuffle_reproducibly():
    first = ImageDataModule(**{**SMALL, "num_workers": 2})
    first.setup("fit")
    loader = first.train_dataloader()
    assert loader.persistent_workers and loader.drop_last and len(loader) == 200 // 32
    labels = [b["label"] for b in loader]
    second = ImageDataModule(**{**SMALL, "num_workers": 2})
    second.setup("fit")
    assert all(torch.equal(a, b["label"]) for a, b in zip(labels, second.train_dataloader(), strict=True))
    val = [b["label"] for b in first.val_dataloader()]
    assert torch.equal(torch.cat(val), torch.from_numpy(first.split_dataset("val").labels))  # in order


def test_checkpointed_classes_must_match():
    dm = ImageDataModule(**SMALL)
    dm.load_state_dict(dm.state_dict())
    with pytest.raises(InputError, match="trained on the classes"):
        dm.load_state_dict({"classes": ["a", "b"]})
    with pytest.raises(InputError, match=r"data\.classes"):
        ImageDataModule(classes=["a", "b"], **SMALL).prepare_data()


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ImageDataModule(dataset=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no images here")
    with pytest.raises(InputError, match="holds no images"):
        ImageDataModule(dataset=str(tmp_path / "empty"))
    lonely = class_folders(tmp_path / "lonely", classes=("cat",))
    with pytest.raises(InputError, match="single class folder 'cat'"):
        ImageDataModule(dataset=str(lonely)).prepare_data()
    loose = class_folders(tmp_path / "loose", classes=("cat", "dog"))
    save_image(loose / "stray.png", random_image(np.random.default_rng(0), 8, 8))
    with pytest.raises(InputError, match=r"stray\.png' is not in a class folder"):
        ImageDataModule(dataset=str(loose)).prepare_data()
    with pytest.raises(InputError, match=r"data\.label_by: expected 'shape' or 'color'"):
        ImageDataModule(label_by="size")
    with pytest.raises(InputError, match=r"data\.image_size: expected at least 8"):
        ImageDataModule(image_size=4)
    with pytest.raises(InputError, match="fewer than one batch"):
        ImageDataModule(**{**SMALL, "batch_size": 512}).setup("fit")
    with pytest.raises(InputError, match=r"data\.mean: expected 3 values"):
        _ = ImageDataModule(mean=[0.1, 0.2], **SMALL).mean


def test_class_folders_without_images_or_without_train_images_are_refused(tmp_path):
    pets = class_folders(tmp_path / "pets", classes=("cat", "dog"))
    (pets / "bird").mkdir()
    (pets / "bird" / "notes.txt").write_text("photos to come")
    with pytest.raises(InputError, match=rf"class folder '{pets / 'bird'}' holds no images"):
        ImageDataModule(dataset=str(pets), num_workers=0).prepare_data()

    split = class_folders(tmp_path / "split", classes=("cat", "dog"), prefix="train")
    class_folders(split, classes=("cat", "dog"), per_class=2, prefix="test")
    (split / "test" / "fox").mkdir()
    with pytest.raises(InputError, match=rf"'{split / 'test' / 'fox'}' holds no images"):
        ImageDataModule(dataset=str(split), num_workers=0).prepare_data()
    class_folders(split, classes=("fox",), per_class=2, prefix="test")
    with pytest.raises(InputError, match=r"'.*test/fox' has no counterpart in the train split.*\(cat, dog\)"):
        ImageDataModule(dataset=str(split), num_workers=0).prepare_data()

    hidden = class_folders(tmp_path / "hidden", classes=("cat", "dog"))
    (hidden / ".thumbnails").mkdir()  # hidden folders are not classes
    assert ImageDataModule(dataset=str(hidden), num_workers=0).classes == ["cat", "dog"]
    unlabelled = ImageDataModule(dataset=str(split), labels="none", num_workers=0)  # folders are not classes
    assert len(unlabelled.split_dataset("test")) == 6


def test_a_metadata_label_that_train_lacks_is_refused(tmp_path):
    root = tmp_path / "meta"
    rng = np.random.default_rng(2)
    for split, kinds in (("train", ("apple", "pear")), ("val", ("apple", "plum"))):
        lines = []
        for i, kind in enumerate(kinds * 3):
            save_image(root / split / f"{i}.png", random_image(rng, 16, 16))
            lines.append({"file_name": f"{i}.png", "label": kind})
        (root / split / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(
        InputError, match=r"the val split of .* has the class 'plum'.*which the train split lacks"
    ):
        ImageDataModule(dataset=str(root), image_size=16, num_workers=0).prepare_data()


def test_verification_in_worker_processes_agrees_with_one_process(tmp_path):
    from lightning_seq.data.scan import SCAN_CHUNK, scan_images

    root = class_folders(tmp_path / "many", per_class=3)
    (root / "cat" / "bad.png").write_bytes(b"not an image")
    files = sorted(str(p) for p in root.rglob("*.png"))
    refs = {"train": files * (5 * SCAN_CHUNK // len(files) + 1), "val": files}  # > 4 chunks: a pool
    one, two = scan_images(refs, 16, processes=1), scan_images(refs, 16, processes=2)
    assert one == two
    bad = files.index(str(root / "cat" / "bad.png"))
    assert [i for i, _ in one["bad"]["train"]][:2] == [bad, bad + len(files)]
    assert [i for i, _ in one["bad"]["val"]] == [bad] and not one["grey"]


# ------------------------------------------------------------------------------- pixel conventions
@pytest.mark.parametrize("pixels", ["unit", "symmetric", "uint8", "binary"])
def test_batches_in_each_pixel_convention_need_no_statistics(pixels):
    dm = ImageDataModule(pixels=pixels, mean=[9.0, 9.0], std=[-1.0], **SMALL)  # unusable: never used
    dm.setup("fit")
    raw = next(iter(dm.val_dataloader()))
    batch = dm.transform(dict(raw, image=raw["image"].clone()), train=False)
    assert torch.equal(batch["image"], from_uint8(raw["image"], pixels))
    unit = dm.to_unit(batch["image"])
    assert unit.dtype == torch.float32 and torch.equal(dm.denormalize(batch["image"]), unit)
    if pixels == "binary":
        assert torch.equal(unit, (raw["image"] >= 128).float())
    else:
        assert torch.allclose(unit, raw["image"] / 255.0, atol=1e-6)

    train = dm.transform(dict(next(iter(dm.train_dataloader()))), train=True)  # crop + flip, in [0, 1] first
    images = train["image"]
    low, high = {"unit": (0, 1), "symmetric": (-1, 1), "uint8": (0, 255), "binary": (0, 1)}[pixels]
    assert images.shape == (32, 3, 32, 32) and low <= images.min() and images.max() <= high
    assert images.dtype == (torch.int64 if pixels == "uint8" else torch.float32)
    if pixels == "binary":
        assert set(images.unique().tolist()) == {0.0, 1.0}


def test_training_augmentation_works_in_unit_space_before_the_conversion():
    flip = ImageAugment(crop_scale=None, hflip=True)
    dm = ImageDataModule(pixels="symmetric", augment=flip, **SMALL)
    dm.setup("fit")
    raw = next(iter(dm.train_dataloader()))
    torch.manual_seed(3)
    images = dm.transform(dict(raw, image=raw["image"].clone()), train=True)["image"]
    unit = raw["image"] / 255.0
    flipped = [torch.allclose(a, b.flip(-1) * 2 - 1, atol=1e-6) for a, b in zip(images, unit, strict=True)]
    kept = [torch.allclose(a, b * 2 - 1, atol=1e-6) for a, b in zip(images, unit, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < 32

    mixed = ImageDataModule(pixels="unit", augment=ImageAugment(crop_scale=None, mixup_alpha=1.0), **SMALL)
    mixed.setup("fit")
    batch = mixed.transform(next(iter(mixed.train_dataloader())), train=True)
    assert batch["target"].shape == (32, 6) and batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0


class Recorder(L.LightningModule):
    """Keeps the images of every training batch by (epoch, batch index), and every validation batch."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen: dict[tuple[int, int], torch.Tensor] = {}
        self.val: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.seen[(self.current_epoch, batch_idx)] = batch["image"].clone()
        assert set(batch) == {"image", "label", "index"}
        return self.layer(batch["image"].float().mean().view(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        self.val.append(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SaveAt(L.Callback):
    def __init__(self, step: int, path: Path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_dynamic_binarisation_is_new_every_epoch_and_the_same_after_a_resume(tmp_path):
    settings = dict(pixels="binary", binarize="dynamic", augment=NO_AUGMENT, **SMALL)
    path = tmp_path / "middle.ckpt"
    whole = Recorder()
    run = dict(max_epochs=2, limit_train_batches=4, limit_val_batches=1)
    quiet_trainer(tmp_path, callbacks=[SaveAt(6, path)], **run).fit(
        whole, datamodule=ImageDataModule(**settings)
    )
    resumed = Recorder()
    quiet_trainer(tmp_path, **run).fit(resumed, datamodule=ImageDataModule(**settings), ckpt_path=path)
    assert sorted(resumed.seen) == [(1, 2), (1, 3)]  # the rest of epoch 1
    for key, images in resumed.seen.items():
        assert torch.equal(images, whole.seen[key])
    assert all(set(v.unique().tolist()) == {0.0, 1.0} for v in whole.seen.values())
    assert torch.equal(whole.val[0]["image"], whole.val[1]["image"])  # evaluation: the same draws each epoch

    dm = ImageDataModule(**settings)
    dm.setup("fit")
    raw = next(iter(dm.val_dataloader()))  # items 0..31 of val, in order
    assert torch.equal(raw["index"], torch.arange(32))
    draws = {e: dm.transform(dict(raw), train=True, epoch=e)["image"] for e in (0, 1)}
    assert torch.equal(draws[1], dm.transform(dict(raw), train=True, epoch=1)["image"])
    assert (draws[0] != draws[1]).float().mean() > 0.05  # a new sample every epoch
    assert abs(float(draws[0].mean()) - float(raw["image"].float().mean() / 255)) < 0.01  # mean = intensity


def test_unlabelled_embedded_scenes_give_images_only(tmp_path):
    dm = ImageDataModule(labels="none", pixels="symmetric", augment=NO_AUGMENT, **SMALL)
    assert not hasattr(dm, "num_classes") and not hasattr(dm, "classes")
    assert (dm.in_channels, dm.image_size, dm.pixels) == (3, 32, "symmetric")

    class Images(Recorder):
        def training_step(self, batch, batch_idx):
            assert (
                set(batch) == {"image", "index"}
                and batch["image"].min() >= -1.0
                and batch["image"].max() <= 1.0
            )
            return self.layer(batch["image"].mean().view(1, 1)).sum()

    model = Images()
    run = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    run.fit(model, datamodule=dm)
    assert set(model.val[0]) == {"image", "index"}
    path = tmp_path / "unlabelled.ckpt"
    run.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["ImageDataModule"]
    assert {k: state[k] for k in ("labels", "pixels", "in_channels", "image_size", "classes")} == {
        "labels": "none", "pixels": "symmetric", "in_channels": 3, "image_size": 32, "classes": None,
    }  # fmt: skip
    assert state["mean"] == dm.mean.tolist() and len(state["std"]) == 3
    restored = ImageDataModule.load_from_checkpoint(path)
    assert restored.labels == "none" and not hasattr(restored, "classes")
    labelled = ImageDataModule(**SMALL)
    with pytest.raises(InputError, match=r"data\.labels: the checkpoint was trained with labels 'none'"):
        labelled.load_state_dict(state)
    assert dm.split_dataset("val")[3]["image"].shape == (3, 32, 32) and labelled.cache_key != dm.cache_key


@pytest.mark.parametrize("layout", ["loose", "split folders", "class folders"])
def test_unlabelled_folders(tmp_path, layout):
    root = tmp_path / "pictures"
    if layout == "loose":
        loose_images(root, 20)
        loose_images(root, 2, folder="holiday/beach")  # at any depth
    elif layout == "split folders":
        loose_images(root, 12, folder="train")
        loose_images(root, 4, folder="valid")
        loose_images(root, 3, folder="test/more")
    else:
        class_folders(root)  # 18 labelled images, used unlabelled
    dm = ImageDataModule(dataset=str(root), labels="none", image_size=16, batch_size=4, num_workers=0)
    assert not hasattr(dm, "num_classes") and not hasattr(dm, "classes") and dm.in_channels == 3
    sizes = {s: len(dm.split_dataset(s)) for s in ("train", "val", "test")}
    assert (
        sizes
        == {
            "loose": {"train": 20, "val": 2, "test": 2},
            "split folders": {"train": 12, "val": 4, "test": 3},
            "class folders": {"train": 16, "val": 2, "test": 2},
        }[layout]
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "index"} and batch["image"].shape == (4, 3, 16, 16)
    assert dm.meta["classes"] is None and dm.state_dict()["classes"] is None
    if layout != "class folders":
        with pytest.raises(InputError, match=r"not in a class folder.*data\.labels: none"):
            ImageDataModule(dataset=str(root), image_size=16).prepare_data()


def test_unlabelled_hub_dataset_keeps_every_split(tmp_path):
    root = tmp_path / "hubby"
    write_hub_layout(root, grey=True)
    dm = ImageDataModule(dataset=str(root), labels="none", image_size=28, batch_size=8, num_workers=0)
    assert dm.meta["label_column"] is None and dm.in_channels == 1
    assert len(dm.split_dataset("test")) == 9
    dm.setup("fit")
    assert set(next(iter(dm.train_dataloader()))) == {"image", "index"}


def test_checkpoint_state_says_how_the_model_is_fed():
    dm = ImageDataModule(**SMALL)
    state = dm.state_dict()
    assert state["classes"] == list(SHAPES) and state["labels"] == "class"
    assert (state["pixels"], state["image_size"], state["in_channels"]) == ("normalized", 32, 3)
    assert state["mean"] == dm.mean.tolist() and state["std"] == dm.std.tolist()
    dm.load_state_dict({"cache_key": state["cache_key"], "classes": list(SHAPES)})  # an older checkpoint
    with pytest.raises(InputError, match=r"data\.pixels: the checkpoint was trained with pixels 'unit'"):
        dm.load_state_dict({**state, "pixels": "unit"})
    with pytest.raises(InputError, match=r"data\.channels: .* in_channels 1"):
        dm.load_state_dict({**state, "in_channels": 1})


def test_bad_new_settings_are_clear_errors():
    for kwargs, message in (
        ({"pixels": "rgb"}, r"data\.pixels: expected 'normalized' or 'unit' or .*got 'rgb'"),
        ({"binarize": "sometimes"}, r"data\.binarize: expected 'static' or 'dynamic'"),
        ({"channels": 2}, r"data\.channels: expected None or 1 or 3, got 2"),
        ({"labels": "maybe"}, r"data\.labels: expected 'class' or 'none'"),
        ({"min_objects": 3, "max_objects": 2}, r"data\.max_objects: expected at least min_objects \(3\)"),
        ({"min_objects": 0}, r"data\.min_objects: expected a positive integer"),
        ({"object_size": [0.5, 0.95]}, r"data\.object_size: .*0 < low <= high <= 0\.9"),
        ({"image_size": 12}, r"data\.image_size: the embedded scenes are at least 16 pixels"),
        ({"labels": "none", "augment": ImageAugment(cutmix_alpha=1.0)}, r"data\.augment: MixUp and CutMix"),
        ({"labels": "none", "classes": ["a", "b"]}, r"data\.classes: class names were given"),
    ):
        with pytest.raises(InputError, match=message):
            ImageDataModule(**kwargs)

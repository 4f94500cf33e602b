import io
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from imagefiles import class_folders, random_image, save_image, write_hub_layout
from PIL import Image

from lightning_seq.data.augment import ImageAugment
from lightning_seq.data.images import ImageDataModule, decode_image, is_grey, open_image
from lightning_seq.data.scenes import COLORS, SHAPES
from lightning_seq.errors import InputError

SMALL = {"num_train": 200, "num_val": 40, "num_test": 40, "batch_size": 32, "num_workers": 0}


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

    for split, folder, count in (("train", "train", 200), ("val", "validation", 40), ("test", "test", 40)):
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


def test_embedded_shapes_at_64_pixels():
    dm = ImageDataModule(image_size=64, num_train=24, num_val=8, num_test=8, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["image"].shape == (8, 3, 64, 64)


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


def test_verification_in_worker_processes_agrees_with_one_process(tmp_path):
    from lightning_seq.data.images import SCAN_CHUNK, scan_images

    root = class_folders(tmp_path / "many", per_class=3)
    (root / "cat" / "bad.png").write_bytes(b"not an image")
    files = sorted(str(p) for p in root.rglob("*.png"))
    refs = {"train": files * (5 * SCAN_CHUNK // len(files) + 1), "val": files}  # > 4 chunks: a pool
    one, two = scan_images(refs, 16, processes=1), scan_images(refs, 16, processes=2)
    assert one == two
    bad = files.index(str(root / "cat" / "bad.png"))
    assert [i for i, _ in one["bad"]["train"]][:2] == [bad, bad + len(files)]
    assert [i for i, _ in one["bad"]["val"]] == [bad] and not one["grey"]

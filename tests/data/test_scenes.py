import json
import math
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from lightning_seq.data.scenes import (
    COLORS,
    SHAPES,
    SPLIT_OFFSETS,
    make_scene,
    render,
    write_scene_dataset,
)

FILLED = {"circle", "square", "triangle", "star", "cross"}  # the ring's centre is background


def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLORS[name], rgb, strict=True)))


@pytest.mark.parametrize("image_size", [32, 64])
def test_a_scene_depends_on_seed_and_index_alone(image_size):
    a = make_scene(3, 11, image_size, 1, 4)
    b = make_scene(3, 11, image_size, 1, 4)
    assert a == b
    assert np.array_equal(np.asarray(render(a)), np.asarray(render(b)))
    for other in (make_scene(3, 12, image_size, 1, 4), make_scene(4, 11, image_size, 1, 4)):
        assert other != a
        assert not np.array_equal(np.asarray(render(other)), np.asarray(render(a)))


@pytest.mark.parametrize("image_size", [16, 32, 48, 64])
def test_rendered_image_and_objects_fit_the_size(image_size):
    for index in range(40):
        scene = make_scene(0, index, image_size)
        image = render(scene)
        assert image.mode == "RGB" and image.size == (image_size, image_size)
        (obj,) = scene.objects
        assert obj.shape in SHAPES and obj.color in COLORS
        assert 0.3 * image_size - 1 <= obj.size <= 0.75 * image_size + 1
        left, top, right, bottom = obj.bbox
        assert min(left, top) >= 0 and max(right, bottom) <= image_size
        assert right - left == obj.size


def test_every_shape_and_color_occurs():
    objects = [make_scene(1, i).objects[0] for i in range(300)]
    assert {o.shape for o in objects} == set(SHAPES)
    assert {o.color for o in objects} == set(COLORS)


@pytest.mark.parametrize("image_size", [32, 64])
def test_the_colour_at_an_object_centre_is_its_named_colour(image_size):
    checked = 0
    for index in range(200):
        scene = make_scene(5, index, image_size, 1, 3)
        pixels = np.asarray(render(scene), dtype=np.int64)  # (S, S, 3)
        for k, obj in enumerate(scene.objects):
            others = scene.objects[k + 1 :]  # drawn later, possibly on top
            if obj.shape not in FILLED or any(math.dist((o.x, o.y), (obj.x, obj.y)) < o.size for o in others):
                continue
            assert nearest_color(pixels[obj.y, obj.x]) == obj.color, (index, obj)
            checked += 1
    assert checked > 150


def test_the_background_is_textured_not_flat():
    pixels = np.asarray(render(make_scene(0, 0)), dtype=np.float64)
    corner = pixels[:4, :4].reshape(-1, 3)
    assert corner.std(axis=0).max() > 1.0


def test_multi_object_scenes_overlap_little():
    counts = set()
    for index in range(100):
        scene = make_scene(2, index, 64, 2, 4)
        counts.add(len(scene.objects))
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                assert math.dist((a.x, a.y), (b.x, b.y)) >= 0.3 * (a.size + b.size)
    assert counts == {2, 3, 4}


def test_descriptions_name_every_object():
    from lightning_seq.data.scenes import describe

    one = make_scene(0, 0)
    text = describe(one)
    assert text.startswith(("a ", "an ")) and f"{one.objects[0].color} {one.objects[0].shape}" in text
    assert any(word in text for word in ("left", "right", "top", "bottom", "middle"))
    for index in range(50):
        scene = make_scene(0, index, 64, 2, 4)
        text = describe(scene)
        for obj in scene.objects:
            assert f"{obj.color} {obj.shape}" in text
        assert text.count(" a ") + text.count(" an ") + 1 == len(scene.objects)
        assert any(rel in text for rel in ("above", "below", "left of", "right of"))
    assert "an orange" in " ".join(describe(make_scene(0, i)) for i in range(50))
    assert "a orange" not in " ".join(describe(make_scene(0, i, 64, 1, 3)) for i in range(50))


def test_written_dataset_is_an_imagefolder_that_loads_back(tmp_path):
    import datasets

    root = tmp_path / "scenes"
    write_scene_dataset(root, 32, {"train": 12, "val": 5, "test": 4}, seed=7, max_objects=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]  # no temporary folder left
    records = {}
    for split, count in (("train", 12), ("val", 5), ("test", 4)):
        lines = (root / split / "metadata.jsonl").read_text().splitlines()
        assert len(lines) == count == len(list((root / split).glob("*.png")))
        records[split] = [json.loads(line) for line in lines]
    indices = [{r["index"] for r in rs} for rs in records.values()]
    assert not (indices[0] & indices[1] or indices[0] & indices[2] or indices[1] & indices[2])

    first = records["val"][2]
    assert first["file_name"] == "000002.png" and first["index"] == SPLIT_OFFSETS["val"] + 2
    scene = make_scene(7, first["index"], 32, 1, 2)
    assert first["shape"] == scene.objects[0].shape and first["color"] == scene.objects[0].color
    assert first["objects"] == [asdict(o) for o in scene.objects]
    on_disk = np.asarray(Image.open(root / "val" / "000002.png"))
    assert np.array_equal(on_disk, np.asarray(render(scene)))  # PNG is lossless

    dsd = datasets.load_dataset("imagefolder", data_dir=str(root))
    assert set(dsd) == {"train", "validation", "test"}  # Hugging Face's name for the val/ folder
    assert dsd["train"].num_rows == 12
    row = dsd["validation"][2]
    assert row["caption"] == first["caption"] and row["shape"] == first["shape"]
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), on_disk)


def test_writing_again_replaces_the_dataset(tmp_path):
    root = tmp_path / "scenes"
    write_scene_dataset(root, 32, {"train": 6}, seed=0)
    write_scene_dataset(root, 32, {"train": 3}, seed=1)
    assert len((root / "train" / "metadata.jsonl").read_text().splitlines()) == 3
    assert len(list((root / "train").glob("*.png"))) == 3


def test_parallel_writing_gives_the_same_dataset(tmp_path):
    sizes = {"train": 510, "test": 3}  # two chunks of train: drawn by two processes
    write_scene_dataset(tmp_path / "one", 16, sizes, seed=9, processes=1)
    write_scene_dataset(tmp_path / "two", 16, sizes, seed=9, processes=2)
    for split in sizes:
        one, two = (tmp_path / name / split for name in ("one", "two"))
        assert (one / "metadata.jsonl").read_text() == (two / "metadata.jsonl").read_text()
    for name in ("000000.png", "000509.png"):
        assert (tmp_path / "one/train" / name).read_bytes() == (tmp_path / "two/train" / name).read_bytes()


def test_split_offsets_keep_their_values():
    # The embedded images of every split depend on these numbers: recipes' figures rest on them.
    assert SPLIT_OFFSETS == {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}


def test_object_size_sets_the_range_of_the_shapes():
    default = [make_scene(0, i) for i in range(30)]
    assert default == [make_scene(0, i, object_size=(0.3, 0.75)) for i in range(30)]
    for image_size in (16, 28, 32, 64):
        sizes = [make_scene(0, i, image_size, object_size=(0.5, 0.6)).objects[0].size for i in range(60)]
        assert min(sizes) >= max(5, round(0.5 * image_size)) and max(sizes) <= max(6, round(0.6 * image_size))
        scene = make_scene(0, 1, image_size, object_size=(0.85, 0.9))
        left, top, right, bottom = scene.objects[0].bbox
        assert min(left, top) >= 0 and max(right, bottom) <= image_size  # still inside the image
    with pytest.raises(ValueError, match="object_size"):
        make_scene(0, 0, object_size=(0.6, 0.5))
    with pytest.raises(ValueError, match="object_size"):
        make_scene(0, 0, object_size=(0.5, 1.0))


def test_unknown_split_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['validation'\]"):
        write_scene_dataset(tmp_path / "scenes", 16, {"train": 2, "validation": 2}, seed=0)


def test_mono_scenes_are_white_shapes_on_black_where_the_colour_scene_has_them():
    scene = make_scene(seed=0, index=3, image_size=28, max_objects=2)
    mono = np.asarray(render(scene, style="mono"))  # (28, 28, 3)
    assert (mono[..., 0] == mono[..., 1]).all() and (mono[..., 1] == mono[..., 2]).all()  # grey
    assert mono.min() == 0 and mono.max() == 255
    edges = (mono > 0) & (mono < 255)
    assert edges.mean() < 0.15  # only antialiased borders are grey
    for obj in scene.objects:  # every filled shape's centre is lit
        if obj.shape in FILLED:
            assert mono[round(obj.y), round(obj.x)].min() > 128
    with pytest.raises(ValueError, match="style"):
        render(scene, style="sepia")

"""Procedural scenes of coloured shapes: the embedded image data, with exact captions.

A scene is drawn from ``(seed, index)`` alone, so any scene can be rebuilt, rendered at another
size or described again without its image. Pure PIL and numpy: no torch, no Lightning.

>>> scene = make_scene(seed=0, index=7)
>>> image = render(scene)  # a 32x32 RGB PIL image
>>> describe(scene)  # doctest: +SKIP
'a small red star on the left'

:func:`write_scene_dataset` writes train/val/test splits as a Hugging Face ``imagefolder``
(PNG files and a ``metadata.jsonl`` per split), the format real image folders come in.
"""

import itertools
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lightning_seq.data.cache import replace_folder
from lightning_seq.data.scan import cpu_count, start_method

#: Bumped whenever the same ``(seed, index)`` would give a different scene or image.
GENERATOR_VERSION = 1

#: The shapes, all symmetric enough that a flip leaves their name true; none is a rotation of another.
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")

#: The colours, far from each other and from the dark backgrounds.
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 100, 240),
    "yellow": (240, 220, 50),
    "purple": (160, 70, 210),
    "orange": (250, 140, 30),
}

#: Scene index offset of each split, so that splits never share a scene.
SPLIT_OFFSETS = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}

#: The side of one object, as fractions ``(low, high)`` of the image side, when it is alone in its scene.
OBJECT_SIZE = (0.3, 0.75)

SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled: antialiased edges

#: How a scene is drawn: ``color``, coloured shapes on a textured dark background; ``mono``, white
#: shapes on plain black (the strokes-on-black look of MNIST that binarised pixels need).
STYLES = ("color", "mono")


@dataclass
class SceneObject:
    """One shape, centred on pixel ``(x, y)`` and fitting a ``size`` x ``size`` box.

    Args:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        size: side of its bounding box, in pixels.
        x: column of its centre pixel.
        y: row of its centre pixel.
    """

    shape: str
    color: str
    size: int
    x: int
    y: int

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` in continuous pixel coordinates (pixel ``i`` spans ``[i, i+1)``)."""
        half = self.size / 2
        return (self.x + 0.5 - half, self.y + 0.5 - half, self.x + 0.5 + half, self.y + 0.5 + half)


@dataclass
class Scene:
    """Shapes on a textured background; the first object is the main one (the label).

    Args:
        objects: the shapes, drawn in order.
        background: the background's base RGB colour.
        image_size: the side of the image the coordinates refer to.
        texture_seed: seeds the image's grain (noise).
        gradient: how much the background brightens across the image, left to right and top to bottom.
    """

    objects: list[SceneObject]
    background: tuple[int, int, int]
    image_size: int = 32
    texture_seed: int = 0
    gradient: tuple[float, float] = (0.0, 0.0)


def make_scene(
    seed: int,
    index: int,
    image_size: int = 32,
    min_objects: int = 1,
    max_objects: int = 1,
    object_size: tuple[float, float] | None = None,
) -> Scene:
    """The scene numbered ``index`` of the collection ``seed``; the same arguments give the same scene.

    Objects take ``object_size`` of the image side when alone (default :data:`OBJECT_SIZE`, 30-75%:
    10-24 px at 32 px), ``1 / sqrt(n)`` of that when there are ``n``, at least 5 px; they lie wholly
    inside the image and overlap little.

    Args:
        seed: the scene collection.
        index: the scene's number in it.
        image_size: side of the image, at least 16 pixels.
        min_objects: fewest objects.
        max_objects: most objects.
        object_size: ``(low, high)`` fractions of the image side, ``0 < low <= high <= 0.9``.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    if not 1 <= min_objects <= max_objects:
        raise ValueError(f"expected 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    low, high = check_object_size(object_size)
    rng = random.Random(f"{seed}-{index}")  # str seeds are hashed with SHA-512: stable across runs
    count = rng.randint(min_objects, max_objects)
    background = tuple(rng.randint(10, 75) for _ in range(3))
    scale = 1.0 if count == 1 else 1 / math.sqrt(count)
    lo, hi = max(5, round(low * image_size * scale)), max(6, round(high * image_size * scale))
    objects: list[SceneObject] = []
    for _ in range(count):
        shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
        size = rng.randint(lo, hi)
        for attempt in range(200):
            if attempt and attempt % 50 == 0:  # crowded: try smaller
                size = max(lo // 2, round(size * 0.8))
            x, y = (rng.randint(size // 2, image_size - 1 - size // 2) for _ in range(2))
            if all(math.dist((x, y), (o.x, o.y)) >= 0.5 * (size + o.size) for o in objects):
                break
        objects.append(SceneObject(shape, color, size, x, y))
    gradient = (rng.uniform(-20, 20), rng.uniform(-20, 20))
    return Scene(objects, background, image_size, rng.getrandbits(63), gradient)


def check_object_size(object_size: tuple[float, float] | None) -> tuple[float, float]:
    """``object_size`` as a ``(low, high)`` pair (None: :data:`OBJECT_SIZE`).

    Raises:
        ValueError: not two fractions with ``0 < low <= high <= 0.9``.
    """
    if object_size is None:
        return OBJECT_SIZE
    values = tuple(float(v) for v in object_size)
    if len(values) != 2 or not 0.0 < values[0] <= values[1] <= 0.9:
        raise ValueError(f"expected object_size [low, high] with 0 < low <= high <= 0.9, got {list(values)}")
    return values  # type: ignore[return-value]


def render(scene: Scene, image_size: int | None = None, style: str = "color") -> Image.Image:
    """Draw a scene as an RGB image of side ``image_size`` (default: the scene's own) in ``style``
    (:data:`STYLES`)."""
    if style not in STYLES:
        raise ValueError(f"unknown scene style {style!r}; expected one of {', '.join(STYLES)}")
    size = image_size or scene.image_size
    big = size * SUPERSAMPLE
    zoom = big / scene.image_size
    if style == "mono":
        image = Image.new("RGB", (big, big), "black")
    else:
        ramp = np.linspace(-0.5, 0.5, big)
        base = np.asarray(scene.background, np.float32)
        canvas = base + scene.gradient[0] * ramp[None, :, None] + scene.gradient[1] * ramp[:, None, None]
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        left, top, right, bottom = (v * zoom for v in obj.bbox)
        rgb = (255, 255, 255) if style == "mono" else COLORS[obj.color]
        _draw_shape(draw, obj.shape, rgb, left, top, right, bottom)
    image = image.resize((size, size), Image.Resampling.BOX)
    if style == "mono":
        return image
    noise = np.random.default_rng(scene.texture_seed).normal(0.0, 5.0, (size, size, 1))  # grey grain
    pixels = np.asarray(image, np.float32) + noise
    return Image.fromarray(np.clip(pixels.round(), 0, 255).astype(np.uint8), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, rgb, left, top, right, bottom) -> None:
    cx, cy, r = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
    if shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=rgb)
    elif shape == "square":
        draw.rectangle((left, top, right, bottom), fill=rgb)
    elif shape == "triangle":  # apex up, base along the bottom of the box
        draw.polygon([(cx, top), (right, bottom), (left, bottom)], fill=rgb)
    elif shape == "star":  # five points, fat enough to read at 10 px
        points = [
            (cx + rad * math.sin(k * math.pi / 5), cy - rad * math.cos(k * math.pi / 5))
            for k in range(10)
            for rad in [r if k % 2 == 0 else 0.5 * r]
        ]
        draw.polygon(points, fill=rgb)
    elif shape == "cross":  # a plus sign, arms a third of the box thick
        t = r / 3
        draw.rectangle((cx - t, top, cx + t, bottom), fill=rgb)
        draw.rectangle((left, cy - t, right, cy + t), fill=rgb)
    elif shape == "ring":
        draw.ellipse((left, top, right, bottom), outline=rgb, width=max(1, round(0.4 * r)))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


# ------------------------------------------------------------------------------------------- captions
def describe(scene: Scene) -> str:
    """A plain English caption that names every object's colour and shape.

    One object: size and place, ``"a small red circle in the top left"``. Several: the first
    object's place relative to the second, then the rest, ``"a red circle above a blue square and
    a green star"``.
    """
    objects = scene.objects
    if len(objects) == 1:
        obj = objects[0]
        size = _size_word(obj, scene.image_size)
        return f"{_a(size, obj.color)} {obj.shape} {_place(obj, scene.image_size)}"
    first, second, *rest = objects
    text = f"{_a(first.color)} {first.shape} {_relation(first, second)} {_a(second.color)} {second.shape}"
    names = [f"{_a(o.color)} {o.shape}" for o in rest]
    if len(names) > 1:
        text += ", " + ", ".join(names[:-1])
    if names:
        text += f" and {names[-1]}"
    return text


def _a(*words: str) -> str:
    """``"a red"``, ``"an orange"``, ``"a small red"``: the words after the right article."""
    text = " ".join(w for w in words if w)
    return ("an " if text[0] in "aeiou" else "a ") + text


def _size_word(obj: SceneObject, image_size: int) -> str:
    fraction = obj.size / image_size
    return "small" if fraction < 0.45 else "large" if fraction >= 0.6 else ""


def _third(coord: int, image_size: int) -> int:
    return min(2, int(3 * (coord + 0.5) / image_size))


def _place(obj: SceneObject, image_size: int) -> str:
    row = ("top", "", "bottom")[_third(obj.y, image_size)]
    col = ("left", "", "right")[_third(obj.x, image_size)]
    if row and col:
        return f"in the {row} {col}"
    if row:
        return f"at the {row}"
    return f"on the {col}" if col else "in the middle"


def _relation(a: SceneObject, b: SceneObject) -> str:
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


# ------------------------------------------------------------------- reference captions (captioning)
#: The captioning scenes: 2-3 objects, each large enough to read at 32 x 32 pixels (9-19 px there).
CAPTION_OBJECTS = (2, 3)
CAPTION_OBJECT_SIZE = (0.5, 0.85)

#: How many reference captions :func:`caption_variants` gives a scene.
NUM_VARIANTS = 5

_OBJECT_WORDS = re.compile(rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})s?\b")


def caption_variants(scene: Scene) -> list[str]:
    """:data:`NUM_VARIANTS` reference captions of a scene: the same objects in other words and orders.

    Every variant names each object's colour and shape, no sizes; relations come from the objects'
    centres only. Each variant is a fixed template over a fixed order (left to right, or top to
    bottom), so one scene always gets the same five texts and a model that keeps to one template can
    match a reference word for word::

        a red star to the left of a blue ring
        a blue ring to the right of a red star
        a red star and a blue ring
        there is a blue ring and a red star
        a blue ring above a red star

    With three objects the relations form a chain: ``"a red star to the left of a blue ring, which is
    to the left of a green cross"``.
    """
    across = sorted(scene.objects, key=lambda o: (o.x, o.y))  # left to right
    down = sorted(scene.objects, key=lambda o: (o.y, o.x))  # top to bottom
    names = [f"{_a(o.color)} {o.shape}" for o in across]
    return [
        _chain(across, _across),
        _chain(across[::-1], _across),
        _listing(names),
        "there is " + _listing(names[::-1]),
        _chain(down, _down),
    ]


def parse_objects(text: str) -> list[tuple[str, str]]:
    """The ``(colour, shape)`` pairs a caption names, in its order: a colour of :data:`COLORS` right
    before a shape of :data:`SHAPES` (singular or plural, any case)."""
    return [(m[1], m[2]) for m in _OBJECT_WORDS.finditer(text.lower())]


def _listing(names: list[str]) -> str:
    """``"a, b and c"``."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _chain(objects: list[SceneObject], relation) -> str:
    """``"A rel B, which is rel C"``: each object related to the next one."""
    text = f"{_a(objects[0].color)} {objects[0].shape}"
    for k, (a, b) in enumerate(itertools.pairwise(objects)):
        text += (", which is " if k else " ") + f"{relation(a, b)} {_a(b.color)} {b.shape}"
    return text


def _across(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is from ``b`` across the image; on the same column, ``directly`` above or below."""
    if a.x != b.x:
        return "to the left of" if a.x < b.x else "to the right of"
    if a.y != b.y:
        return "directly above" if a.y < b.y else "directly below"
    return "in front of"  # the same centre: drawn later, so over it


def _down(a: SceneObject, b: SceneObject) -> str:
    """Where ``a`` is from ``b`` up and down the image; on the same row, ``level with`` it."""
    if a.y != b.y:
        return "above" if a.y < b.y else "below"
    return "level with" if a.x != b.x else "on top of"


# ------------------------------------------------------------------------------------------ datasets
def scene_record(scene: Scene, file_name: str, index: int) -> dict:
    """One ``metadata.jsonl`` line: the main object's shape and colour, the caption, every object."""
    main = scene.objects[0]
    return {
        "file_name": file_name,
        "shape": main.shape,
        "color": main.color,
        "caption": describe(scene),
        "index": index,
        "objects": [asdict(o) for o in scene.objects],
    }


def write_scene_dataset(
    root: Path,
    image_size: int,
    sizes: dict[str, int],
    seed: int,
    min_objects: int = 1,
    max_objects: int = 1,
    processes: int | None = None,
    object_size: tuple[float, float] | None = None,
    style: str = "color",
) -> None:
    """Write scenes as a Hugging Face ``imagefolder``: ``root/<split>/<index:06d>.png`` + ``metadata.jsonl``.

    Split ``s`` holds scenes ``SPLIT_OFFSETS[s] + i`` for ``i < sizes[s]``, so splits are disjoint.
    The folder appears whole or not at all: it is written beside ``root`` and renamed into place.

    Args:
        root: the dataset folder; replaced if it exists.
        image_size: side of the images in pixels.
        sizes: images per split (``train``, ``val``, ``test``), e.g.
            ``{"train": 12000, "val": 2000, "test": 2000}``.
        seed: the scene collection.
        min_objects: fewest objects per scene.
        max_objects: most objects per scene.
        processes: worker processes drawing images (default: one per CPU, at most 8).
        object_size: one object's side as fractions of the image side (see :func:`make_scene`).
        style: how the scenes are drawn (:data:`STYLES`).
    """
    _check_splits(sizes)

    def fill(folder: Path) -> None:
        fill_scene_folder(
            folder, image_size, sizes, seed, min_objects, max_objects, processes, object_size, style
        )

    replace_folder(Path(root), fill)


def fill_scene_folder(
    folder: Path,
    image_size: int,
    sizes: dict[str, int],
    seed: int,
    min_objects: int = 1,
    max_objects: int = 1,
    processes: int | None = None,
    object_size: tuple[float, float] | None = None,
    style: str = "color",
) -> None:
    """Write the scenes into the existing empty ``folder``; :func:`write_scene_dataset` without the rename."""
    folder, settings = Path(folder), (image_size, seed, min_objects, max_objects, object_size, style)
    records = _draw_splits(folder, sizes, settings, processes)
    for split, lines in records.items():
        with (folder / split / "metadata.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


def fill_coco_captions(
    folder: Path,
    image_size: int,
    sizes: dict[str, int],
    seed: int,
    processes: int | None = None,
) -> None:
    """Write captioning scenes into the existing empty ``folder`` in the COCO captions layout.

    ``folder/<split>/<index:06d>.png`` and ``folder/annotations/captions_<split>.json`` with
    ``images[]`` (``id``, ``file_name``, ``height``, ``width``, and ``objects``: each object's
    ``shape``, ``color`` and ``bbox`` ``[left, top, right, bottom]`` in pixels) and ``annotations[]``
    (``id``, ``image_id``, ``caption``): the :func:`caption_variants` of each scene. Scenes have
    :data:`CAPTION_OBJECTS` objects of :data:`CAPTION_OBJECT_SIZE`.
    """
    folder = Path(folder)
    settings = (image_size, seed, *CAPTION_OBJECTS, CAPTION_OBJECT_SIZE, "color")
    records = _draw_splits(folder, sizes, settings, processes)
    (folder / "annotations").mkdir()
    for split, lines in records.items():
        images, annotations = [], []
        for image_id, record in enumerate(lines):
            objects = [SceneObject(**o) for o in record["objects"]]
            images.append({
                "id": image_id, "file_name": record["file_name"], "height": image_size, "width": image_size,
                "objects": [{"shape": o.shape, "color": o.color, "bbox": list(o.bbox)} for o in objects],
            })  # fmt: skip
            scene = Scene(objects, background=(0, 0, 0), image_size=image_size)  # only what captions need
            for text in caption_variants(scene):
                annotations.append({"id": len(annotations), "image_id": image_id, "caption": text})
        coco = {"images": images, "annotations": annotations}
        (folder / "annotations" / f"captions_{split}.json").write_text(json.dumps(coco), encoding="utf-8")


def _draw_splits(folder: Path, sizes: dict[str, int], settings: tuple, processes: int | None) -> dict:
    """Render the scenes of each split into ``folder/<split>/`` (in worker processes); their records.

    ``settings``: ``(image_size, seed, min_objects, max_objects, object_size, style)``.
    """
    _check_splits(sizes)
    jobs = []
    for split, count in sizes.items():
        (folder / split).mkdir()
        for start in range(0, count, 500):
            numbers = range(start, min(count, start + 500))
            jobs.append((folder / split, split, numbers, *settings))
    records: dict[str, list[dict]] = {split: [] for split in sizes}
    processes = processes or cpu_count()
    if processes > 1 and len(jobs) > 1:
        with get_context(start_method()).Pool(processes) as pool:
            for split, chunk in pool.imap(_write_chunk, jobs):
                records[split].extend(chunk)
    else:
        for split, chunk in map(_write_chunk, jobs):
            records[split].extend(chunk)
    return records


def _check_splits(sizes: dict[str, int]) -> None:
    unknown = set(sizes) - set(SPLIT_OFFSETS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected {', '.join(SPLIT_OFFSETS)}")


def _write_chunk(job) -> tuple[str, list[dict]]:
    folder, split, numbers, image_size, seed, min_objects, max_objects, object_size, style = job
    records = []
    for i in numbers:
        index = SPLIT_OFFSETS[split] + i
        scene = make_scene(seed, index, image_size, min_objects, max_objects, object_size)
        name = f"{i:06d}.png"
        render(scene, style=style).save(folder / name, compress_level=1)
        records.append(scene_record(scene, name, index))
    return split, records

"""Image files for tests: class folders and Hugging Face hub-layout datasets of random images."""

import io
from pathlib import Path

import numpy as np
from PIL import Image


def save_image(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def random_image(rng, height: int, width: int, grey: bool = False) -> np.ndarray:
    return rng.integers(0, 256, (height, width) if grey else (height, width, 3), dtype=np.uint8)


def class_folders(
    root: Path, classes=("cat", "dog", "fox"), per_class=6, grey=False, sizes=((32, 32),), prefix=""
) -> Path:
    """``root/<prefix><class>/<i>.png``: random images of the given sizes."""
    rng = np.random.default_rng(len(str(root)))
    for name in classes:
        for i in range(per_class):
            height, width = sizes[i % len(sizes)]
            save_image(root / prefix / name / f"{i}.png", random_image(rng, height, width, grey))
    return root


def loose_images(root: Path, count: int = 12, folder: str = "", grey: bool = False, size: int = 24) -> Path:
    """``root/<folder>/<i>.png``: unlabelled random images, no class folders."""
    rng = np.random.default_rng(count + len(folder))
    for i in range(count):
        save_image(root / folder / f"{i}.png", random_image(rng, size, size, grey))
    return root


def write_hub_layout(root: Path, grey: bool) -> None:
    """A dataset folder as on the Hugging Face hub (like mnist or cifar10): parquet shards whose image column
    holds PNG bytes, and a ClassLabel column."""
    import datasets

    rng = np.random.default_rng(3)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    for split, count in (("train", 30), ("test", 9)):
        cells = []
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(random_image(rng, 28, 28, grey)).save(buffer, format="PNG")
            cells.append({"bytes": buffer.getvalue(), "path": f"{split}_{i}.png"})
        table = datasets.Dataset.from_dict(
            {"img": cells, "label": [i % 3 for i in range(count)]}, features=features
        )
        (root / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))

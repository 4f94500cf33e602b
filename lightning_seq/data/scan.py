"""The verification scan: open every image once, in parallel worker processes, before training.

:func:`scan_images` finds the unreadable images of each split, tells whether all images are grey,
and measures the per-channel mean and std of one split (exact integer sums of the pixels as
training decodes them). The worker-pool helpers :func:`cpu_count` and :func:`start_method` are
shared with the scene writer (:mod:`.scenes`). No torch, no Lightning.
"""

import os
from multiprocessing import get_all_start_methods, get_context

import numpy as np

from lightning_seq.data.decode import is_grey, open_image, to_array
from lightning_seq.data.image_sources import HubRows
from lightning_seq.data.sources import _first_line

SCAN_CHUNK = 256  # images per verification task


def cpu_count() -> int:
    """Worker processes for a pool: the CPUs this process may run on, at most 8."""
    try:
        return min(8, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return min(8, os.cpu_count() or 1)


def start_method() -> str:
    """``fork`` where the platform has it (fast, nothing to re-import), else ``spawn``."""
    return "fork" if "fork" in get_all_start_methods() else "spawn"


_SCAN_IMAGES: dict = {}  # split -> sequence of image refs, for the verification workers


def _init_scan(images: dict) -> None:
    global _SCAN_IMAGES
    _SCAN_IMAGES = images


def _scan_chunk(task: tuple[str, int, int, int, bool, int]) -> dict:
    """Decode images ``[start, stop)`` of a split: unreadable ones, greyness and pixel sums (0-255)."""
    split, start, stop, image_size, stats, channels = task
    images = _SCAN_IMAGES[split]
    total, total_sq, pixels = np.zeros(channels, np.int64), np.zeros(channels, np.int64), 0
    bad, grey = [], True
    mode = "L" if channels == 1 else "RGB"
    refs = images.many(range(start, stop)) if isinstance(images, HubRows) else images[start:stop]
    for i, ref in zip(range(start, stop), refs, strict=True):
        try:
            with open_image(ref, draft=(mode, image_size)) as image:
                grey = grey and is_grey(image)
                array = to_array(image, image_size, channels) if stats else None
        except Exception as err:
            bad.append((i, _first_line(err)))
            continue
        if array is not None:
            flat = array.reshape(-1, channels).astype(np.int64)  # (S * S, C)
            total += flat.sum(0)
            total_sq += (flat * flat).sum(0)
            pixels += flat.shape[0]
    return {"split": split, "bad": bad, "grey": grey, "sum": total, "sum_sq": total_sq, "pixels": pixels}


def scan_images(
    images: dict,
    image_size: int,
    stats_split: str = "train",
    processes: int | None = None,
    channels: int = 3,
) -> dict:
    """Open every image once (in parallel for many): unreadable ones per split, greyness, mean/std.

    Args:
        images: ``{split: sequence of image refs}`` (paths, image cells or :class:`HubRows`).
        image_size: the side the images are measured at.
        stats_split: the split whose pixel statistics are measured.
        processes: worker processes (default :func:`cpu_count`; one for few images).
        channels: measure the statistics of RGB (3) or grey (1) images. With 1, images are decoded
            grey, so ``grey`` is true of every decodable image.

    Returns:
        ``{"bad": {split: [(index, error)]}, "grey": bool, "mean": [C], "std": [C]}``, on a 0-1 scale.
    """
    tasks = [
        (split, start, min(start + SCAN_CHUNK, len(refs)), image_size, split == stats_split, channels)
        for split, refs in images.items()
        for start in range(0, len(refs), SCAN_CHUNK)
    ]
    processes = processes or cpu_count()
    if processes > 1 and len(tasks) > 4:
        context = get_context(start_method())
        with context.Pool(min(processes, len(tasks)), _init_scan, (images,)) as pool:
            results = list(pool.imap(_scan_chunk, tasks))
    else:
        _init_scan(images)
        results = [_scan_chunk(t) for t in tasks]
        _init_scan({})
    total = sum((r["sum"] for r in results), np.zeros(channels, np.int64)) / 255.0
    total_sq = sum((r["sum_sq"] for r in results), np.zeros(channels, np.int64)) / 255.0**2
    pixels = max(1, sum(r["pixels"] for r in results))
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0.0))
    bad: dict[str, list] = {split: [] for split in images}
    for r in results:
        bad[r["split"]].extend(r["bad"])
    return {"bad": bad, "grey": all(r["grey"] for r in results), "mean": mean.tolist(), "std": std.tolist()}

"""Opening and decoding one image: a file path or a Hugging Face image cell -> ``(S, S, C)`` uint8.

Every image the DataModule reads goes through :func:`decode_image`, the verification scan through
:func:`open_image` and :func:`to_array`, so what is measured is exactly what training sees.
Pure PIL and numpy: no torch, no Lightning.
"""

import io

import numpy as np
from PIL import ExifTags, Image, ImageOps

#: The bands of a one-intensity image (``1``, ``L``, ``I``, ``F``; an alpha band aside).
GREY_BANDS = {"1", "L", "I", "F"}

ImageRef = str | dict  # a file path, or a Hugging Face image cell {"bytes": ..., "path": ...}


def image_extensions() -> set[str]:
    """The file extensions Hugging Face's ``imagefolder`` reads (``.png``, ``.jpg``, ``.webp``...)."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {ext.lower() for ext in ImageFolder.EXTENSIONS}


def open_image(ref: ImageRef, draft: tuple[str, int] | None = None) -> Image.Image:
    """Open and fully decode an image (truncated or corrupt files raise here), upright per its EXIF.

    Args:
        ref: a path, or ``{"bytes", "path"}`` as stored by ``datasets.Image(decode=False)``.
        draft: ``(mode, size)``: let JPEG decode straight at a reduced scale no smaller than ``size``.
    """
    if isinstance(ref, dict):
        data = ref.get("bytes")
        source = io.BytesIO(data) if data is not None else ref.get("path")
    else:
        source = ref
    image = Image.open(source)
    try:
        if draft is not None and image.format == "JPEG":
            image.draft(draft[0], (draft[1], draft[1]))
        image.load()
        if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            image = ImageOps.exif_transpose(image)
    except BaseException:
        image.close()
        raise
    return image


def is_grey(image: Image.Image) -> bool:
    """Whether an image has one intensity band (``L``, ``LA``, ``I;16``, ``1``...): no palette, no colour."""
    return set(image.getbands()) - {"A"} <= GREY_BANDS


def to_array(image: Image.Image, image_size: int, channels: int) -> np.ndarray:
    """``(S, S, C)`` uint8: converted to RGB or L, its central square resized to ``S`` x ``S`` if need be."""
    mode = "L" if channels == 1 else "RGB"
    if image.mode.startswith("I"):  # 16/32-bit intensities: 16-bit range down to 8 bits
        image = Image.fromarray((np.asarray(image, np.float32) / 257).clip(0, 255).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != mode:
        image = image.convert(mode)
    width, height = image.size
    if (width, height) != (image_size, image_size):
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)
    array = np.array(image, dtype=np.uint8)  # (S, S) or (S, S, 3), writable
    return array[:, :, None] if array.ndim == 2 else array


def decode_image(ref: ImageRef, image_size: int, channels: int) -> np.ndarray:
    """A stored image as ``(S, S, C)`` uint8, exactly as training reads it."""
    mode = "L" if channels == 1 else "RGB"
    with open_image(ref, draft=(mode, image_size)) as image:
        return to_array(image, image_size, channels)

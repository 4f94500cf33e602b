"""ImagePredictions: a grid of validation images captioned with their true and predicted classes.

After every validation run, the first images of the first validation batch are drawn with
``true / predicted`` under each (green when right, red when wrong), saved to
``<run dir>/predictions/step_NNNNNN.png`` and logged to W&B as ``val/predictions``. The predictions
are the ones the validation step already computed (its ``logits`` output), so no extra forward
pass runs. Only global rank zero draws, with no collective operations inside.
"""

import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont

from lightning_seq.errors import InputError
from lightning_seq.utils import run_dir

_RIGHT, _WRONG = (40, 170, 60), (210, 40, 40)


class ImagePredictions(L.Callback):
    """Logs labelled validation images.

    Args:
        num_images: how many images the grid shows.
        tile_size: each image is scaled (nearest neighbour) to about this many pixels a side.
    """

    def __init__(self, num_images: int = 16, tile_size: int = 96):
        if num_images < 1 or tile_size < 8:
            raise InputError(
                "ImagePredictions: expected num_images >= 1 and tile_size >= 8, "
                f"got {num_images} and {tile_size}."
            )
        self.num_images, self.tile_size = num_images, tile_size
        self._pending: tuple[torch.Tensor, list[int], list[int]] | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        images, labels = batch["image"][: self.num_images], batch["label"][: self.num_images]
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(images)
        preds = logits[: self.num_images].argmax(-1)
        self._pending = (images.detach().float().cpu(), labels.tolist(), preds.tolist())

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        images, labels, preds = self._pending
        self._pending = None
        datamodule = getattr(trainer, "datamodule", None)
        if hasattr(datamodule, "denormalize"):
            images = datamodule.denormalize(images)
        else:  # unknown normalisation: stretch each image to [0, 1]
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            images = (images - low) / (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
        names = getattr(pl_module, "classes", None) or getattr(datamodule, "classes", None)
        grid = draw_grid(images, labels, preds, names, self.tile_size)
        step = trainer.global_step
        path = run_dir(trainer) / "predictions" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                caption = f"step {step}: true / predicted"
                logger.log_image(key="val/predictions", images=[grid], caption=[caption], step=step)


def draw_grid(
    images: torch.Tensor, labels: list[int], preds: list[int], names: list[str] | None, tile_size: int = 96
) -> Image.Image:
    """A grid of ``images (N, C, H, W)`` in [0, 1], each captioned ``true / predicted``."""
    n, _, h, w = images.shape
    scale = max(1, round(tile_size / max(h, w)))
    tile_h, tile_w, text_h = h * scale, w * scale, 14
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * (tile_w + 4), rows * (tile_h + text_h + 4)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        tile = Image.fromarray(
            np.ascontiguousarray(pixels[i].squeeze(-1) if pixels.shape[-1] == 1 else pixels[i])
        )
        tile = tile.convert("RGB").resize((tile_w, tile_h), Image.NEAREST)
        x, y = (i % cols) * (tile_w + 4) + 2, (i // cols) * (tile_h + text_h + 4) + 2
        grid.paste(tile, (x, y))
        true, pred = (names[labels[i]], names[preds[i]]) if names else (str(labels[i]), str(preds[i]))
        colour = _RIGHT if labels[i] == preds[i] else _WRONG
        draw.text((x, y + tile_h + 1), f"{true} / {pred}", fill=colour, font=font)
    return grid

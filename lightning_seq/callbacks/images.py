"""Image grids: labelled validation predictions, and samples of generative models.

:class:`ImagePredictions`: after every validation run, the first images of the first validation
batch are drawn with ``true / predicted`` under each (green when right, red when wrong), saved to
``<run dir>/predictions/step_NNNNNN.png`` and logged to W&B as ``val/predictions``. The predictions
are the ones the validation step already computed (its ``logits`` output), so no extra forward
pass runs.

:class:`ImageSamples`: every N steps and/or epochs, a grid of ``pl_module.sample(n)`` drawn with a
fixed seed (one row per class for class-conditional models), saved to
``<run dir>/samples/step_NNNNNN.png`` and logged to W&B as ``val/samples``; for a diffusion model also
its denoising trajectory (``trajectory`` rows, noise to image from left to right), saved to
``<run dir>/trajectory/`` and logged as ``val/trajectory``.

Both draw on global rank zero only, with no collective operations inside, and share one tile grid
(:func:`tile_grid`).
"""

import math

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont

from lightning_seq.data.pixels import to_unit as pixels_to_unit
from lightning_seq.errors import InputError
from lightning_seq.utils import evaluating, run_dir, training_ends

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
        if hasattr(datamodule, "to_unit"):
            images = datamodule.to_unit(images)
        elif hasattr(datamodule, "denormalize"):
            images = datamodule.denormalize(images)
        else:  # unknown normalisation: stretch each image to [0, 1]
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            images = (images - low) / (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
        names = getattr(pl_module, "classes", None) or getattr(datamodule, "classes", None)
        grid = draw_grid(images, labels, preds, names, self.tile_size)
        publish_grid(trainer, grid, "predictions", "val/predictions", "true / predicted")


def draw_grid(
    images: torch.Tensor, labels: list[int], preds: list[int], names: list[str] | None, tile_size: int = 96
) -> Image.Image:
    """A grid of ``images (N, C, H, W)`` in [0, 1], each captioned ``true / predicted``."""
    name = (lambda i: names[i]) if names else str
    captions = [f"{name(t)} / {name(p)}" for t, p in zip(labels, preds, strict=True)]
    colours = [_RIGHT if t == p else _WRONG for t, p in zip(labels, preds, strict=True)]
    return tile_grid(images, tile_size=tile_size, captions=captions, colours=colours)


def publish_grid(
    trainer: L.Trainer, grid: Image.Image, folder: str, key: str, caption: str | None = None
) -> None:
    """Save ``grid`` to ``<run dir>/<folder>/step_NNNNNN.png`` and log it to W&B as ``key``, captioned
    ``step N`` (then ``: caption``)."""
    step = trainer.global_step
    path = run_dir(trainer) / folder / f"step_{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    text = f"step {step}" + (f": {caption}" if caption else "")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], caption=[text], step=step)


def tile_grid(
    images: torch.Tensor,
    cols: int | None = None,
    tile_size: int = 96,
    captions: list[str] | None = None,
    colours: list[tuple[int, int, int]] | None = None,
) -> Image.Image:
    """Images side by side, row after row, on a white RGB canvas.

    Args:
        images: ``(N, C, H, W)`` in [0, 1], grey (``C = 1``) or RGB.
        cols: tiles per row; default ``ceil(sqrt(N))``.
        tile_size: each image is scaled up (nearest neighbour, by a whole factor) to about this many
            pixels a side.
        captions: a text under each tile (a 14-pixel strip; none without captions).
        colours: the RGB colour of each caption; default black.
    """
    n, _, h, w = images.shape
    scale = max(1, round(tile_size / max(h, w)))
    tile_h, tile_w, text_h = h * scale, w * scale, 14 if captions is not None else 0
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = Image.new("RGB", (cols * (tile_w + 4), rows * (tile_h + text_h + 4)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    pixels = (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        tile = Image.fromarray(
            np.ascontiguousarray(pixels[i].squeeze(-1) if pixels.shape[-1] == 1 else pixels[i])
        )
        tile = tile.convert("RGB").resize((tile_w, tile_h), Image.NEAREST)
        x, y = (i % cols) * (tile_w + 4) + 2, (i // cols) * (tile_h + text_h + 4) + 2
        grid.paste(tile, (x, y))
        if captions is not None:
            colour = colours[i] if colours is not None else (0, 0, 0)
            draw.text((x, y + tile_h + 1), captions[i], fill=colour, font=font)
    return grid


# ------------------------------------------------------------------------------ generative samples
class ImageSamples(L.Callback):
    """Logs a grid of samples of a generative model, drawn with a fixed seed.

    The module has the generative contract: ``sample(n, *, labels=None, generator=None)`` returns
    ``(n, C, H, W)`` images in the data's pixel convention, and ``num_classes`` is set (not None) when
    it is class-conditional. A conditional model's grid has one row per class, captioned with the
    class names. The same seed gives the same grid for the same weights, so grids of a run show how
    one set of draws changes. Images are brought to [0, 1] by the DataModule's ``to_unit``, or by
    :func:`lightning_seq.data.pixels.to_unit` with the module's ``pixels``.

    Args:
        num_images: images in the grid of an unconditional model.
        per_class: images per class row of a conditional model.
        every_n_steps: draw every this many optimizer steps (None: never by steps).
        every_n_epochs: draw at the end of every this many training epochs (None: never by epochs).
            Either way, a grid of the final weights is drawn where training ends.
        seed: seeds the ``torch.Generator`` handed to ``sample``.
        tile_size: each image is scaled up to about this many pixels a side.
        trajectory: rows of the denoising trajectory grid, for models with ``denoising_trajectory``
            (diffusion): each row one sample, ``trajectory_frames`` states from noise to the image; 0: none.
        trajectory_frames: states per trajectory row (at least 2).
    """

    def __init__(
        self,
        num_images: int = 64,
        per_class: int = 8,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        seed: int = 0,
        tile_size: int = 64,
        trajectory: int = 0,
        trajectory_frames: int = 8,
    ):
        for name, value in (("num_images", num_images), ("per_class", per_class)):
            if value < 1:
                raise InputError(f"ImageSamples.{name}: expected a positive integer, got {value}.")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and value < 1:
                raise InputError(f"ImageSamples.{name}: expected a positive integer or null, got {value}.")
        if tile_size < 8:
            raise InputError(f"ImageSamples.tile_size: expected at least 8, got {tile_size}.")
        if trajectory < 0 or trajectory_frames < 2:
            raise InputError(
                "ImageSamples.trajectory / trajectory_frames: expected rows >= 0 and frames >= 2, got "
                f"{trajectory} and {trajectory_frames}."
            )
        self.trajectory, self.trajectory_frames = trajectory, trajectory_frames
        self.num_images, self.per_class = num_images, per_class
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.seed, self.tile_size = seed, tile_size
        self._last_step = -1
        self.last_grid: Image.Image | None = None  # the grid drawn last (on rank zero)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "sample", None)):  # checked on every rank, before any work
            raise InputError(
                f"ImageSamples: {type(pl_module).__name__} has no sample() method. "
                "Fix: remove the callback from the recipe, or use a generative model."
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # with gradient accumulation, several batches share a step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.draw(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if every or training_ends(trainer):  # and the final weights' grid, whatever the period
            self.draw(trainer, pl_module)

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Image.Image | None:
        """Draw, save and log the grid now (once per step; on global rank zero only)."""
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_step:
            return None
        self._last_step = step
        num_classes = getattr(pl_module, "num_classes", None)
        if num_classes:
            labels = torch.arange(num_classes).repeat_interleave(self.per_class)  # (K * per_class,)
            n, cols = len(labels), self.per_class
        else:
            labels, n, cols = None, self.num_images, None
        generator = torch.Generator().manual_seed(self.seed)
        wanted = None if labels is None else labels.to(pl_module.device)
        with evaluating(pl_module):
            images = pl_module.sample(n, labels=wanted, generator=generator)  # (n, C, H, W)
        images = to_unit(trainer, pl_module, images)
        captions = None
        if labels is not None:
            names = class_names(trainer, pl_module) or [str(c) for c in range(num_classes)]
            captions = [names[c] for c in labels.tolist()]
        grid = tile_grid(images, cols, self.tile_size, captions)
        publish_grid(trainer, grid, "samples", "val/samples")
        self.last_grid = grid
        self.draw_trajectory(trainer, pl_module)
        return grid

    def draw_trajectory(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The denoising trajectory grid of a model that has ``denoising_trajectory`` (one row per sample,
        the first ``trajectory`` classes' rows of a conditional model)."""
        trajectory = getattr(pl_module, "denoising_trajectory", None)
        if not self.trajectory or not callable(trajectory):
            return
        num_classes = getattr(pl_module, "num_classes", None)
        labels = torch.arange(self.trajectory, device=pl_module.device) % num_classes if num_classes else None
        generator = torch.Generator().manual_seed(self.seed)
        frames = self.trajectory_frames
        with evaluating(pl_module):
            states = trajectory(self.trajectory, frames=frames, labels=labels, generator=generator)
        rows = states.transpose(0, 1).flatten(0, 1)  # (F, n, C, H, W) -> (n * F, C, H, W): a row per sample
        images = to_unit(trainer, pl_module, rows)
        grid = tile_grid(images, frames, self.tile_size)
        publish_grid(trainer, grid, "trajectory", "val/trajectory", "from noise (left) to image (right)")


def to_unit(trainer: L.Trainer, pl_module: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
    """Images in the data's pixel convention as floats in [0, 1]: through the DataModule's ``to_unit``,
    else :func:`lightning_seq.data.pixels.to_unit` with the module's ``pixels``."""
    datamodule = getattr(trainer, "datamodule", None)
    if hasattr(datamodule, "to_unit"):
        return datamodule.to_unit(images).float()
    pixels = getattr(pl_module, "pixels", None)
    if pixels is None:
        raise InputError(
            f"{type(pl_module).__name__}: cannot tell the pixel convention of its samples: the DataModule "
            "has no to_unit() and the model no `pixels` attribute. Fix: train on ImageDataModule, or set "
            "`pixels` on the model."
        )
    mean, std = getattr(pl_module, "mean", None), getattr(pl_module, "std", None)
    return pixels_to_unit(images, pixels, mean, std).float()


def class_names(trainer: L.Trainer, pl_module: L.LightningModule) -> list[str] | None:
    """The class names of the module, else of the DataModule, else None."""
    names = getattr(pl_module, "classes", None)
    if not names:
        names = getattr(getattr(trainer, "datamodule", None), "classes", None)
    return list(names) if names else None

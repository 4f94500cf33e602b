"""Captions with their attention maps: what a captioner says of fixed validation images, and where it looked.

:class:`AttentionMaps`: after every validation run, the first ``num_images`` images of the first
validation batch, with the captions the validation step gave them (the module's decoding settings,
beam search by default; captioned here when validation captions no batch), are drawn one row per
image: the image, then one panel per word of its caption with that word's spatial attention upsampled
over the image (bright where the net looked). The grid is saved to
``<run dir>/attention/step_NNNNNN.png`` and logged to W&B as ``val/attention``, beside a W&B table
``val/captions`` (image, generated caption, references, BLEU-4 of that caption). A net without spatial
attention gets the table and a grid of images with their captions. Rank zero only, with no collective
operations inside.
"""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from lightning_seq.callbacks.images import publish_grid, tile_grid
from lightning_seq.errors import InputError

TABLE_KEY = "val/captions"


class AttentionMaps(L.Callback):
    """Logs captions of fixed validation images with each word's attention map.

    Args:
        num_images: images captioned, the first ones of the first validation batch.
        max_words: panels per row at most (long captions are cut).
        tile_size: each panel is scaled (nearest neighbour) to about this many pixels a side.
    """

    def __init__(self, num_images: int = 4, max_words: int = 24, tile_size: int = 64):
        if num_images < 1 or max_words < 1 or tile_size < 8:
            raise InputError(
                "AttentionMaps: expected num_images >= 1, max_words >= 1 and tile_size >= 8, got "
                f"{num_images}, {max_words} and {tile_size}."
            )
        self.num_images, self.max_words, self.tile_size = num_images, max_words, tile_size
        self._pending: tuple | None = None  # images, references, caption ids, attention

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        n = self.num_images
        captioned = isinstance(outputs, dict) and "caption_tokens" in outputs  # validation captioned them
        tokens = outputs["caption_tokens"][:n] if captioned else None
        attention = outputs["caption_attention"] if captioned else None
        self._pending = (
            batch["images"][:n].detach(),
            list(batch["references"][:n]),
            tokens,
            attention[:n] if attention is not None else None,
        )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is None:
            return
        images, references, tokens, attention = self._pending
        self._pending = None
        if tokens is None:  # validation captioned no batch (decode_val_batches: 0)
            tokens, attention = pl_module.caption_tokens(images, with_attention=True)
        words = pl_module.words(tokens)
        shown = _to_unit(trainer, images.float().cpu())
        grid = attention_grid(shown, words, attention, pl_module.net.grid, self.max_words, self.tile_size)
        publish_grid(trainer, grid, "attention", "val/attention", "each word's attention")
        texts = pl_module.detokenize(tokens)
        _log_table(trainer, shown, texts, references, pl_module.sentence_bleu(texts, references))


def _log_table(
    trainer: L.Trainer,
    images: torch.Tensor,
    captions: list[str],
    references: list[list[str]],
    bleu: list[float],
) -> None:
    """The W&B table ``val/captions``: image, caption, references, BLEU-4 (nothing without a W&B logger)."""
    loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
    if not loggers:
        return
    import wandb  # only with a W&B logger, which has imported it already

    rows = []
    for image, caption, refs, score in zip(images, captions, references, bleu, strict=True):
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, C)
        shown = wandb.Image(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels)
        rows.append([shown, caption, "\n".join(refs), round(score, 4)])
    for logger in loggers:
        logger.log_table(
            key=TABLE_KEY,
            columns=["image", "caption", "references", "bleu4"],
            data=rows,
            step=trainer.global_step,
        )


def attention_grid(
    images: torch.Tensor,
    words: list[list[str]],
    attention: torch.Tensor | None,
    grid: tuple[int, int],
    max_words: int = 24,
    tile_size: int = 64,
) -> Image.Image:
    """One row per image: the image, then one panel per word with its attention over the image.

    Args:
        images: ``(B, C, H, W)`` in [0, 1].
        words: each image's caption, one word per generated token.
        attention: ``(B, n, L)`` each token's spatial attention, ``L = h * w``; None draws the images
            alone, captioned.
        grid: the feature grid ``(h, w)``.
        max_words: panels per row at most.
        tile_size: about this many pixels a panel side.
    """
    b, c, height, width = images.shape
    if attention is None:
        return tile_grid(images, cols=1, tile_size=tile_size * 2, captions=[" ".join(w) for w in words])
    cols = 1 + min(max_words, max((len(w) for w in words), default=0))
    rgb = images.expand(b, 3, height, width) if c == 1 else images  # (B, 3, H, W)
    h, w = grid
    maps = attention.float().cpu().view(b, -1, 1, h, w)[:, : cols - 1]  # (B, n, 1, h, w)
    panels, captions = [], []
    for i in range(b):
        panels.append(rgb[i])
        captions.append("")
        for t in range(cols - 1):
            if t < len(words[i]) and t < maps.size(1):
                heat = F.interpolate(
                    maps[i, t][None], size=(height, width), mode="bilinear", align_corners=False
                )[0]
                heat = heat / heat.max().clamp(min=1e-8)  # (1, H, W) in [0, 1]
                panels.append(rgb[i] * (0.2 + 0.8 * heat))  # dark where the net did not look
                captions.append(words[i][t])
            else:
                panels.append(torch.ones_like(rgb[i]))
                captions.append("")
    return tile_grid(torch.stack(panels), cols=cols, tile_size=tile_size, captions=captions)


def _to_unit(trainer: L.Trainer, images: torch.Tensor) -> torch.Tensor:
    """Normalised images back to [0, 1] with the DataModule's statistics (stretched when it has none)."""
    datamodule = getattr(trainer, "datamodule", None)
    if hasattr(datamodule, "denormalize"):
        return datamodule.denormalize(images).clamp(0, 1)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    return (images - low) / (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)

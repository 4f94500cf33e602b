"""Captioner: image captioning with teacher forcing, scored by captions decoded with beam search.

Any net with the captioning contract plugs in (:mod:`lightning_seq.nets.captioner`):
``net(images, tokens) -> (logits, attention)``, ``net.encode(images) -> features (B, L, C)``,
``net.start(features) -> state`` and ``net.decode(tokens, state) -> (logits, state)``, with the image
encoder as ``net.encoder`` and its feature grid as ``net.grid``. Batches are
``{"images": (B, C, H, W), "captions": (B, T)}`` with ``captions = [BOS, w_1 ... w_n, EOS]``
right-padded with ``pad_id`` (:class:`~lightning_seq.data.CaptionDataModule`); validation and test
batches add every image's ``references`` and, for the embedded scenes, its ``objects``.

Training minimises the label-smoothed cross entropy of ``captions[:, 1:]`` given ``captions[:, :-1]``
plus Show, Attend and Tell's doubly stochastic attention penalty over the real (unpadded) steps::

    L = CE + lambda * sum_i (1 - sum_t alpha_ti)^2      (mean over images)

Validation and test caption the images with the shared decoding library (beam search by default) and
log ``bleu1`` .. ``bleu4`` (torchmetrics, multi-reference), ``cider`` (CIDEr-D, ours), and on data
that knows its scenes: ``scene_acc``, the share of captions that name exactly the scene's objects
(colour and shape, parsed back with the scenes' vocabulary), and ``grounding``, the attention mass
inside an object's box at the steps where the caption names that object's shape, beside
``grounding_chance``, the share of the image those boxes cover (what attention spread evenly gets).
"""

from collections import Counter
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from tokenizers import Tokenizer
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.text import bleu_score
from torchmetrics.text import BLEUScore

from lightning_seq.checkpointing import newest_match
from lightning_seq.data import pixels as px
from lightning_seq.data.decode import decode_image, to_array
from lightning_seq.data.scenes import parse_objects
from lightning_seq.decoding import GenerationConfig, State, generate
from lightning_seq.errors import InputError
from lightning_seq.layers.batch_norm import sync_batch_norm
from lightning_seq.modules._base import NetModule, Optimization
from lightning_seq.modules._generation import GenerationFromData
from lightning_seq.modules._tokenizers import TokenizersInCheckpoints
from lightning_seq.modules.caption_metrics import CIDErD, bleu_texts, coco_scores, coco_scores_unavailable
from lightning_seq.modules.image_classifier import load_classifier

IMAGE_STATS = "image_stats"  # the checkpoint key of the data's image size, channels, mean and std


class Captioner(TokenizersInCheckpoints, GenerationFromData, NetModule):
    """Trains an image captioner and captions images with it.

    Args:
        net: the network, e.g. :class:`~lightning_seq.nets.ShowAttendTell` or
            :class:`~lightning_seq.nets.TransformerCaptioner`.
        label_smoothing: probability mass spread uniformly over the vocabulary in the targets.
        attention_penalty: ``lambda`` of the doubly stochastic attention penalty (nets with spatial
            attention only); 0 turns it off.
        pad_id: padding id; never scored (linked from the data).
        bos_id: the token every caption starts with (linked from the data).
        eos_id: the token that ends every caption; decoding stops there (linked from the data).
        generation: decoding settings of validation, :meth:`caption` and ``lightning predict``; by
            default beam search with 3 beams and ``max_new_tokens`` sized to the longest training caption.
        decode_val_batches: caption this many batches per validation / test run for the caption metrics
            (None: all of them; 0: none).
        encoder_checkpoint: an :class:`~lightning_seq.modules.ImageClassifier` checkpoint (a path or a
            glob: its newest match) whose net's weights start the encoder, as a pretrained CNN would:
            the net's encoder must have the classifier net's architecture. Read when ``fit`` starts a
            new run only (a resumed run and a loaded checkpoint have the weights already).
        encoder_lr_scale: the encoder's learning rate as a fraction of the optimizer's; 0 freezes it.
        freeze_encoder_epochs: keep the encoder frozen (no gradients, batch-norm statistics fixed) for
            this many epochs, then fine-tune it. Under DDP a frozen encoder's parameters get no gradients:
            run with ``--trainer.strategy=ddp_find_unused_parameters_true``.
        coco_scores: at the end of ``lightning test``, also log the official COCO scores of the test captions
            (``test/coco_bleu4``, ``test/coco_meteor``, ``test/coco_rouge_l``, ``test/coco_cider``, by
            ``pycocoevalcap`` with its Java PTB tokenizer and METEOR) when ``pycocoevalcap`` and Java are
            installed; otherwise say once why not.
        sync_batchnorm: under DDP, batch norm uses the statistics of the global batch
            (:func:`~lightning_seq.layers.sync_batch_norm`), so that two processes train as one.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    DEFAULT_GENERATION: ClassVar[dict] = {"strategy": "beam", "num_beams": 3, "max_new_tokens": 32}
    tokenizer: Tokenizer | None = None

    def __init__(
        self,
        net: nn.Module,
        label_smoothing: float = 0.0,
        attention_penalty: float = 0.01,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        generation: GenerationConfig | None = None,
        decode_val_batches: int | None = None,
        encoder_checkpoint: str | None = None,
        encoder_lr_scale: float = 1.0,
        freeze_encoder_epochs: int = 0,
        coco_scores: bool = True,
        sync_batchnorm: bool = True,
        **kwargs,
    ):
        _check_settings(net, label_smoothing, attention_penalty, decode_val_batches, encoder_lr_scale,
                        freeze_encoder_epochs)  # fmt: skip
        super().__init__(net, **kwargs)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.init_generation(generation)
        self.metrics = nn.ModuleDict({stage: _caption_metrics() for stage in ("val", "test")})
        self.image_stats: dict | None = None  # image size, channels, mean, std: for caption() of files
        if encoder_lr_scale == 0:
            self.net.encoder.requires_grad_(False)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced logits ``(B, T, V)`` of ``tokens (B, T)``; the attention ``(B, T, L)`` or None."""
        return self.net(images, tokens)

    # -------------------------------------------------------------------------------- training
    def compute_loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        attention: torch.Tensor | None,
        across_ranks: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, cross entropy, penalty)``: the label-smoothed cross entropy per scored token plus the
        attention penalty per image.

        Args:
            logits: ``(B, T, V)`` scores.
            targets: ``(B, T)`` next tokens; ``pad_id`` targets are not scored.
            attention: ``(B, T, L)`` spatial weights of each step, or None.
            across_ranks: per token of the whole global batch (training under DDP): each rank divides its
                sum by the tokens of all ranks (one all-reduce of a count) times the number of ranks, so that
                DDP's mean of the ranks' gradients is the gradient of one process over the same batch,
                however the caption lengths fall between the ranks.
        """
        real = targets != self.pad_id  # (B, T): the steps that predict a real token (EOS included)
        ce_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self.pad_id, reduction="sum",
            label_smoothing=self.hparams.label_smoothing,
        )  # fmt: skip
        tokens, ranks = real.sum(), 1
        if across_ranks and self._trainer is not None and self.trainer.world_size > 1:
            ranks = self.trainer.world_size
            tokens = self.trainer.strategy.reduce(tokens.float(), reduce_op="sum")
        ce = ce_sum * ranks / tokens.clamp(min=1)
        penalty = logits.new_zeros((), dtype=torch.float32)
        if attention is not None and self.hparams.attention_penalty > 0:
            coverage = (attention.float() * real[..., None]).sum(dim=1)  # (B, L): sum_t alpha_ti
            penalty = self.hparams.attention_penalty * (1.0 - coverage).square().sum(dim=1).mean()
        return ce + penalty, ce, penalty

    def _step(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        images, captions = batch["images"], batch["captions"]  # (B, C, H, W), (B, T + 1)
        targets = captions[:, 1:]  # (B, T)
        logits, attention = self(images, captions[:, :-1])  # (B, T, V), (B, T, L) or None
        loss, _, penalty = self.compute_loss(logits, targets, attention, across_ranks=stage == "train")
        size = images.size(0)
        self.log_loss(stage, loss, size)
        if attention is not None and self.hparams.attention_penalty > 0:
            train = stage == "train"
            self.log(f"{stage}/attention_penalty", penalty, on_step=train, on_epoch=not train,
                     sync_dist=not train, batch_size=size)  # fmt: skip
        if stage == "train":
            return {"loss": loss}
        nll_sum = F.cross_entropy(  # unsmoothed, for the Perplexity callback
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self.pad_id, reduction="sum"
        )
        return {"loss": loss, "nll_sum": nll_sum, "num_tokens": (targets != self.pad_id).sum()}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> dict:
        out = self._step(batch, stage)
        limit = self.hparams.decode_val_batches
        if limit is None or batch_idx < limit:  # the captions, for callbacks (AttentionMaps)
            out["caption_tokens"], out["caption_attention"] = self.score_captions(batch, stage)
        return out

    def score_captions(self, batch: dict, stage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption ``batch["images"]``; log BLEU-1..4 and CIDEr-D against ``batch["references"]`` and,
        when the batch has its scenes' ``objects``, scene accuracy and grounding. Returns the caption ids
        ``(B, n)`` and their attention ``(B, n, L)`` (None without spatial attention)."""
        tokens, attention = self.caption_tokens(batch["images"], with_attention=True)
        hypotheses = self.detokenize(tokens)
        references = [list(refs) for refs in batch["references"]]
        metrics, size = self.metrics[stage], len(hypotheses)
        bleu_hyps, bleu_refs = bleu_texts(hypotheses, references)  # COCO's words and tie-breaking
        for n in range(1, 5):
            metrics[f"bleu{n}"].update(bleu_hyps, bleu_refs)
        metrics["cider"].update(hypotheses, references)
        logged = [f"bleu{n}" for n in range(1, 5)] + ["cider"]
        objects = batch.get("objects")
        if objects is not None and all(o is not None for o in objects):
            right = [_names_scene(h, o) for h, o in zip(hypotheses, objects, strict=True)]
            metrics["scene_acc"].update(torch.tensor(right, dtype=torch.float32, device=self.device))
            logged.append("scene_acc")
            if attention is not None:  # logged by every rank alike (their epoch-end syncs must match)
                inside, chance = grounding(self.words(tokens), attention, objects, self.net.grid)
                metrics["grounding"].update(torch.tensor(inside, device=self.device))  # none: no update
                metrics["grounding_chance"].update(torch.tensor(chance, device=self.device))
                logged += ["grounding", "grounding_chance"]
        for name in logged:
            self.log(
                f"{stage}/{name}", metrics[name], prog_bar=name == "bleu4", on_epoch=True, batch_size=size
            )
        return tokens, attention

    def on_test_epoch_end(self) -> None:
        cider = self.metrics["test"]["cider"]
        if not self.hparams.coco_scores or not cider.update_called:
            return
        reason = coco_scores_unavailable()
        if reason is not None:
            rank_zero_info(f"Official COCO caption scores skipped: {reason}.")
            return
        hypotheses, references = cider.captions()  # every rank's (a collective: all ranks call it)
        if self.trainer.is_global_zero:
            scores = coco_scores(hypotheses, references) or {}
            for name, value in scores.items():
                self.log(f"test/coco_{name}", value, rank_zero_only=True)

    # ------------------------------------------------------------------------------ generation
    def decode_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The decoding library's step: consume ``tokens (N, t)``; next-token logits ``(N, V)``."""
        logits, state = self.net.decode(tokens, state)
        return logits[:, -1], state

    def caption_tokens(
        self, images: torch.Tensor, config: GenerationConfig | None = None, with_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption normalised ``images (B, C, H, W)``: the new ids ``(B, n)``, EOS-padded after each EOS,
        and with ``with_attention`` each generated token's spatial attention ``(B, n, L)`` (None for a
        net without spatial attention)."""
        with self.evaluating():
            images = images.to(self.device)
            state = self.net.start(self.net.encode(images))
            prompt = torch.full((images.size(0), 1), self.bos_id, dtype=torch.long, device=self.device)
            tokens = generate(self.decode_step, prompt, config or self.generation, self.eos_id, state)
            if not with_attention:
                return tokens, None
            # the attention of each generated token: the teacher-forced pass over the caption itself
            _, attention = self.net(images, torch.cat([prompt, tokens[:, :-1]], dim=1))  # (B, n, L)
        return tokens, attention

    def caption_log_probs(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The log-probability ``(B,)`` of each caption ``tokens (B, n)`` (up to its EOS) given its image."""
        with self.evaluating():
            images, tokens = images.to(self.device), tokens.to(self.device)
            prompt = torch.full((tokens.size(0), 1), self.bos_id, dtype=torch.long, device=self.device)
            logits, _ = self.net(images, torch.cat([prompt, tokens[:, :-1]], dim=1))  # (B, n, V)
            log_probs = logits.float().log_softmax(-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, n)
            return (log_probs * _up_to_eos(tokens, self.eos_id)).sum(dim=1)

    def words(self, tokens: torch.Tensor) -> list[list[str]]:
        """Each caption's tokens as words (one per token, as the tokenizer decodes it), up to its EOS."""
        (tokenizer,) = self.require_tokenizers("words")
        return [[tokenizer.decode([i]).strip() for i in row] for row in self._caption_ids(tokens)]

    def detokenize(self, tokens: torch.Tensor) -> list[str]:
        """Caption ids ``(B, n)`` -> texts, each cut at its first EOS."""
        (tokenizer,) = self.require_tokenizers("detokenize")
        return [tokenizer.decode(row) for row in self._caption_ids(tokens)]

    def _caption_ids(self, tokens: torch.Tensor) -> list[list[int]]:
        keep = _up_to_eos(tokens, self.eos_id, include_eos=False)
        return [
            [i for i, k in zip(row, mask, strict=True) if k]
            for row, mask in zip(tokens.tolist(), keep.tolist(), strict=True)
        ]

    @staticmethod
    def sentence_bleu(hypotheses: list[str], references: list[list[str]]) -> list[float]:
        """BLEU-4 of each caption alone against its references (as the metrics normalise them)."""
        hyps, refs = bleu_texts(hypotheses, references)
        return [float(bleu_score([h], [r], n_gram=4)) for h, r in zip(hyps, refs, strict=True)]

    def caption(self, images: torch.Tensor | list, config: GenerationConfig | None = None) -> list[str]:
        """Captions of ``images``: a normalised float tensor ``(B, C, H, W)`` as the DataModule gives, or a
        list of image files / PIL images (resized and normalised as the training data was)."""
        tensor = images if isinstance(images, torch.Tensor) else self.load_images(images)
        tokens, _ = self.caption_tokens(tensor, config)
        return self.detokenize(tokens)

    def load_images(self, images: list) -> torch.Tensor:
        """Image files or PIL images -> the normalised batch ``(B, C, H, W)`` the net was trained on."""
        if self.image_stats is None:
            raise InputError(
                "Captioner.caption: this model does not know its images' size and normalisation. Fix: load "
                "a checkpoint written by `lightning fit`, or pass a normalised image tensor."
            )
        size, channels = self.image_stats["image_size"], self.image_stats["channels"]
        arrays = []
        for image in images:
            if isinstance(image, Image.Image):
                arrays.append(to_array(image, size, channels))  # (H, W, C) uint8
                continue
            if not Path(image).is_file():
                raise InputError(f"Captioner.caption: no image file '{image}'. Fix: give existing files.")
            arrays.append(decode_image(str(image), size, channels))  # as the training data was read
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, C, H, W) uint8
        mean, std = (torch.tensor(self.image_stats[k]) for k in ("mean", "std"))
        return px.from_uint8(batch, "normalized", mean, std)

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """``{"file", "caption", "score"}`` per image, ``score`` the caption's log-probability (nats)."""
        images = batch["images"]
        tokens, _ = self.caption_tokens(images)
        scores = self.caption_log_probs(images, tokens).tolist()
        files = batch.get("files") or [str(i) for i in range(images.size(0))]
        return [
            {"file": str(f), "caption": c, "score": round(s, 4)}
            for f, c, s in zip(files, self.detokenize(tokens), scores, strict=True)
        ]

    # ------------------------------------------------------------------------------- encoder
    def setup(self, stage: str) -> None:
        super().setup(stage)
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.image_stats is None and hasattr(datamodule, "mean"):
            self.image_stats = {
                "image_size": int(datamodule.image_size), "channels": int(datamodule.in_channels),
                "mean": [float(v) for v in datamodule.mean], "std": [float(v) for v in datamodule.std],
            }  # fmt: skip
        if self.hparams.sync_batchnorm and self.data_parallel():
            sync_batch_norm(self.net)
        resuming = self.trainer.ckpt_path is not None
        if stage == "fit" and self.hparams.encoder_checkpoint and not resuming:
            self.load_encoder(self.hparams.encoder_checkpoint)

    def load_encoder(self, path: str) -> None:
        """Start the encoder from the net of an :class:`ImageClassifier` checkpoint."""
        field = "model.init_args.encoder_checkpoint"
        path = newest_match(
            path, field, "train a classifier first (lightning fit --config recipes/resnet_se.yaml)"
        )
        classifier = load_classifier(path, field=field).net
        encoder = self.net.encoder
        mine = encoder.state_dict()
        # the classifier's head is no part of the encoder (a captioner's encoder may have dropped it)
        theirs = {k: v for k, v in classifier.state_dict().items() if k in mine or not k.startswith("head.")}
        problems = _mismatch(mine, theirs)
        if problems:
            raise InputError(
                f"{field}: the net of '{path}' ({type(classifier).__name__}) does not fit this captioner's "
                f"encoder ({problems}). Fix: give the captioner's encoder the classifier's architecture (the "
                "net's encoder_* settings, e.g. encoder_depths and encoder_se_reduction, or its encoder)."
            )
        encoder.load_state_dict(theirs)

    def optimizations(self) -> dict[str, Optimization]:
        """One optimizer; the encoder's parameters at ``encoder_lr_scale`` x its learning rate."""
        scale = self.hparams.encoder_lr_scale
        lr_scales = {"net.encoder": scale} if scale not in (0, 1) else {}
        return {"net": Optimization(self.optimizer, self, *self.schedule_settings(), lr_scales=lr_scales)}

    def configure_optimizers(self) -> dict:
        # an encoder frozen for its first epochs is in the optimizer from the start (a resumed run's too)
        self.net.encoder.requires_grad_(self.hparams.encoder_lr_scale > 0)
        return super().configure_optimizers()

    def _encoder_frozen(self) -> bool:
        return self.hparams.encoder_lr_scale == 0 or self.current_epoch < self.hparams.freeze_encoder_epochs

    def on_train_epoch_start(self) -> None:
        self.net.encoder.requires_grad_(not self._encoder_frozen())

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self._encoder_frozen():
            self.net.encoder.eval()  # a frozen encoder keeps its batch-norm statistics

    # ----------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.image_stats is not None:
            checkpoint[IMAGE_STATS] = dict(self.image_stats)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if IMAGE_STATS in checkpoint:
            self.image_stats = dict(checkpoint[IMAGE_STATS])


def _mismatch(mine: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> str:
    """How two state dicts differ, in a few words ("" when one loads into the other)."""
    missing = [k for k in mine if k not in theirs]
    extra = [k for k in theirs if k not in mine]
    shapes = [k for k in mine if k in theirs and mine[k].shape != theirs[k].shape]
    parts = [
        f"{len(keys)} {what}, e.g. {keys[0]}"
        for keys, what in (
            (missing, "weights it lacks"),
            (extra, "weights it has not"),
            (shapes, "of other shapes"),
        )
        if keys
    ]
    return "; ".join(parts)


def _up_to_eos(tokens: torch.Tensor, eos_id: int, include_eos: bool = True) -> torch.Tensor:
    """``(B, n)`` mask of each row's tokens before its first EOS (and the EOS itself with ``include_eos``)."""
    is_eos = tokens == eos_id
    before = (is_eos.long().cumsum(dim=1) - is_eos.long()) == 0  # (B, n): no EOS earlier in the row
    return before if include_eos else before & ~is_eos


def _names_scene(caption: str, objects: list[dict]) -> bool:
    """Whether ``caption`` names exactly the scene's objects: the same (colour, shape) multiset."""
    return Counter(parse_objects(caption)) == Counter((o["color"], o["shape"]) for o in objects)


def grounding(
    words: list[list[str]], attention: torch.Tensor, objects: list[list[dict]], grid: tuple[int, int]
) -> tuple[list[float], list[float]]:
    """Attention mass inside the named object, at every step whose word is a shape in the scene.

    Each cell of the ``h x w`` feature grid covers a block of the image; its share inside a box is the
    fraction of its area the box covers. At a step that emits a shape word, the attention mass inside
    the boxes of the scene's objects of that shape (of the colour the word before names, when one
    does) is ``sum_i alpha_i * share_i``; chance is the share of the image those boxes cover.

    Args:
        words: each caption's words, one per generated token (EOS excluded).
        attention: ``(B, n, L)`` each generated token's spatial attention, ``L = h * w``.
        objects: each image's objects, ``{"shape", "color", "bbox": [left, top, right, bottom]}`` with
            the box in fractions of the image side.
        grid: the feature grid ``(h, w)``.

    Returns:
        ``(inside, chance)``: one value per grounded step, over all captions.
    """
    h, w = grid
    inside, chance = [], []
    for b, (caption, scene) in enumerate(zip(words, objects, strict=True)):
        for t, word in enumerate(caption):
            boxes = [o["bbox"] for o in scene if o["shape"] == word]
            colour = caption[t - 1] if t > 0 else None
            coloured = [o["bbox"] for o in scene if o["shape"] == word and o["color"] == colour]
            boxes = coloured or boxes
            if not boxes or t >= attention.size(1):
                continue
            share = _box_share(boxes, h, w).to(attention.device)  # (L,)
            inside.append(float((attention[b, t].float() * share).sum()))
            chance.append(float(share.mean()))
    return inside, chance


def _box_share(boxes: list[list[float]], h: int, w: int) -> torch.Tensor:
    """``(h * w,)`` the fraction of each grid cell that the union of ``boxes`` covers (boxes as fractions of
    the image side), measured on a fine raster of the image."""
    fine = 8  # sub-cells per cell side
    ys = (torch.arange(h * fine) + 0.5) / (h * fine)  # (h * fine,) centres, as fractions of the side
    xs = (torch.arange(w * fine) + 0.5) / (w * fine)
    covered = torch.zeros(h * fine, w * fine, dtype=torch.bool)
    for left, top, right, bottom in boxes:
        covered |= ((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :]
    return covered.float().view(h, fine, w, fine).mean(dim=(1, 3)).flatten()  # (h * w,)


def _caption_metrics() -> nn.ModuleDict:
    metrics: dict[str, nn.Module] = {f"bleu{n}": BLEUScore(n_gram=n) for n in range(1, 5)}
    metrics["cider"] = CIDErD()
    for name in ("scene_acc", "grounding", "grounding_chance"):
        metrics[name] = MeanMetric()
    return nn.ModuleDict(metrics)


def _check_settings(
    net: nn.Module,
    label_smoothing: float,
    attention_penalty: float,
    decode_val_batches: int | None,
    encoder_lr_scale: float,
    freeze_encoder_epochs: int,
) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"model.label_smoothing: expected a value in [0, 1), got {label_smoothing}.")
    if not attention_penalty >= 0:
        raise InputError(f"model.attention_penalty: expected a value >= 0, got {attention_penalty}.")
    if decode_val_batches is not None and (
        isinstance(decode_val_batches, bool)
        or not isinstance(decode_val_batches, int)
        or decode_val_batches < 0
    ):
        raise InputError(
            f"model.decode_val_batches: expected None (all) or an integer >= 0, got {decode_val_batches!r}."
        )
    if not encoder_lr_scale >= 0:
        raise InputError(
            f"model.encoder_lr_scale: expected a value >= 0 (0 freezes the encoder), got {encoder_lr_scale}."
        )
    if (
        isinstance(freeze_encoder_epochs, bool)
        or not isinstance(freeze_encoder_epochs, int)
        or freeze_encoder_epochs < 0
    ):
        raise InputError(
            f"model.freeze_encoder_epochs: expected an integer >= 0, got {freeze_encoder_epochs!r}."
        )
    missing = [name for name in ("encode", "start", "decode", "encoder", "grid") if not hasattr(net, name)]
    if missing:
        raise InputError(
            f"model.net: {type(net).__name__} is not a captioning net (it lacks {', '.join(missing)}). "
            "Fix: use lightning_seq.nets.ShowAttendTell or TransformerCaptioner, or a net with that contract."
        )

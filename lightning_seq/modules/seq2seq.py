"""Seq2Seq: translation with teacher forcing, scored by decoding with beam search.

Any net with the seq2seq contract plugs in (:mod:`lightning_seq.nets.seq2seq`):
``net(src, tgt_in, src_mask) -> logits``, ``net.encode(src, src_mask) -> state`` and
``net.decode(tokens, state) -> (logits, state)``. Batches are ``{"src": (B, S), "tgt": (B, T)}``
with ``tgt = [BOS, y_1 ... y_n, EOS]``, both right-padded with ``pad_id``. Training minimises the
label-smoothed cross entropy of ``tgt[:, 1:]`` given ``tgt[:, :-1]``::

    L = -(1 - eps) log p(y_i | y_<i, x) - eps / V * sum_v log p(v | y_<i, x)   (padding not scored)

Validation and test also translate the first ``decode_val_batches`` batches with the shared
decoding library (beam search by default), detokenize hypotheses and references with the target
tokenizer and log corpus BLEU-4 (SacreBLEU, 13a tokenization unless ``bleu_tokenize`` says
otherwise), chrF (character n-grams up to 6, beta 2, SacreBLEU's default) and the share of
sentences translated exactly right.
"""

import warnings
from dataclasses import asdict
from typing import Literal

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.text import CHRFScore, SacreBLEUScore

from lightning_seq.data.tokenizers import encode_texts
from lightning_seq.decoding import GenerationConfig, State, generate
from lightning_seq.errors import InputError
from lightning_seq.modules._base import NetModule
from lightning_seq.modules._optim import OptimizerFactory, Schedule, SharedFactory, check_schedule
from lightning_seq.utils import plain_hparams

DEFAULT_GENERATION = {"strategy": "beam", "num_beams": 4, "max_new_tokens": 128}
BleuTokenize = Literal["13a", "char", "intl", "zh", "none"]


class Seq2Seq(NetModule):
    """Trains a sequence-to-sequence net and translates with it.

    Args:
        net: the network, e.g. :class:`~lightning_seq.nets.TransformerSeq2Seq` or
            :class:`~lightning_seq.nets.RNNSeq2Seq`.
        optimizer: optimizer class (and its arguments) from the recipe; default AdamW.
        warmup_steps: linear warmup of the learning rate from 0 over this many steps.
        lr_schedule: ``cosine`` decay to ``min_lr_ratio`` x peak after warmup, or ``constant``.
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
        label_smoothing: probability mass ``eps`` spread uniformly over the target vocabulary.
        pad_id: padding id of both sides; never scored, never attended to (linked from the data).
        bos_id: the token that starts every target, the decoder's first input (linked from the data).
        eos_id: the token that ends every target; decoding stops there (linked from the data).
        generation: decoding settings of validation, :meth:`translate` and ``lightning predict``; by
            default beam search with 4 beams and ``max_new_tokens`` sized to the longest training
            target (when the DataModule tells it; 128 otherwise).
        decode_val_batches: translate this many batches per validation / test run for BLEU, chrF
            and exact match (beam search is costly); 0 turns those metrics off.
        bleu_tokenize: SacreBLEU's tokenization of hypotheses and references: ``13a`` (words and
            punctuation, the WMT standard), or ``char`` for targets written without spaces (digits,
            Chinese): their sentences are single words, whose BLEU-4 over words is always 0.
        compile: compile the net with ``torch.compile``.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory = torch.optim.AdamW,
        warmup_steps: int = 100,
        lr_schedule: Schedule = "cosine",
        min_lr_ratio: float = 0.1,
        label_smoothing: float = 0.1,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        generation: GenerationConfig | None = None,
        decode_val_batches: int = 4,
        bleu_tokenize: BleuTokenize = "13a",
        compile: bool = False,
    ):
        super().__init__()
        with warnings.catch_warnings():  # a net built in Python is dropped below, not pickled
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        plain_hparams(self)
        check_schedule(warmup_steps, min_lr_ratio, lr_schedule)
        _check_settings(label_smoothing, decode_val_batches, net)
        self.net = net
        self.optimizer = SharedFactory(optimizer)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        if isinstance(generation, dict):  # from a checkpoint of a model built in Python
            generation = GenerationConfig(**generation)
        self.sized_generation = generation is None  # max_new_tokens follows the data
        self.generation = generation or GenerationConfig(**DEFAULT_GENERATION)
        self.src_tokenizer: Tokenizer | None = None
        self.tgt_tokenizer: Tokenizer | None = None
        self.metrics = nn.ModuleDict(
            {stage: _translation_metrics(bleu_tokenize) for stage in ("val", "test")}
        )
        if compile:
            self.net.compile()

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits ``(B, T, V)`` of ``tgt_in (B, T)`` given ``src (B, S)``."""
        return self.net(src, tgt_in, src != self.pad_id)

    # -------------------------------------------------------------------------------- training
    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed label-smoothed cross entropy and the number of scored tokens.

        Args:
            logits: ``(B, T, V)`` scores.
            targets: ``(B, T)`` next tokens; ``pad_id`` targets are not scored.
        """
        loss_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self.pad_id, reduction="sum",
            label_smoothing=self.hparams.label_smoothing,
        )  # fmt: skip
        return loss_sum, (targets != self.pad_id).sum()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        src, tgt = batch["src"], batch["tgt"]  # (B, S), (B, T + 1)
        targets = tgt[:, 1:]  # (B, T)
        logits = self(src, tgt[:, :-1])  # (B, T, V)
        loss_sum, num_tokens = self.compute_loss(logits, targets)
        loss = loss_sum / num_tokens.clamp(min=1)
        train = stage == "train"
        self.log(
            f"{stage}/loss", loss, prog_bar=True, on_step=train, on_epoch=not train, sync_dist=not train,
            batch_size=src.size(0),
        )  # fmt: skip
        if train:
            return {"loss": loss}
        nll_sum = F.cross_entropy(  # unsmoothed, for the Perplexity callback
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self.pad_id, reduction="sum"
        )
        return {"loss": loss, "nll_sum": nll_sum, "num_tokens": num_tokens}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> dict:
        out = self._step(batch, stage)
        if batch_idx < self.hparams.decode_val_batches:
            self.score_translations(batch, stage)
        return out

    def score_translations(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        """Translate ``batch["src"]``; log BLEU-4, chrF and exact match against ``batch["tgt"]``."""
        hypotheses = self.detokenize(self.translate_tokens(batch["src"]))
        references = self.detokenize(batch["tgt"][:, 1:])
        metrics, size = self.metrics[stage], len(references)
        metrics["bleu4"].update(hypotheses, [[r] for r in references])
        metrics["chrf"].update(hypotheses, [[r] for r in references])
        exact = [float(h == r) for h, r in zip(hypotheses, references, strict=True)]
        metrics["exact_match"].update(torch.tensor(exact, device=self.device))
        for name, metric in metrics.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "bleu4", on_epoch=True, batch_size=size)

    # ------------------------------------------------------------------------------ generation
    def decode_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The decoding library's step: consume target ``tokens (N, t)``; next-token logits ``(N, V)``."""
        logits, state = self.net.decode(tokens, state)
        return logits[:, -1], state

    @torch.no_grad()
    def translate_tokens(self, src: torch.Tensor, config: GenerationConfig | None = None) -> torch.Tensor:
        """Translate source ids ``(B, S)``; the new target ids ``(B, n)``, EOS-padded after each EOS."""
        was_training = self.training
        self.eval()
        try:
            src = src.to(self.device)
            state = self.net.encode(src, src != self.pad_id)
            prompt = torch.full((src.size(0), 1), self.bos_id, dtype=torch.long, device=self.device)  # (B, 1)
            return generate(self.decode_step, prompt, config or self.generation, self.eos_id, state)
        finally:
            self.train(was_training)

    def detokenize(self, ids: torch.Tensor) -> list[str]:
        """Target ids ``(B, n)`` -> texts, each cut at its first EOS, special tokens dropped. Without a
        target tokenizer the ids are written as numbers separated by spaces."""
        texts = []
        for row in ids.tolist():
            row = row[: row.index(self.eos_id)] if self.eos_id in row else row
            row = [i for i in row if i not in (self.pad_id, self.bos_id)]
            tokenizer = self.tgt_tokenizer
            texts.append(tokenizer.decode(row) if tokenizer is not None else " ".join(map(str, row)))
        return texts

    def encode_sources(self, texts: list[str]) -> torch.Tensor:
        """Source texts -> right-padded ids ``(B, S)``, encoded as the DataModule encodes sources."""
        if self.src_tokenizer is None:
            raise InputError(
                "Seq2Seq.translate needs the source and target tokenizers: train with a DataModule that has "
                "them, load a checkpoint written by such a run, or set model.src_tokenizer and "
                "model.tgt_tokenizer."
            )
        rows = encode_texts(self.src_tokenizer, texts)  # no special tokens; an empty text is [<|unk|>]
        longest = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_id] * (longest - len(r)) for r in rows], dtype=torch.long)

    def translate(self, texts: str | list[str], config: GenerationConfig | None = None) -> list[str]:
        """Translate source sentences; one target text per input."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return []
        return self.detokenize(self.translate_tokens(self.encode_sources(texts), config))

    def generate(self, prompts: list[str], config: GenerationConfig | None = None) -> list[str]:
        """``"source -> translation"`` per prompt, for :class:`~lightning_seq.callbacks.SampleGeneration`."""
        return [f"{p} -> {t}" for p, t in zip(prompts, self.translate(prompts, config), strict=True)]

    def predict_step(self, batch: list[str] | dict, batch_idx: int) -> list[str]:
        """Translations of a batch: source texts, or ``{"src": (B, S) ids, ...}`` as
        :class:`~lightning_seq.data.ParallelTextDataModule` gives them to ``lightning predict``."""
        if isinstance(batch, dict):
            return self.detokenize(self.translate_tokens(batch["src"]))
        return self.translate(batch)

    # ----------------------------------------------------------------------------- checkpoints
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if self.src_tokenizer is None and getattr(datamodule, "src_tokenizer", None) is not None:
            self.src_tokenizer = datamodule.src_tokenizer
            self.tgt_tokenizer = datamodule.tgt_tokenizer
        longest = _longest_target(datamodule)
        if self.sized_generation and longest:
            size = longest + max(8, longest // 4)  # some room beyond the longest training target
            self.generation = GenerationConfig(**{**DEFAULT_GENERATION, "max_new_tokens": size})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["generation"] = asdict(self.generation)
        if self.src_tokenizer is not None and self.tgt_tokenizer is not None:
            checkpoint["src_tokenizer"] = self.src_tokenizer.to_str()
            checkpoint["tgt_tokenizer"] = self.tgt_tokenizer.to_str()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "src_tokenizer" in checkpoint:
            self.src_tokenizer = Tokenizer.from_str(checkpoint["src_tokenizer"])
            self.tgt_tokenizer = Tokenizer.from_str(checkpoint["tgt_tokenizer"])
        if self.sized_generation and "generation" in checkpoint:
            self.generation = GenerationConfig(**checkpoint["generation"])


def _translation_metrics(bleu_tokenize: str) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "bleu4": SacreBLEUScore(n_gram=4, tokenize=bleu_tokenize),
            "chrf": CHRFScore(n_char_order=6, n_word_order=0, beta=2.0),
            "exact_match": MeanMetric(),
        }
    )


def _longest_target(datamodule: object) -> int | None:
    """Tokens to generate for the longest training target (EOS included, BOS not), when the DataModule
    tells: its ``max_target_length``, or the lengths of its train split's ``tgt`` sequences."""
    longest = getattr(datamodule, "max_target_length", None)
    if isinstance(longest, int):
        return longest
    dataset = getattr(datamodule, "dataset", None)
    if not callable(dataset):
        return None
    lengths = getattr(getattr(dataset("train"), "tgt", None), "lengths", None)
    return int(lengths().max()) - 1 if callable(lengths) else None


def _check_settings(label_smoothing: float, decode_val_batches: int, net: nn.Module) -> None:
    if not 0.0 <= label_smoothing < 1.0:
        raise InputError(f"model.label_smoothing: expected a value in [0, 1), got {label_smoothing}.")
    if (
        isinstance(decode_val_batches, bool)
        or not isinstance(decode_val_batches, int)
        or decode_val_batches < 0
    ):
        raise InputError(f"model.decode_val_batches: expected an integer >= 0, got {decode_val_batches!r}.")
    if not all(callable(getattr(net, name, None)) for name in ("encode", "decode")):
        raise InputError(
            f"model.net: {type(net).__name__} is not a seq2seq net (it needs encode() and decode()). "
            "Fix: use lightning_seq.nets.TransformerSeq2Seq or RNNSeq2Seq, or a net with that contract."
        )

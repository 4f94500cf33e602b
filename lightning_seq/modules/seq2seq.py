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

from typing import ClassVar, Literal

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
from lightning_seq.modules._generation import GenerationFromData
from lightning_seq.modules._tokenizers import TokenizersInCheckpoints

DEFAULT_GENERATION = {"strategy": "beam", "num_beams": 4, "max_new_tokens": 128}
BleuTokenize = Literal["13a", "char", "intl", "zh", "none"]


class Seq2Seq(TokenizersInCheckpoints, GenerationFromData, NetModule):
    """Trains a sequence-to-sequence net and translates with it.

    Args:
        net: the network, e.g. :class:`~lightning_seq.nets.TransformerSeq2Seq` or
            :class:`~lightning_seq.nets.RNNSeq2Seq`.
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
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    TOKENIZERS = ("src_tokenizer", "tgt_tokenizer")
    DEFAULT_GENERATION: ClassVar[dict] = DEFAULT_GENERATION
    src_tokenizer: Tokenizer | None = None
    tgt_tokenizer: Tokenizer | None = None

    def __init__(
        self,
        net: nn.Module,
        label_smoothing: float = 0.1,
        pad_id: int = 0,
        bos_id: int = 2,
        eos_id: int = 3,
        generation: GenerationConfig | None = None,
        decode_val_batches: int = 4,
        bleu_tokenize: BleuTokenize = "13a",
        **kwargs,
    ):
        _check_settings(label_smoothing, decode_val_batches, net)
        super().__init__(net, **kwargs)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.init_generation(generation)
        self.metrics = nn.ModuleDict(
            {stage: _translation_metrics(bleu_tokenize) for stage in ("val", "test")}
        )

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
        self.log_loss(stage, loss, src.size(0))
        if stage == "train":
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

    def translate_tokens(self, src: torch.Tensor, config: GenerationConfig | None = None) -> torch.Tensor:
        """Translate source ids ``(B, S)``; the new target ids ``(B, n)``, EOS-padded after each EOS."""
        with self.evaluating():
            src = src.to(self.device)
            state = self.net.encode(src, src != self.pad_id)
            prompt = torch.full((src.size(0), 1), self.bos_id, dtype=torch.long, device=self.device)  # (B, 1)
            return generate(self.decode_step, prompt, config or self.generation, self.eos_id, state)

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
        src_tokenizer, _ = self.require_tokenizers("translate")
        rows = encode_texts(src_tokenizer, texts)  # no special tokens; an empty text is [<|unk|>]
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


def _translation_metrics(bleu_tokenize: str) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "bleu4": SacreBLEUScore(n_gram=4, tokenize=bleu_tokenize),
            "chrf": CHRFScore(n_char_order=6, n_word_order=0, beta=2.0),
            "exact_match": MeanMetric(),
        }
    )


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

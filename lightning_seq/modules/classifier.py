"""SequenceClassifier and SequenceTagger: one label per text, or one label per token.

Any net with the contract of :mod:`lightning_seq.nets.sequence_classifier` plugs in:
``net(tokens (B, T), key_mask (B, T)) -> logits``, ``(B, K)`` for a classifier and ``(B, T, K)`` for
a tagger. Batches are ``{"tokens": (B, T), "labels": (B,) or (B, T)}``, padded with ``pad_id``;
tagger labels are -100 where a token has none (padding, continuation sub-tokens), and those
positions are left out of the loss and the metrics. The loss is the cross-entropy with label
smoothing ``eps`` over ``K`` classes::

    L = -sum_k q_k log p_k,   q = (1 - eps) onehot(y) + eps / K

Fine-tuning: ``init_from`` names a :class:`~lightning_seq.modules.LanguageModel` checkpoint; at the
start of ``fit`` every encoder tensor of it whose name and shape match this net's (``embedding``,
``positions``, ``transformer`` or ``rnn``) is copied in, and the whole net (head included) trains.
The data must use the language model's tokenizer (``data.tokenizer.kind=<the .ckpt path>``).
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from tokenizers import Tokenizer
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lightning_seq.checkpointing import newest_match, read_checkpoint
from lightning_seq.data.labelled import encode_words
from lightning_seq.data.tokenizers import encode_texts
from lightning_seq.errors import InputError
from lightning_seq.modules._base import NetModule
from lightning_seq.modules._tokenizers import TokenizersInCheckpoints

IGNORE = -100  # label of tokens without one (padding, continuation sub-tokens)
ENCODER = ("embedding", "positions", "transformer", "rnn")  # the parts a language model shares


class _LabelledTextModule(TokenizersInCheckpoints, NetModule):
    """What the classifier and the tagger share; a subclass says how logits meet labels.

    Args:
        net: the network, ``net(tokens, key_mask) -> logits``, e.g.
            :class:`~lightning_seq.nets.TransformerClassifier`.
        label_smoothing: mass ``eps`` spread uniformly over the classes in the cross-entropy targets.
        classes: label names, in label order (linked from the DataModule; saved in checkpoints).
        pad_id: padding token id (linked from the DataModule); ``tokens != pad_id`` is the key mask.
        init_from: a language model checkpoint whose encoder weights start the training.
        min_lr_ratio: final learning rate of the cosine schedule, as a fraction of the peak.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        label_smoothing: float = 0.0,
        classes: list[str] | None = None,
        pad_id: int = 0,
        init_from: str | None = None,
        min_lr_ratio: float = 0.01,
        **kwargs,
    ):
        if not 0.0 <= label_smoothing < 1.0:
            raise InputError(f"model.label_smoothing: expected a value in [0, 1), got {label_smoothing}.")
        super().__init__(net, min_lr_ratio=min_lr_ratio, **kwargs)
        self.classes = list(classes) if classes is not None else None
        num_classes = len(self.classes) if self.classes is not None else getattr(net, "num_classes", None)
        if not num_classes:
            raise InputError(
                "model.classes: the number of classes is unknown. Fix: train with "
                "lightning_seq.data.LabelledTextDataModule (it links the label names), or pass "
                "model.classes or a net with a num_classes attribute."
            )
        self.num_classes = int(num_classes)
        net_classes = getattr(net, "num_classes", None)
        if net_classes is not None and net_classes != self.num_classes:
            raise InputError(
                f"model.classes: {self.num_classes} class names, but the net predicts {net_classes} classes. "
                "Fix: leave both to the DataModule (the CLI links data.classes and data.num_classes)."
            )
        self.pad_id = pad_id
        # one set of metrics per stage, so that validation inside an epoch never mixes with test
        self.metrics = nn.ModuleDict({stage: self._metrics() for stage in ("val", "test")})
        if compile:
            self.net.compile()

    def _metrics(self) -> nn.ModuleDict:
        k = self.num_classes
        return nn.ModuleDict(
            {
                "acc": MulticlassAccuracy(k, average="micro", ignore_index=IGNORE),
                "f1": MulticlassF1Score(k, average="macro", ignore_index=IGNORE),
            }
        )

    @property
    def label_names(self) -> list[str]:
        return self.classes or [str(i) for i in range(self.num_classes)]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of ``tokens (B, T)``, padded with ``pad_id``."""
        return self.net(tokens, tokens != self.pad_id)

    # -------------------------------------------------------------------------------- training
    def flat(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(N, K)`` and labels ``(N,)``: one row per scored item."""
        raise NotImplementedError

    def compute_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross entropy with label smoothing, averaged over the labelled items (labels -100 skipped)."""
        logits, labels = self.flat(logits, labels)
        return F.cross_entropy(
            logits.float(), labels, ignore_index=IGNORE, label_smoothing=self.hparams.label_smoothing
        )

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        tokens, labels = batch["tokens"], batch["labels"]  # (B, T), (B,) or (B, T)
        size = tokens.size(0)
        logits = self(tokens)  # (B, K) or (B, T, K)
        loss = self.compute_loss(logits, labels)
        self.log_loss(stage, loss, size)
        if stage == "train":
            return {"loss": loss}
        flat_logits, flat_labels = self.flat(logits.detach(), labels)
        for name, metric in self.metrics[stage].items():
            metric(flat_logits, flat_labels)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc", on_epoch=True, batch_size=size)
        return {"loss": loss}

    # -------------------------------------------------------------------------------- inference
    def _pad(self, rows: list[list[int]], value: int | None = None) -> torch.Tensor:
        """``(N, T)`` ids, cut to the net's ``max_len`` (if any), right-padded with ``value`` (default
        ``pad_id``), on this module's device."""
        value = self.pad_id if value is None else value
        limit = getattr(self.net, "max_len", None)
        rows = [list(r[:limit]) for r in rows]
        width = max((len(r) for r in rows), default=0) or 1
        padded = [r + [value] * (width - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long, device=self.device)

    def _logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with self.evaluating():
            return self(tokens).float()

    # ----------------------------------------------------------------------------- fine-tuning
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.hparams.init_from:
            self.init_encoder(self.hparams.init_from)

    def init_encoder(self, path: str | Path) -> int:
        """Copy the encoder weights of a language model checkpoint into the net; the number copied.

        Every tensor under ``net.embedding``, ``net.positions``, ``net.transformer`` or ``net.rnn``
        whose name and shape match one of this net's is copied. Raises :class:`InputError` when the
        file is missing or unreadable, when its vocabulary differs from this model's, or when no
        tensor matches.
        """
        state, tokenizer = _read_language_model(path)
        self._check_vocabulary(path, state, tokenizer)
        own = self.net.state_dict()
        loaded = {
            name: tensor
            for name, tensor in state.items()
            if name.split(".")[0] in ENCODER and name in own and own[name].shape == tensor.shape
        }
        if not loaded:
            raise InputError(
                f"model.init_from: no encoder weight of '{path}' fits this net (the checkpoint's net has "
                f"{', '.join(sorted({n.split('.')[0] for n in state}))}; this net needs matching names and "
                f"shapes under {', '.join(n for n in ENCODER if any(k.startswith(n + '.') for k in own))}). "
                "Fix: use a "
                "net of the language model's family and sizes (TransformerLM -> TransformerClassifier / "
                "Tagger, RNNLM -> RNNClassifier / Tagger, same dim, depth, heads, positions and max_len)."
            )
        self.net.load_state_dict(loaded, strict=False)
        encoder = [n for n in own if n.split(".")[0] in ENCODER]
        rank_zero_info(
            f"model.init_from: loaded {len(loaded)} of {len(encoder)} encoder tensors of this net from "
            f"'{path}'; the other {len(own) - len(loaded)} tensors (head included) start from scratch."
        )
        return len(loaded)

    def _check_vocabulary(self, path: str | Path, state: dict, tokenizer: Tokenizer | None) -> None:
        fix = (
            "Fix: tokenize this data with the language model's tokenizer: "
            f"--data.init_args.tokenizer.kind={path}"
        )
        embedding = getattr(self.net, "embedding", None)
        theirs = state.get("embedding.weight")
        if (
            isinstance(embedding, nn.Embedding)
            and theirs is not None
            and len(theirs) != embedding.num_embeddings
        ):
            raise InputError(
                f"model.init_from: '{path}' was trained with a vocabulary of {len(theirs)} tokens, but this "
                f"data's tokenizer has {embedding.num_embeddings}. {fix}"
            )
        mine = self.tokenizer
        if tokenizer is not None and mine is not None and tokenizer.get_vocab() != mine.get_vocab():
            raise InputError(
                f"model.init_from: '{path}' was trained with another tokenizer than this data's (both "
                f"have {tokenizer.get_vocab_size()} tokens, but not the same ones). {fix}"
            )


def _read_language_model(path: str | Path) -> tuple[dict[str, torch.Tensor], Tokenizer | None]:
    """The net's weights (names without ``net.``) and the tokenizer of a language model checkpoint.

    ``path`` may be a glob (its newest match is read); errors name ``model.init_from``.
    """
    fix = (
        "train a language model first (lightning fit --config recipes/<language model recipe>.yaml) and "
        "pass its .ckpt file."
    )
    path = newest_match(path, "model.init_from", fix)
    checkpoint = read_checkpoint(path, need=("state_dict",), field="model.init_from")
    weights = checkpoint["state_dict"]
    if not isinstance(weights, dict) or not weights:
        raise InputError(
            f"model.init_from: '{path}' holds no weights in its state_dict. Fix: pass the .ckpt that "
            "`lightning fit` wrote for a language model."
        )
    state = {name.removeprefix("net."): t for name, t in weights.items() if name.startswith("net.")}
    text = checkpoint.get("tokenizer")
    try:
        tokenizer = Tokenizer.from_str(text) if text is not None else None
    except Exception as err:
        raise InputError(
            f"model.init_from: the tokenizer in '{path}' is malformed ({err}). Fix: pass the .ckpt that "
            "`lightning fit` wrote for a language model."
        ) from None
    return state, tokenizer


class SequenceClassifier(_LabelledTextModule):
    """Trains a text classifier; logs ``stage/loss``, ``stage/acc`` and ``stage/f1`` (macro).

    ``classify(texts)`` names the class of each text (after ``load_from_checkpoint`` too: the
    tokenizer is saved in checkpoints). Arguments: see :class:`_LabelledTextModule`.
    """

    def flat(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits, labels  # (B, K), (B,)

    def classify(self, texts: str | list[str]) -> list[str]:
        """The predicted class name of each text (tokenized as the DataModule does)."""
        (tokenizer,) = self.require_tokenizers("classify")
        texts = [texts] if isinstance(texts, str) else list(texts)
        names = self.label_names
        tokens = self._pad(encode_texts(tokenizer, texts))  # (N, T)
        return [names[i] for i in self._logits(tokens).argmax(-1).tolist()]

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per text: the predicted class name and its probability (the text and the true class when the
        batch has them)."""
        probs = self._logits(batch["tokens"]).softmax(-1)  # (B, K)
        top = probs.max(-1)
        names, texts, labels = self.label_names, batch.get("text"), batch.get("labels")
        rows = []
        for i, (p, k) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
            row = {"text": texts[i]} if texts is not None else {}
            row.update(pred=names[k], prob=round(p, 4))
            if labels is not None:
                row["label"] = names[int(labels[i])]
            rows.append(row)
        return rows


class SequenceTagger(_LabelledTextModule):
    """Trains a tagger (one label per token); logs ``stage/loss``, ``stage/acc`` and ``stage/f1``.

    Accuracy and macro F1 count the labelled tokens only. ``tag(words)`` names the label of each
    word (after ``load_from_checkpoint`` too). Arguments: see :class:`_LabelledTextModule`.
    """

    def flat(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits.flatten(0, 1), labels.flatten()  # (B T, K), (B T,)

    def tag(self, sentences: str | list[str] | list[list[str]]) -> list[str] | list[list[str]]:
        """The predicted label of each word.

        Args:
            sentences: one sentence as a string (split on whitespace), or a list of sentences, each a
                string (split on whitespace) or a list of words.

        Returns:
            One label per word: a list for a single string, else a list of lists.
        """
        (tokenizer,) = self.require_tokenizers("tag")
        single = isinstance(sentences, str)
        words = [s.split() if isinstance(s, str) else list(s) for s in ([sentences] if single else sentences)]
        ids, first = encode_words(tokenizer, [(w, [1] * len(w)) for w in words])
        word_mask = self._pad(first, value=0) == 1  # (N, T), True at each word's first sub-token
        tags = self._word_tags(self._pad(ids), word_mask)
        return tags[0] if single else tags

    def _word_tags(self, tokens: torch.Tensor, word_mask: torch.Tensor) -> list[list[str]]:
        """The label names at the ``word_mask`` positions of each row."""
        predicted = self._logits(tokens).argmax(-1)  # (B, T)
        names = self.label_names
        return [
            [names[i] for i in row[mask].tolist()] for row, mask in zip(predicted, word_mask, strict=True)
        ]

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per sequence: its words and their predicted labels (and the true ones when the batch has them).

        The words' positions are ``batch["word_mask"]`` (True at each word's first sub-token), else
        the labelled positions (``labels != -100``), else every real token.
        """
        tokens = batch["tokens"]  # (B, T)
        labels = batch.get("labels")
        word_mask = batch.get("word_mask")
        if word_mask is None:
            word_mask = labels != IGNORE if labels is not None else tokens != self.pad_id
        names, rows = self.label_names, []
        for i, tags in enumerate(self._word_tags(tokens, word_mask.bool())):
            row = {"words": list(batch["words"][i])} if "words" in batch else {}
            row["tags"] = tags
            if labels is not None:
                row["labels"] = [names[j] for j in labels[i][word_mask[i].bool()].tolist()]
            rows.append(row)
        return rows

"""Tokenizers built with the Hugging Face ``tokenizers`` library.

Kinds:

* ``char``: one token per Unicode character seen in the train split; exact round trip.
* ``bpe``: byte-level BPE with ``vocab_size`` tokens; exact round trip for any text.
* ``word``: one token per word or punctuation mark, a word carrying its leading space (``▁the``),
  newlines as tokens; words seen fewer than ``min_frequency`` times map to ``<|unk|>``.
* ``whitespace``: for corpora that come pre-tokenized (Penn Treebank, WikiText): the tokens are
  exactly the whitespace-separated words, and each line ends with one ``end_of_line`` token (by
  default ``<|eos|>``, the end-of-text token, which is what the literature's ``<eos>`` is). The
  corpus's own unknown word (``unk_token``, ``<unk>``) is the tokenizer's, so perplexities are per
  word as published. Decoding joins the words with spaces.
* a path to an existing ``tokenizer.json``: used as it is, with our special tokens added when missing.
* a path to a lightning_seq checkpoint (``.ckpt``): the tokenizer it was trained with, e.g. to
  fine-tune a classifier from a language model with the language model's vocabulary.

Every tokenizer has the special tokens ``<|pad|>``, ``<|unk|>``, ``<|bos|>`` and ``<|eos|>``.
``<|eos|>`` ends every document in the token stream, so it also serves as the start-of-text
context for generation.
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lightning_seq.checkpointing import read_checkpoint
from lightning_seq.errors import InputError

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS]
KINDS = ("char", "bpe", "word", "whitespace")
FILE_SUFFIXES = (".json", ".ckpt")
# The BPE trainer of the tokenizers library (0.23) reserves about 71 bytes per token of vocab_size up
# front, and an allocation that fails aborts the whole process ("memory allocation of N bytes failed",
# SIGABRT, no Python exception): measured from 5e8 tokens on a 23 GB machine (2e8 passed), at 1e12 on
# any. 2**20 is well above any vocabulary in use (GPT-2 50257, Llama 3 128256, Gemma 262144) and
# reserves only 75 MB; the other kinds take the same range.
MIN_VOCAB_SIZE, MAX_VOCAB_SIZE = len(SPECIAL_TOKENS) + 1, 1 << 20
MAX_MIN_FREQUENCY = 2**64 - 1  # the native trainers' integer; a larger one raises OverflowError there


@dataclass
class TokenizerConfig:
    """How to build the tokenizer.

    Args:
        kind: ``char``, ``bpe``, ``word``, ``whitespace``, or the path of an existing ``tokenizer.json``
            or of a checkpoint (``.ckpt``) that holds a tokenizer.
        vocab_size: largest vocabulary for ``bpe``, ``word`` and ``whitespace`` (special tokens
            included), the most frequent words kept; None for no limit.
        min_frequency: fewest occurrences in the train split for a ``bpe`` merge or a word; rarer
            words are unknown.
        unk_token: ``whitespace``: the corpus's unknown word, used as the tokenizer's.
        end_of_line: ``whitespace``: the token each line ends with; ``<|eos|>`` (the default, the
            end-of-text token that also ends each document: a document that ends with a newline
            gets one, not two), another word (an ordinary token), or None for none (newlines are
            then spaces).
    """

    kind: str = "char"
    vocab_size: int | None = 8192
    min_frequency: int = 2
    unk_token: str = "<unk>"
    end_of_line: str | None = EOS

    def __post_init__(self) -> None:
        if self.kind not in KINDS and not self.kind.endswith(FILE_SUFFIXES):
            raise InputError(
                f"data.tokenizer.kind: unknown tokenizer kind '{self.kind}'. "
                f"Fix: use one of {', '.join(KINDS)}, or the path of a tokenizer.json or .ckpt file."
            )
        if (
            self.vocab_size is not None and not MIN_VOCAB_SIZE <= self.vocab_size <= MAX_VOCAB_SIZE
        ):  # before the native trainer sees it
            raise InputError(
                f"data.init_args.tokenizer.vocab_size: {self.vocab_size} is outside the allowed range "
                f"{MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE} (special tokens included). Fix: choose a size in it, "
                "e.g. 8192 (the default) or 50257 (GPT-2's)."
            )
        if not 1 <= self.min_frequency <= MAX_MIN_FREQUENCY:
            raise InputError(
                f"data.tokenizer.min_frequency: expected 1..{MAX_MIN_FREQUENCY}, got {self.min_frequency}."
            )
        for field in ("unk_token", "end_of_line"):
            value = getattr(self, field)
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise InputError(
                    f"data.tokenizer.{field}: {value!r} is not a word (empty or with whitespace). "
                    "Fix: give one whitespace-free token, e.g. '<unk>' or '<eos>'."
                )

    @property
    def is_file(self) -> bool:
        return self.kind not in KINDS

    def identity(self) -> dict:
        """What determines the trained tokenizer, for cache keys (a file's contents included)."""
        ident = asdict(self)
        if self.is_file:
            ident["file"] = load_tokenizer_file(self.kind).to_str()
        return ident


def build_tokenizer(config: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """Train a tokenizer of the configured kind on ``texts`` (the train split), or load a file."""
    if config.is_file:
        tokenizer = load_tokenizer_file(config.kind)
        tokenizer.add_special_tokens(SPECIAL_TOKENS)
        return tokenizer
    if config.kind == "whitespace":
        return _whitespace(config, texts)
    tokenizer, trainer = {"char": _char, "bpe": _bpe, "word": _word}[config.kind](config)
    tokenizer.train_from_iterator(_batches(texts), trainer)
    return tokenizer


def _vocab_limit(config: TokenizerConfig) -> int:
    return MAX_VOCAB_SIZE if config.vocab_size is None else config.vocab_size


def _char(config: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return tokenizer, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)


def _bpe(config: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_vocab_limit(config),
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return tokenizer, trainer


def _word(config: TokenizerConfig) -> tuple[Tokenizer, trainers.Trainer]:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\n+"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.WordLevelTrainer(
        vocab_size=_vocab_limit(config),
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    return tokenizer, trainer


def _whitespace(config: TokenizerConfig, texts: Iterable[str]) -> Tokenizer:
    """The words of ``str.split()`` and an end-of-line token per line, counted here rather than by the
    library's trainer, which would count the end-of-line token again as a word and leave holes in
    the ids. Ids: the special tokens, then the words by falling count (ties alphabetical)."""
    specials = [PAD, config.unk_token, BOS, EOS]
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text.split())
        if config.end_of_line is not None:
            counts[config.end_of_line] += text.count("\n")
    words = sorted(
        (w for w, n in counts.items() if n >= config.min_frequency and w not in specials),
        key=lambda w: (-counts[w], w),
    )
    vocab = {token: i for i, token in enumerate([*specials, *words][: _vocab_limit(config)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=config.unk_token))
    tokenizer.add_special_tokens([PAD, BOS, EOS])  # never produced by splitting a text
    if config.end_of_line is not None:
        tokenizer.normalizer = normalizers.Replace(Regex(r"\r?\n"), f" {config.end_of_line} ")
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def _batches(texts: Iterable[str], size: int = 256) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_tokenizer_file(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` or a checkpoint's tokenizer, with a clear message when it is missing or
    malformed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"data.tokenizer.kind: tokenizer file '{path}' does not exist. Fix: check the path.")
    if path.suffix == ".ckpt":
        return load_checkpoint_tokenizer(path)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:
        raise InputError(
            f"data.tokenizer.kind: '{path}' is not a valid tokenizer.json ({err}). "
            "Fix: give a file saved by tokenizers' Tokenizer.save()."
        ) from None


def load_checkpoint_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer stored in a lightning_seq checkpoint (``checkpoint["tokenizer"]``, JSON text)."""
    checkpoint = read_checkpoint(path, field="data.tokenizer.kind")
    text = checkpoint.get("tokenizer")
    if not isinstance(text, str):
        raise InputError(
            f"data.tokenizer.kind: checkpoint '{path}' holds no tokenizer (it was not trained on text "
            "with a lightning_seq text DataModule). Fix: give the checkpoint of a text model, or a "
            "tokenizer.json."
        )
    try:
        return Tokenizer.from_str(text)
    except Exception as err:
        raise InputError(f"data.tokenizer.kind: the tokenizer in '{path}' is malformed ({err}).") from None


def save_tokenizer(tokenizer: Tokenizer, path: Path) -> None:
    """Write ``tokenizer`` as ``Tokenizer.save`` does (pretty JSON), through Python's file API, so that a
    full disk raises ``OSError`` (the cache names it) rather than the library's plain ``Exception``."""
    path.write_text(tokenizer.to_str(pretty=True), encoding="utf-8")


def special_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """Ids of the special tokens: ``{"pad": 0, "unk": 1, "bos": 2, "eos": 3}`` (None when absent).

    The unknown token is the model's own when it names one (``<unk>`` for the ``whitespace`` kind)."""
    names = ("pad", "unk", "bos", "eos")
    ids = {name: tokenizer.token_to_id(token) for name, token in zip(names, SPECIAL_TOKENS, strict=True)}
    own_unk = tokenizer.token_to_id(getattr(tokenizer.model, "unk_token", None) or UNK)
    if own_unk is not None:
        ids["unk"] = own_unk
    return ids


class SpecialTokenIds:
    """The special ids a DataModule gives the model (linked by the CLI), from its cached
    ``meta["special_ids"]`` (see :func:`special_ids`)."""

    @property
    def pad_id(self) -> int:
        return self.meta["special_ids"]["pad"]

    @property
    def bos_id(self) -> int:
        """The token that starts every target or caption row, a decoder's first input."""
        return self.meta["special_ids"]["bos"]

    @property
    def eos_id(self) -> int:
        """The token that ends every target or caption."""
        return self.meta["special_ids"]["eos"]


def encode_texts(tokenizer: Tokenizer, texts: list[str], chunk: int = 4096) -> list[list[int]]:
    """Token ids of each text, without special tokens; a text that gives none becomes ``[<|unk|>]``."""
    unk = special_ids(tokenizer)["unk"]
    out: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        encodings = tokenizer.encode_batch(texts[start : start + chunk], add_special_tokens=False)
        out.extend(e.ids or [unk] for e in encodings)
    return out

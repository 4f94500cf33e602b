"""Embedded task datasets with known right answers, generated offline and deterministically.

* ``embedded:numbers``: English number words and their digits, ``"three hundred forty-two thousand
  one hundred five"`` <-> ``"342105"``, for translation (:func:`number_pairs`).
* ``embedded:code-vs-prose``: single lines of Python standard-library source code (label ``code``)
  and of the prose in Python's documentation, ``pydoc_data.topics`` (label ``prose``), for text
  classification (:func:`code_vs_prose`).
* ``embedded:python-tokens``: logical lines of standard-library source split by Python's own
  ``tokenize`` module, each token tagged with its kind (:data:`TOKEN_TAGS`), for tagging
  (:func:`python_token_tags`).

Splits are disjoint by content: by number, by line text, by token sequence.
"""

import hashlib
import keyword
import random
import sysconfig
import tokenize
from pathlib import Path

from lightning_seq.data.embedded import pydoc_fingerprint, pydoc_topics
from lightning_seq.errors import InputError

NUMBERS_SOURCE = "embedded:numbers"
CODE_PROSE_SOURCE = "embedded:code-vs-prose"
TOKENS_SOURCE = "embedded:python-tokens"

Splits = dict[str, list]

# ---------------------------------------------------------------------------------- number words
ONES = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MAX_NUMBERS = 500_000


def number_words(n: int) -> str:
    """American English words for ``0 <= n < 1_000_000``: 342105 -> ``three hundred forty-two thousand
    one hundred five`` (no "and"; hyphens in 21-99)."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words: {n} is outside [0, 999999]")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    parts = [f"{_below_thousand(thousands)} thousand"] if thousands else []
    return " ".join([*parts, _below_thousand(rest)] if rest else parts)


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    parts = [f"{ONES[hundreds]} hundred"] if hundreds else []
    if rest >= 20:
        parts.append(TENS[rest // 10] + (f"-{ONES[rest % 10]}" if rest % 10 else ""))
    elif rest:
        parts.append(ONES[rest])
    return " ".join(parts)


SMALL_NUMBERS = 100  # 0..99 always go to train


def sample_numbers(sizes: dict[str, int], seed: int = 0) -> dict[str, list[int]]:
    """Distinct numbers in ``[0, 999999]`` for each split, disjoint across splits.

    Each draw picks a digit count 1-6 uniformly, then a number of that many digits, so small
    and large numbers both appear (nearly every number below 1000 is drawn for 20k numbers). Test
    is drawn first, then val, then train, so test and val do not change with the train size. The
    numbers below 100 always go to train: every other number is spelt with their words (0 alone is
    "zero"), and a model cannot translate words it never saw.
    """
    total = sum(sizes.values())
    if min(sizes.values()) < 1 or sizes["train"] < SMALL_NUMBERS or total > MAX_NUMBERS:
        raise InputError(
            f"data.train_size/val_size/test_size: expected positive sizes of at most {MAX_NUMBERS} numbers "
            f"in all and a train_size of at least {SMALL_NUMBERS}, got {sizes}. Fix: choose other sizes."
        )
    rng = random.Random(seed)
    seen = set(range(SMALL_NUMBERS))
    out: dict[str, list[int]] = {}
    for split in ("test", "val", "train"):
        drawn = list(range(SMALL_NUMBERS)) if split == "train" else []
        while len(drawn) < sizes[split]:
            digits = rng.randint(1, 6)
            n = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
            if n not in seen:
                seen.add(n)
                drawn.append(n)
        out[split] = drawn
    return out


def number_pairs(
    train_size: int = 20_000,
    val_size: int = 1000,
    test_size: int = 1000,
    seed: int = 0,
    reverse: bool = False,
) -> Splits:
    """``{split: [(words, digits), ...]}``, or ``(digits, words)`` pairs when ``reverse``.

    See :func:`sample_numbers` for the choice of numbers.
    """
    numbers = sample_numbers({"train": train_size, "val": val_size, "test": test_size}, seed)
    pairs = {s: [(number_words(n), str(n)) for n in ns] for s, ns in numbers.items()}
    if reverse:
        pairs = {s: [(b, a) for a, b in ps] for s, ps in pairs.items()}
    return {s: pairs[s] for s in ("train", "val", "test")}


# ---------------------------------------------------------------------- Python source and prose
SOURCE_FILES = 50  # stdlib files that lines are drawn from (more when they hold too few)
TOKEN_TAGS = ("COMMENT", "KEYWORD", "NAME", "NUMBER", "OP", "STRING")
_TAG_OF_TYPE = {
    tokenize.NUMBER: "NUMBER",
    tokenize.STRING: "STRING",
    tokenize.OP: "OP",
    tokenize.COMMENT: "COMMENT",
    # Python 3.12+ splits f-strings into parts (and tokenizes the expressions inside)
    **{getattr(tokenize, t): "STRING" for t in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
       if hasattr(tokenize, t)},
}  # fmt: skip
_LAYOUT = {tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER}


def stdlib_files() -> list[Path]:
    """The top-level ``.py`` files of the standard library, sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise InputError(
            f"data.source: the embedded Python datasets read the standard library's source in '{root}', "
            "which holds no .py files in this Python. Fix: give a data.source."
        )
    return files


def stdlib_fingerprint() -> str:
    """A short hash of the standard library's file names, sizes and Python's version (no contents)."""
    digest = hashlib.sha256()
    for path in stdlib_files():
        digest.update(f"{path.name}:{path.stat().st_size};".encode())
    return digest.hexdigest()[:16]


def _file_tokens(path: Path) -> list[tokenize.TokenInfo]:
    try:
        with tokenize.open(path) as f:
            return list(tokenize.generate_tokens(f.readline))
    except (SyntaxError, tokenize.TokenError, UnicodeDecodeError, OSError):
        return []  # a file this Python cannot tokenize is left out


def _code_lines(tokens: list[tokenize.TokenInfo], lines: list[str]) -> list[str]:
    """Physical lines that are code only: no comment, not inside a multi-line string, not a lone
    string (docstring), with a name or number; stripped, 20-120 characters."""
    bad: set[int] = set()
    kinds: dict[int, set[int]] = {}
    for tok in tokens:
        if tok.start[0] != tok.end[0]:
            bad.update(range(tok.start[0], tok.end[0] + 1))
        if tok.type == tokenize.COMMENT:
            bad.add(tok.start[0])
        kinds.setdefault(tok.start[0], set()).add(tok.type)
    out = []
    for row, types in kinds.items():
        text = lines[row - 1].strip() if row <= len(lines) else ""
        if row in bad or not 20 <= len(text) <= 120 or not types & {tokenize.NAME, tokenize.NUMBER}:
            continue
        out.append(text)
    return out


def _tagged_lines(tokens: list[tokenize.TokenInfo]) -> list[tuple[list[str], list[str]]]:
    """Logical lines as ``(tokens, tags)``, layout tokens left out; lines holding a token that spans
    lines or has no tag (error tokens) are skipped; a comment on its own line is a line."""
    out, words, tags, ok = [], [], [], True
    for tok in tokens:
        if tok.type == tokenize.NEWLINE or (tok.type == tokenize.NL and tags and set(tags) == {"COMMENT"}):
            if ok and words:
                out.append((words, tags))
            words, tags, ok = [], [], True
        elif tok.type not in _LAYOUT and tok.string:  # empty strings: DEDENT, empty f-string parts
            tag = _token_tag(tok)
            ok = ok and tag is not None and "\n" not in tok.string
            words.append(tok.string)
            tags.append(tag)
    return out


def _token_tag(tok: tokenize.TokenInfo) -> str | None:
    if tok.type == tokenize.NAME:
        return "KEYWORD" if keyword.iskeyword(tok.string) else "NAME"
    return _TAG_OF_TYPE.get(tok.type)


def _from_stdlib(extract, count: int, seed: int) -> list:
    """Up to ``count`` distinct items that ``extract(tokens, lines)`` gives, from the stdlib files in a
    seeded order, an equal share from each of about SOURCE_FILES files (tokenizing is the slow part)."""
    rng = random.Random(seed)
    files = stdlib_files()
    rng.shuffle(files)
    seen, out = set(), []
    per_file = max(20, -(-count // SOURCE_FILES))
    for path in files:
        tokens = _file_tokens(path)
        if not tokens:
            continue
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        items = [x for x in extract(tokens, lines) if _key(x) not in seen]
        items = list({_key(x): x for x in items}.values())
        for item in rng.sample(items, min(per_file, len(items))):
            seen.add(_key(item))
            out.append(item)
            if len(out) == count:
                return out
    return out


def _key(item) -> object:
    return item if isinstance(item, str) else tuple(item[0])


def prose_lines() -> list[str]:
    """Distinct prose lines of ``pydoc_data.topics``: not indented (code examples are), at least four
    words, 20-120 characters, at least 80% letters and spaces, no table rules (``|``) or columns (three
    spaces); in document order."""
    out: dict[str, None] = {}
    for doc in pydoc_topics():
        for line in doc.splitlines():
            text = line.strip()
            if not line or line[0].isspace() or not 20 <= len(text) <= 120 or len(text.split()) < 4:
                continue
            if "|" in text or "   " in text:
                continue
            if sum(c.isalpha() or c.isspace() for c in text) >= 0.8 * len(text):
                out[text] = None
    return list(out)


def _split_sizes(train_size: int, val_size: int, test_size: int) -> dict[str, int]:
    sizes = {"train": train_size, "val": val_size, "test": test_size}
    if min(sizes.values()) < 2:
        raise InputError(
            f"data.train_size/val_size/test_size: expected at least 2 examples per split, got {sizes}."
        )
    return sizes


def _check_enough(available: int, held_out: int, what: str) -> None:
    if available <= held_out:
        raise InputError(
            f"data.val_size/test_size: the embedded data has {available} {what}, too few for {held_out} "
            "validation and test examples and some training ones. Fix: lower data.val_size/test_size."
        )


def _deal(items: list, sizes: dict[str, int], rng: random.Random) -> Splits:
    """Shuffle and cut ``items`` into val, test, then train (val and test first: they keep their size)."""
    items = list(items)
    rng.shuffle(items)
    out, start = {}, 0
    for split in ("val", "test", "train"):
        out[split] = items[start : start + sizes[split]]
        start += sizes[split]
    return {s: out[s] for s in ("train", "val", "test")}


def code_vs_prose(train_size: int = 4000, val_size: int = 500, test_size: int = 500, seed: int = 0) -> Splits:
    """``{split: [(line, "code" | "prose"), ...]}``, balanced: half of each split is each label.

    When the docs hold fewer prose lines than asked for, train gets fewer examples (val and test
    keep their sizes).
    """
    sizes = _split_sizes(train_size, val_size, test_size)
    half = {s: n // 2 for s, n in sizes.items()}
    prose = prose_lines()
    _check_enough(len(prose), half["val"] + half["test"], "prose lines")  # before the slow part
    code = _from_stdlib(_code_lines, sum(half.values()), seed)
    per_class = min(len(prose), len(code), sum(half.values()))
    _check_enough(per_class, half["val"] + half["test"], "lines per label")
    half["train"] = per_class - half["val"] - half["test"]
    rng = random.Random(seed)
    by_label = {"code": _deal(code, half, rng), "prose": _deal(prose, half, rng)}
    out = {}
    for split in ("train", "val", "test"):
        rows = [(text, label) for label in ("code", "prose") for text in by_label[label][split]]
        rng.shuffle(rows)
        out[split] = rows
    return out


def python_token_tags(
    train_size: int = 4000, val_size: int = 500, test_size: int = 500, seed: int = 0, max_tokens: int = 40
) -> Splits:
    """``{split: [(tokens, tags), ...]}``: logical lines of stdlib code of 3 to ``max_tokens`` tokens,
    tagged with :data:`TOKEN_TAGS` (``KEYWORD`` for names that are keywords)."""
    sizes = _split_sizes(train_size, val_size, test_size)

    def extract(tokens, lines):
        return [x for x in _tagged_lines(tokens) if 3 <= len(x[0]) <= max_tokens]

    lines = _from_stdlib(extract, sum(sizes.values()), seed)
    _check_enough(len(lines), sizes["val"] + sizes["test"], "lines")
    return _deal(lines, sizes, random.Random(seed))


def embedded_fingerprint(source: str) -> str:
    """What the embedded dataset ``source`` is generated from (its code version and the Python files)."""
    if source == NUMBERS_SOURCE:
        return "numbers-v1"
    parts = ["python-v1", stdlib_fingerprint()]
    if source == CODE_PROSE_SOURCE:
        parts.append(pydoc_fingerprint())
    return ":".join(parts)

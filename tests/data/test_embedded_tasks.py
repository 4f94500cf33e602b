import io
import keyword
import re
import sysconfig
import tokenize
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from lightning_seq.data import embedded_tasks
from lightning_seq.data.embedded_tasks import (
    TOKEN_TAGS,
    code_vs_prose,
    number_pairs,
    number_words,
    python_token_tags,
    sample_numbers,
)
from lightning_seq.errors import InputError

SMALL = {"train_size": 600, "val_size": 100, "test_size": 100}

VALUES = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}  # fmt: skip


def parse_number_words(text: str) -> int:
    """An independent reader of English number words: accumulate, x100 on "hundred", x1000 on "thousand"."""
    total, group = 0, 0
    for word in re.split(r"[ -]", text):
        if word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = total + group * 1000, 0
        else:
            group += VALUES[word]
    return total + group


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (42, "forty-two"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (1000, "one thousand"),
        (20_019, "twenty thousand nineteen"),
        (342_105, "three hundred forty-two thousand one hundred five"),
        (999_999, "nine hundred ninety-nine thousand nine hundred ninety-nine"),
    ],
)
def test_number_words_known_examples(n, words):
    assert number_words(n) == words


def test_number_words_read_back_to_their_value():
    for n in [*range(2000), *range(0, 1_000_000, 997), 999_999]:
        words = number_words(n)
        assert parse_number_words(words) == n, words
        assert "  " not in words and words == words.strip()


def test_number_pairs_are_correct_distinct_and_disjoint_by_number():
    pairs = number_pairs(train_size=3000, val_size=300, test_size=300)
    assert {s: len(p) for s, p in pairs.items()} == {"train": 3000, "val": 300, "test": 300}
    numbers = {}
    for split, rows in pairs.items():
        for words, digits in rows:
            assert digits == str(int(digits))  # plain digits, no leading zeros or separators
            assert parse_number_words(words) == int(digits)
        numbers[split] = {int(d) for _, d in rows}
        assert len(numbers[split]) == len(rows)
    assert not numbers["train"] & numbers["val"] and not numbers["train"] & numbers["test"]
    assert not numbers["val"] & numbers["test"]
    assert 0 in numbers["train"]  # the only number spelt with "zero"
    for split in ("train", "test"):  # small and large numbers both appear
        assert sum(n < 1000 for n in numbers[split]) > 0.05 * len(numbers[split])
        assert sum(n >= 100_000 for n in numbers[split]) > 0.2 * len(numbers[split])


def test_number_sampling_is_deterministic_and_test_split_does_not_depend_on_train_size():
    a = sample_numbers({"train": 500, "val": 50, "test": 50}, seed=3)
    assert a == sample_numbers({"train": 500, "val": 50, "test": 50}, seed=3)
    bigger = sample_numbers({"train": 2000, "val": 50, "test": 50}, seed=3)
    assert bigger["test"] == a["test"] and bigger["val"] == a["val"]
    assert sample_numbers({"train": 500, "val": 50, "test": 50}, seed=4)["test"] != a["test"]
    reverse = number_pairs(100, 10, 10, reverse=True)
    assert all(parse_number_words(w) == int(d) for d, w in reverse["val"])
    with pytest.raises(InputError, match="at most 500000"):
        sample_numbers({"train": 600_000, "val": 1, "test": 1})
    assert set(range(100)) <= set(a["train"])  # the words of every number are seen in training
    assert min(a["val"] + a["test"]) >= 100
    with pytest.raises(InputError, match="train_size of at least 100"):
        sample_numbers({"train": 50, "val": 10, "test": 10})


def test_code_vs_prose_is_balanced_disjoint_and_labelled_right():
    data = code_vs_prose(**SMALL)
    assert data == code_vs_prose(**SMALL)  # deterministic
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source_lines = {
        line.strip() for p in stdlib.glob("*.py") for line in p.read_text("utf-8", "replace").splitlines()
    }
    prose_lines = {line.strip() for doc in topics.values() for line in doc.splitlines() if line[:1].strip()}
    seen = set()
    for split, size in (("train", 600), ("val", 100), ("test", 100)):
        rows = data[split]
        assert [label for _, label in rows].count("code") == size // 2 == len(rows) // 2
        texts = {text for text, _ in rows}
        assert len(texts) == len(rows) and not texts & seen  # distinct, disjoint across splits
        seen |= texts
        for text, label in rows:
            if label == "code":
                assert text in source_lines and not text.startswith(("#", '"""', "'''"))
            else:
                assert text in prose_lines and len(text.split()) >= 4


def test_python_token_tags_align_with_pythons_tokenizer():
    data = python_token_tags(**SMALL)
    assert {s: len(r) for s, r in data.items()} == {"train": 600, "val": 100, "test": 100}
    keys = [{tuple(words) for words, _ in data[s]} for s in ("train", "val", "test")]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    checked = 0
    for words, tags in data["train"]:
        assert len(words) == len(tags) and 3 <= len(words) <= 40 and set(tags) <= set(TOKEN_TAGS)
        for word, tag in zip(words, tags, strict=True):
            assert (tag == "KEYWORD") == (keyword.iskeyword(word) and word.isidentifier())
        if "COMMENT" in tags[:-1]:
            continue  # a comment inside brackets would swallow the rest of the joined line
        # Independent check: Python's tokenizer on the words joined by spaces gives them back.
        tokens = tokenize.generate_tokens(io.StringIO(" ".join(words) + "\n").readline)
        again = [t for t in tokens if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
        assert [t.string for t in again] == words
        assert [tokenize.tok_name[t.type] for t in again if t.type != tokenize.NAME] == [
            t for t in tags if t not in ("NAME", "KEYWORD")
        ]
        checked += 1
    assert checked > 500
    counts = {tag: sum(t.count(tag) for _, t in data["train"]) for tag in TOKEN_TAGS}
    assert all(counts[tag] > 0 for tag in ("KEYWORD", "NAME", "NUMBER", "OP", "STRING"))


def test_bad_embedded_sizes():
    with pytest.raises(InputError, match="too few for"):
        code_vs_prose(train_size=10, val_size=6000, test_size=10)
    with pytest.raises(InputError, match="at least 2 examples per split"):
        python_token_tags(train_size=10, val_size=1, test_size=10)


def test_fingerprints_are_stable():
    for source in (
        embedded_tasks.NUMBERS_SOURCE,
        embedded_tasks.CODE_PROSE_SOURCE,
        embedded_tasks.TOKENS_SOURCE,
    ):
        assert embedded_tasks.embedded_fingerprint(source) == embedded_tasks.embedded_fingerprint(source)

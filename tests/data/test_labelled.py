import csv
import json

import numpy as np
import pytest
import torch

from lightning_seq.data import LabelledTextDataModule, TokenizerConfig
from lightning_seq.data.embedded_tasks import TOKEN_TAGS
from lightning_seq.data.labelled import IGNORE
from lightning_seq.data.tokenizers import build_tokenizer
from lightning_seq.errors import InputError

SMALL = {"train_size": 400, "val_size": 100, "test_size": 100}
CHAR = TokenizerConfig("char")
REVIEWS = [
    (f"{w} film number {i}", label) for i in range(40) for w, label in (("great", "2"), ("awful", "10"))
]
SENTENCES = [
    (["John", "lives", "in", "Paris"], ["PER", "O", "O", "LOC"]),
    (["Mary", "met", "John"], ["PER", "O", "PER"]),
    (["Rome", "is", "old"], ["LOC", "O", "O"]),
] * 10


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def batches(dm, split):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return list(loader)


# -------------------------------------------------------------------------------- classification
def test_embedded_classification_is_balanced_code_vs_prose(tmp_path):
    dm = LabelledTextDataModule(**SMALL, batch_size=50, cache_dir=str(tmp_path))
    assert dm.classes == ["code", "prose"] and dm.num_classes == 2 and dm.cache_hit is False
    dm.setup("fit")
    for split, size in (("train", 400), ("val", 100), ("test", 100)):
        got = batches(dm, split)
        labels = torch.cat([b["labels"] for b in got])
        assert len(labels) == size and labels.bincount().tolist() == [size // 2] * 2
        for batch in got:
            tokens = batch["tokens"]
            assert tokens.dtype == batch["labels"].dtype == torch.long and batch["labels"].shape == (50,)
            assert ((tokens != dm.pad_id).sum(1) > 0).all()
    batch = got[0]
    texts = [dm.tokenizer.decode(row.tolist()) for row in batch["tokens"]]
    code = [t for t, y in zip(texts, batch["labels"].tolist(), strict=True) if y == 0]
    assert sum(("(" in t or "=" in t or ":" in t) for t in code) > 0.8 * len(code)
    again = LabelledTextDataModule(**SMALL, batch_size=50, cache_dir=str(tmp_path))
    assert again.vocab_size == dm.vocab_size and again.cache_hit is True


def test_csv_classification_with_numeric_labels_and_predict(tmp_path):
    write_csv(tmp_path / "d" / "train.csv", ["review", "stars"], REVIEWS[:60])
    write_csv(tmp_path / "d" / "dev.csv", ["review", "stars"], REVIEWS[60:70])
    write_csv(tmp_path / "d" / "test.csv", ["review", "stars"], REVIEWS[70:])
    dm = LabelledTextDataModule(
        source=str(tmp_path / "d"), text_column="review", label_column="stars", tokenizer=CHAR, batch_size=4
    )
    assert dm.classes == ["2", "10"]  # numbers in numeric order
    val = batches(dm, "val")
    got = [
        (dm.tokenizer.decode(row.tolist()), dm.classes[y])
        for b in val
        for row, y in zip(b["tokens"], b["labels"].tolist(), strict=True)
    ]
    assert got == REVIEWS[60:70]
    predict = next(iter(dm.predict_dataloader()))
    assert predict["text"] == [t for t, _ in REVIEWS[70:74]] and predict["tokens"].shape[0] == 4


def test_jsonl_classes_given_in_order_and_truncation(tmp_path):
    rows = [{"text": t * 5, "label": y} for t, y in REVIEWS]
    dm = LabelledTextDataModule(
        source=str(write(tmp_path / "all.jsonl", jsonl(rows))),
        classes=["10", "2", "5"],
        tokenizer=CHAR,
        max_length=30,
    )
    assert dm.classes == ["10", "2", "5"] and dm.num_classes == 3
    assert dm.meta["truncated"]["train"] == dm.meta["num_examples"]["train"] == 64  # 80 - 8 - 8 carved
    batch = batches(dm, "val")[0]
    assert batch["tokens"].shape[1] == 30
    assert [dm.classes[y] for y in batch["labels"].tolist()] == [
        "2" if dm.tokenizer.decode(r.tolist()).startswith("great") else "10" for r in batch["tokens"]
    ]


# --------------------------------------------------------------------------------------- tagging
def check_tag_batch(batch, dm, words_of):
    """Labels sit on the first sub-token of each word (-100 elsewhere) and name the word's tag."""
    tokens, labels = batch["tokens"], batch["labels"]
    assert labels.shape == tokens.shape and labels.dtype == torch.long
    assert (labels[tokens == dm.pad_id] == IGNORE).all()
    for row, row_labels in zip(tokens, labels, strict=True):
        text = dm.tokenizer.decode(row.tolist())
        words, tags = words_of[text]
        starts = np.cumsum([0] + [len(w) for w in words[:-1]])  # char tokenizer: word i starts there
        expected = torch.full_like(row_labels, IGNORE)
        expected[torch.as_tensor(starts)] = torch.as_tensor([dm.classes.index(t) for t in tags])
        assert torch.equal(row_labels, expected)


def test_jsonl_tagging_labels_the_first_sub_token(tmp_path):
    rows = [{"tokens": w, "tags": t} for w, t in SENTENCES]
    path = write(tmp_path / "train.jsonl", jsonl(rows))
    dm = LabelledTextDataModule(task="tag", source=str(path), tokenizer=CHAR, batch_size=4)
    assert dm.classes == ["LOC", "O", "PER"]
    words_of = {"".join(w): (w, t) for w, t in SENTENCES}
    for split in ("train", "val", "test"):
        for batch in batches(dm, split):
            check_tag_batch(batch, dm, words_of)


def test_word_tokenizer_gives_one_label_per_word(tmp_path):
    rows = [[" ".join(w), " ".join(t)] for w, t in SENTENCES]  # space-separated columns
    path = write_csv(tmp_path / "train.csv", ["tokens", "tags"], rows)
    dm = LabelledTextDataModule(
        task="tag", source=str(path), tokenizer=TokenizerConfig("word", min_frequency=1), batch_size=4
    )
    batch = batches(dm, "train")[0]
    words = (batch["tokens"] != dm.pad_id).sum(1)
    assert ((batch["labels"] != IGNORE).sum(1) == words).all()  # every word is one token


def test_embedded_tagging_of_python_tokens():
    dm = LabelledTextDataModule(task="tag", **SMALL, batch_size=20)
    assert dm.classes == list(TOKEN_TAGS)
    batch = batches(dm, "val")[0]
    labelled = batch["labels"] != IGNORE
    assert labelled.sum() > 3 * 20 and (labelled.sum(1) >= 3).all()
    firsts = batch["tokens"][labelled]  # the first sub-token of each Python token
    names = [dm.tokenizer.id_to_token(int(i)) for i in firsts]
    tags = [dm.classes[int(y)] for y in batch["labels"][labelled]]
    for name, tag in zip(names, tags, strict=True):
        if tag == "STRING":
            assert name in "'\"bBrRfFuU"
        elif tag == "NUMBER":
            assert name in "0123456789."
        elif tag in ("NAME", "KEYWORD"):
            assert name.isidentifier()
    predict = next(iter(dm.predict_dataloader()))
    assert predict["word_mask"].sum(1).tolist() == [len(w) for w in predict["words"]]
    assert predict["word_mask"].shape == predict["tokens"].shape


def test_hugging_face_class_label_names_through_datasets(tmp_path):
    import datasets

    features = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC"])),
        }
    )
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    data = {"tokens": [["John", "Smith", "runs"], ["Mary", "sleeps", "in", "Rome"]] * 10}
    data["ner_tags"] = [[1, 2, 0], [1, 0, 0, 3]] * 10
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(data, features=features).to_parquet(tmp_path / "data" / "train.parquet")
    dm = LabelledTextDataModule(
        task="tag", source=str(tmp_path / "data"), tags_column="ner_tags", tokenizer=CHAR, batch_size=2
    )
    assert dm.classes == names  # the declared order, not sorted
    words_of = {
        "".join(w): (w, [names[i] for i in t]) for w, t in zip(data["tokens"], data["ner_tags"], strict=True)
    }
    check_tag_batch(batches(dm, "train")[0], dm, words_of)


# --------------------------------------------------------------------------------- bad input
def test_label_not_in_the_train_labels_names_file_line_and_set(tmp_path):
    write(tmp_path / "d" / "train.jsonl", jsonl([{"text": t, "label": y} for t, y in REVIEWS[:40]]))
    write(tmp_path / "d" / "val.jsonl", jsonl([{"text": "ok", "label": "2"}, {"text": "meh", "label": "5"}]))
    write(tmp_path / "d" / "test.jsonl", jsonl([{"text": "ok", "label": "2"}]))
    dm = LabelledTextDataModule(source=str(tmp_path / "d"), tokenizer=CHAR)
    with pytest.raises(
        InputError,
        match=r"data\.classes: .*val\.jsonl:2: label '5' is not one of the labels of the train split: 2, 10",
    ):
        dm.prepare_data()


def test_label_outside_given_classes_in_train(tmp_path):
    rows = [{"tokens": w, "tags": t} for w, t in SENTENCES]
    path = write(tmp_path / "train.jsonl", jsonl(rows))
    dm = LabelledTextDataModule(task="tag", source=str(path), classes=["O", "PER"])
    with pytest.raises(InputError, match=r"train\.jsonl:3: label 'LOC' is not one of data\.classes: O, PER"):
        dm.prepare_data()


@pytest.mark.parametrize(
    ("name", "text", "kwargs", "message"),
    [
        ("train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label\n', {}, r"jsonl:2: not valid JSON"),
        (
            "train.jsonl",
            '{"body": "a", "label": "x"}\n',
            {},
            r"jsonl:1 has no column 'text' \(its columns are body",
        ),
        ("train.jsonl", '{"text": " ", "label": "x"}\n', {}, r"train\.jsonl:1: the text is empty"),
        ("train.jsonl", '{"text": "a", "label": null}\n', {}, r"train\.jsonl:1: the label is missing"),
        (
            "train.csv",
            "text,label\na,x\nb,y,z\n",
            {},
            r"train\.csv:3: the row has 3 fields but the header has 2",
        ),
        ("train.tsv", "a b\tX Y\nc\tX Y\n", {"task": "tag"}, r"train\.tsv:2: 1 words but 2 tags"),
        ("train.tsv", "a\tX\tY\n", {}, r"train\.tsv:1: expected 2 tab-separated fields \(text<TAB>label\)"),
        (
            "train.jsonl",
            '{"tokens": [], "tags": []}\n',
            {"task": "tag"},
            r"jsonl:1: expected a non-empty list",
        ),
        ("train.csv", "text,label\n", {}, r"train\.csv' is empty"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, name, text, kwargs, message):
    dm = LabelledTextDataModule(
        source=str(write(tmp_path / name, text)), cache_dir=str(tmp_path / "c"), **kwargs
    )
    with pytest.raises(InputError, match=message):
        dm.prepare_data()


def test_a_single_label_is_refused(tmp_path):
    path = write(tmp_path / "train.jsonl", jsonl([{"text": f"t{i}", "label": "same"} for i in range(30)]))
    with pytest.raises(InputError, match="needs at least 2"):
        LabelledTextDataModule(source=str(path)).prepare_data()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "parse"}, r"data\.task: unknown task 'parse'"),
        ({"max_length": 0}, r"data\.max_length: expected a positive integer"),
        ({"classes": ["a", "a"]}, r"data\.classes: the names must be distinct"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        LabelledTextDataModule(**kwargs)


def test_resuming_with_other_classes_is_refused(tmp_path):
    path = write(tmp_path / "train.jsonl", jsonl([{"text": t, "label": y} for t, y in REVIEWS]))
    dm = LabelledTextDataModule(source=str(path), tokenizer=CHAR)
    other = LabelledTextDataModule(source=str(path), tokenizer=CHAR, classes=["10", "2"])
    with pytest.raises(
        InputError, match=r"data\.classes: the checkpoint was trained with classes \['2', '10'\]"
    ):
        other.load_state_dict(dm.state_dict())
    dm.load_state_dict(dm.state_dict())
    assert LabelledTextDataModule(**dm.hparams).cache_key == dm.cache_key


# ---------------------------------------------------------------- a language model's tokenizer
def test_tokenizer_from_a_checkpoint(tmp_path):
    lm_tokenizer = build_tokenizer(TokenizerConfig("word", min_frequency=1), [t for t, _ in REVIEWS])
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "tokenizer": lm_tokenizer.to_str()}, tmp_path / "lm.ckpt"
    )
    path = write(tmp_path / "train.jsonl", jsonl([{"text": t, "label": y} for t, y in REVIEWS]))
    dm = LabelledTextDataModule(source=str(path), tokenizer=TokenizerConfig(str(tmp_path / "lm.ckpt")))
    assert (
        dm.tokenizer.get_vocab() == lm_tokenizer.get_vocab()
        and dm.vocab_size == lm_tokenizer.get_vocab_size()
    )
    torch.save({"state_dict": {}}, tmp_path / "image.ckpt")
    with pytest.raises(InputError, match=r"checkpoint '.*image\.ckpt' holds no tokenizer"):
        LabelledTextDataModule(
            source=str(path), tokenizer=TokenizerConfig(str(tmp_path / "image.ckpt"))
        ).prepare_data()
    write(tmp_path / "broken.ckpt", "not a checkpoint")
    with pytest.raises(InputError, match=r"'.*broken\.ckpt' is not a readable checkpoint"):
        TokenizerConfig(str(tmp_path / "broken.ckpt")).identity()

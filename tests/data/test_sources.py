import json

import pytest

from lightning_seq.data import sources
from lightning_seq.data.embedded import pydoc_topics
from lightning_seq.errors import InputError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_corpus_is_python_docs():
    docs = pydoc_topics()
    assert len(docs) > 50
    assert 400_000 < sum(map(len, docs)) < 2_000_000
    corpus = sources.read_corpus(None)
    assert set(corpus) == {"train", "val", "test"}
    assert "statement" in "".join(corpus["train"])


def test_carving_is_deterministic_and_loses_nothing():
    docs = [f"line {i} of doc {d}\n" * 50 for d in range(20) for i in range(3)]
    a = sources.carve_splits({"train": docs}, 0.1, 0.1)
    b = sources.carve_splits({"train": list(docs)}, 0.1, 0.1)
    assert a == b
    assert "".join(a["train"] + a["val"] + a["test"]) == "".join(docs)
    total = sum(map(len, docs))
    for split in ("val", "test"):
        assert 0.09 * total < sum(map(len, a[split])) < 0.12 * total
        assert "".join(a[split]).startswith("line")  # cut on a line boundary


def test_given_splits_are_kept_and_only_missing_ones_carved():
    corpus = sources.carve_splits({"train": ["a\n" * 100], "val": ["given"]}, 0.1, 0.2)
    assert corpus["val"] == ["given"]
    assert 36 <= sum(map(len, corpus["test"])) <= 40  # 20% of 200 chars, moved to a line start


def test_local_txt_folder_with_split_names(tmp_path):
    write(tmp_path / "data" / "wiki.train.txt", "train text\n" * 50)
    write(tmp_path / "data" / "wiki.valid.txt", "valid text\n")
    write(tmp_path / "data" / "sub" / "test.txt", "test text\n")
    corpus = sources.read_corpus(str(tmp_path / "data"))
    assert corpus == {"train": ["train text\n" * 50], "val": ["valid text\n"], "test": ["test text\n"]}


def test_glob_selects_files(tmp_path):
    for i in range(3):
        write(tmp_path / f"part{i}.txt", f"part {i}\n" * 100)
    write(tmp_path / "other.md", "not selected")
    corpus = sources.read_corpus(str(tmp_path / "part*.txt"))
    text = "".join(corpus["train"] + corpus["val"] + corpus["test"])
    assert "part 0" in text and "part 2" in text and "not selected" not in text


def test_jsonl_csv_parquet_through_datasets(tmp_path):
    import pandas as pd

    rows = [{"id": i, "body": f"row number {i}\n"} for i in range(200)]
    write(tmp_path / "j" / "train.jsonl", "\n".join(json.dumps(r) for r in rows))
    (tmp_path / "c").mkdir()
    (tmp_path / "p").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "c" / "data.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "p" / "data.parquet")
    for folder in ("j", "c", "p"):
        corpus = sources.read_corpus(str(tmp_path / folder), text_column="body")
        docs = corpus["train"] + corpus["val"] + corpus["test"]
        assert "".join(docs) == "".join(r["body"] for r in rows), folder


def test_hub_style_dataset_folder_uses_its_splits(tmp_path):
    # A folder laid out like a Hugging Face dataset repo: the same loader as for hub names.
    write(
        tmp_path / "ds" / "data" / "train.jsonl", "\n".join(json.dumps({"text": f"t{i}"}) for i in range(10))
    )
    write(tmp_path / "ds" / "data" / "validation.jsonl", json.dumps({"text": "v"}))
    write(tmp_path / "ds" / "data" / "test.jsonl", json.dumps({"text": "x"}))
    corpus = sources.read_hub_dataset(str(tmp_path / "ds"), None, "text")
    assert corpus["train"] == [f"t{i}" for i in range(10)]
    assert corpus["val"] == ["v"] and corpus["test"] == ["x"]


def test_hub_style_dataset_with_chosen_split_expressions(tmp_path):
    write(
        tmp_path / "ds" / "data" / "train.jsonl", "\n".join(json.dumps({"text": f"t{i}"}) for i in range(10))
    )
    write(tmp_path / "ds" / "data" / "validation.jsonl", json.dumps({"text": "v"}))
    splits = {"train": "train[:8]", "val": "train[8:]", "test": "validation"}
    corpus = sources.read_corpus(str(tmp_path / "ds" / "data" / "*.jsonl"), dataset_splits=None)
    assert "v" in corpus["val"]  # by file names, without a mapping
    chosen = sources.read_hub_dataset(str(tmp_path / "ds"), None, "text", splits)
    assert chosen == {"train": [f"t{i}" for i in range(8)], "val": ["t8", "t9"], "test": ["v"]}
    with pytest.raises(InputError, match=r"data\.dataset_splits: unknown split dev"):
        sources.read_hub_dataset(str(tmp_path / "ds"), None, "text", {"dev": "validation"})


def test_unreachable_hub_name_gets_a_clear_error():
    with pytest.raises(
        InputError, match="not a local file or folder, and loading it as a Hugging Face dataset"
    ):
        sources.read_corpus("no_such_dataset_xyz")


# ------------------------------------------------------------------------------- bad input
def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"data\.source: '.*missing\.txt' does not exist"):
        sources.read_corpus(str(tmp_path / "missing.txt"))


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(InputError, match="matches no file"):
        sources.read_corpus(str(tmp_path / "*.txt"))


def test_folder_without_text_files(tmp_path):
    write(tmp_path / "d" / "image.png", "x")
    with pytest.raises(InputError, match=r"holds no \.txt"):
        sources.read_corpus(str(tmp_path / "d"))


def test_empty_corpus(tmp_path):
    write(tmp_path / "empty.txt", "  \n\n")
    with pytest.raises(InputError, match="holds no text"):
        sources.read_corpus(str(tmp_path / "empty.txt"))


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    with pytest.raises(InputError, match=r"latin1\.txt' is not UTF-8 text \(byte 0xe9 at offset 3\).*iconv"):
        sources.read_corpus(str(path))


def test_missing_column_lists_the_columns(tmp_path):
    write(tmp_path / "d.jsonl", "\n".join(json.dumps({"content": "x" * 50, "id": i}) for i in range(50)))
    with pytest.raises(
        InputError, match=r"data\.text_column: .* has no column 'text'; its columns are content, id"
    ):
        sources.read_corpus(str(tmp_path / "d.jsonl"))


def test_non_text_column(tmp_path):
    write(tmp_path / "d.jsonl", "\n".join(json.dumps({"text": i}) for i in range(50)))
    with pytest.raises(InputError, match="holds int values, not text"):
        sources.read_corpus(str(tmp_path / "d.jsonl"))


def test_malformed_jsonl_names_the_file_the_line_and_the_reason(tmp_path):
    write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:2: not valid JSON \(Expecting value, column 10\)"):
        sources.read_corpus(str(tmp_path / "bad.jsonl"))


def test_malformed_csv_names_the_file_the_line_and_the_reason(tmp_path):
    write(tmp_path / "bad.csv", "text\nfine\nthree,fields,here\nfine again\n")
    with pytest.raises(InputError, match=r"bad\.csv:3: the row has 3 fields but the header has 1 \(text\)"):
        sources.read_corpus(str(tmp_path / "bad.csv"))


def test_an_unclosed_quote_names_the_line(tmp_path):
    write(tmp_path / "quote.csv", 'text\nfine\n"never closed\nmore words\n')
    with pytest.raises(InputError, match=r"quote\.csv:4: malformed CSV \(unexpected end of data\)"):
        sources.read_corpus(str(tmp_path / "quote.csv"))


def test_nul_bytes_are_not_text(tmp_path):
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"\0" * 10_000)  # valid UTF-8
    with pytest.raises(InputError, match=r"zeros\.txt' is not text: 100% of its characters are control"):
        sources.read_corpus(str(path))


def test_utf16_without_a_byte_order_mark_is_named(tmp_path):
    path = tmp_path / "windows.txt"
    path.write_bytes(("Some notes from Windows.\r\n" * 100).encode("utf-16-le"))
    with pytest.raises(InputError, match=r"50% of its characters.*looks like UTF-16.*iconv -f utf-16le"):
        sources.read_corpus(str(path))


def test_binary_rows_in_a_column_are_not_text(tmp_path):
    write(tmp_path / "d.jsonl", "".join(json.dumps({"text": "\x00\x01\x02" * 20}) + "\n" for _ in range(30)))
    with pytest.raises(InputError, match=r"column 'text' of '.*d\.jsonl' is not text"):
        sources.read_corpus(str(tmp_path / "d.jsonl"))


def test_a_few_control_characters_are_text(tmp_path):
    page = "a page of an old manual, with a form feed at its end\n" * 40 + "\x0c"
    coloured = "\x1b[1mbold\x1b[0m terminal output with colours, as logs often have\n" * 40
    write(tmp_path / "old.txt", page * 10 + coloured)
    corpus = sources.read_corpus(str(tmp_path / "old.txt"))
    assert "\x0c" in "".join(corpus["train"])


def test_rows_with_an_empty_text_cell_are_counted(tmp_path, lightning_log):
    rows = [{"text": f"row number {i}" if i % 4 else "", "id": i} for i in range(40)]
    rows[1]["text"] = None
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    corpus = sources.read_corpus(str(path), val_fraction=0.1, test_fraction=0.1)
    assert sum(len(docs) for docs in corpus.values()) >= 29
    assert (
        f"data.text_column: left out 11 of the 40 rows of '{path}' whose 'text' cell is empty"
        in lightning_log.text
    )

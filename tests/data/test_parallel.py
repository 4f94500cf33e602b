import json
import warnings

import numpy as np
import pytest
import torch

from lightning_seq.data import ParallelTextDataModule, TokenizerConfig, sources
from lightning_seq.data.embedded_tasks import number_words
from lightning_seq.errors import InputError

SMALL = {"train_size": 2000, "val_size": 200, "test_size": 200}
PAIRS = [
    (f"the {c} cat sat {i}", f"die {c} katze sass {i}") for i, c in enumerate(["red", "big", "old"] * 40)
]


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def tsv(pairs) -> str:
    return "".join(f"{s}\t{t}\n" for s, t in pairs)


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def check_batch(batch, dm):
    """The batch contract: src pad-padded without specials; tgt = [bos, y..., eos] pad-padded."""
    src, tgt = batch["src"], batch["tgt"]
    assert src.dtype == tgt.dtype == torch.long and src.ndim == tgt.ndim == 2 and len(src) == len(tgt)
    special = torch.tensor([dm.bos_id, dm.eos_id])
    for s, t in zip(src, tgt, strict=True):
        n_src, n_tgt = int((s != dm.pad_id).sum()), int((t != dm.pad_id).sum())
        assert (s[n_src:] == dm.pad_id).all() and (t[n_tgt:] == dm.pad_id).all()  # padding at the end
        assert n_src >= 1 and not torch.isin(s[:n_src], special).any()
        assert t[0] == dm.bos_id and t[n_tgt - 1] == dm.eos_id and n_tgt >= 3
        assert not torch.isin(t[1 : n_tgt - 1], special).any()
    assert max(src.shape[1], tgt.shape[1]) <= dm.max_length
    return [
        (dm.src_tokenizer.decode(s.tolist()), dm.tgt_tokenizer.decode(t.tolist()))
        for s, t in zip(src, tgt, strict=True)
    ]


def all_pairs(dm, split):
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    return [pair for batch in loader for pair in check_batch(batch, dm)]


# ----------------------------------------------------------------------------- embedded numbers
def test_embedded_numbers_batches_decode_to_right_answers(tmp_path):
    dm = ParallelTextDataModule(**SMALL, batch_size=32, cache_dir=str(tmp_path))
    assert dm.cache_hit is None and dm.tgt_vocab_size == 4 + 10  # specials + digits (char-level)
    assert dm.cache_hit is False
    assert (dm.pad_id, dm.bos_id, dm.eos_id) == (0, 2, 3)
    assert dm.tokenizer is dm.tgt_tokenizer and dm.src_tokenizer is not dm.tgt_tokenizer
    assert "▁hundred" in dm.src_tokenizer.get_vocab()  # word-level source
    dm.setup("fit")
    numbers = {}
    for split in ("train", "val", "test"):
        pairs = all_pairs(dm, split)
        for words, digits in pairs:
            assert words == number_words(int(digits))
        numbers[split] = {int(d) for _, d in pairs}
    assert len(numbers["train"]) == 2000 - 2000 % 32  # drop_last in training
    assert len(numbers["val"]) == len(numbers["test"]) == 200
    assert not numbers["train"] & numbers["val"] and not numbers["val"] & numbers["test"]
    assert not numbers["train"] & numbers["test"]

    again = ParallelTextDataModule(**SMALL, batch_size=32, cache_dir=str(tmp_path))
    files = {p.name: p.stat().st_mtime_ns for p in dm.cache_path.iterdir()}
    assert again.src_vocab_size == dm.src_vocab_size and again.cache_hit is True
    assert {p.name: p.stat().st_mtime_ns for p in again.cache_path.iterdir()} == files


def test_digits_to_words_and_training_order(tmp_path):
    dm = ParallelTextDataModule(direction="digits_to_words", **SMALL, batch_size=16, seed=1)
    assert dm.src_vocab_size == 14 and dm.tgt_vocab_size > 40
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))
    for digits, words in check_batch(first, dm):
        assert words == number_words(int(digits))
    assert torch.equal(next(iter(dm.train_dataloader()))["src"], first["src"])  # same seed, same order
    predict = next(iter(dm.predict_dataloader()))
    assert predict["text"] == ["7", "42", "1999", "342105", "999999"]
    assert [dm.src_tokenizer.decode(row.tolist()) for row in predict["src"]] == predict["text"]


# ----------------------------------------------------------------------------------- local files
def test_tsv_folder_with_split_files_and_joint_tokenizer(tmp_path):
    write(tmp_path / "d" / "train.tsv", tsv(PAIRS[:100]))
    write(tmp_path / "d" / "valid.tsv", tsv(PAIRS[100:110]))
    write(tmp_path / "d" / "test.tsv", tsv(PAIRS[110:]))
    dm = ParallelTextDataModule(source=str(tmp_path / "d"), tokenizer=TokenizerConfig("char"), batch_size=8)
    assert dm.joint and dm.src_tokenizer is dm.tgt_tokenizer and dm.src_vocab_size == dm.tgt_vocab_size
    vocab = set("".join(s + t for s, t in PAIRS[:100]))
    assert dm.src_vocab_size == len(vocab) + 4
    assert sorted(all_pairs(dm, "val")) == sorted(PAIRS[100:110])
    assert sorted(all_pairs(dm, "test")) == sorted(PAIRS[110:])
    assert dm.predict_inputs() == [s for s, _ in PAIRS[110:114]]


def test_jsonl_with_chosen_keys_and_carved_splits(tmp_path):
    rows = [{"en": s, "de": t, "id": i} for i, (s, t) in enumerate(PAIRS)]
    path = write(tmp_path / "pairs.jsonl", jsonl(rows))
    dm = ParallelTextDataModule(
        source=str(path), src_column="en", tgt_column="de", batch_size=4, val_fraction=0.1, test_fraction=0.1
    )
    assert dm.tgt_tokenizer.get_vocab_size() <= 8192  # the default joint BPE
    got = {split: all_pairs(dm, split) for split in ("val", "test")}
    assert len(got["val"]) == len(got["test"]) == 12
    assert set(got["val"]) | set(got["test"]) <= set(PAIRS) and not set(got["val"]) & set(got["test"])
    assert dm.meta["num_pairs"] == {"train": 96, "val": 12, "test": 12}


def test_hugging_face_translation_rows_local_and_through_datasets(tmp_path):
    rows = [{"translation": {"en": s, "de": t}} for s, t in PAIRS]
    write(tmp_path / "hf" / "data" / "train.jsonl", jsonl(rows[:100]))
    write(tmp_path / "hf" / "data" / "validation.jsonl", jsonl(rows[100:110]))
    write(tmp_path / "hf" / "data" / "test.jsonl", jsonl(rows[110:]))
    dm = ParallelTextDataModule(
        source=str(tmp_path / "hf" / "data"), src_lang="de", tgt_lang="en", tokenizer=TokenizerConfig("char")
    )
    assert sorted(all_pairs(dm, "val")) == sorted((t, s) for s, t in PAIRS[100:110])
    # The hub code path: the same folder loaded by `datasets` as a dataset repository.
    records, _ = sources.read_hub_records(str(tmp_path / "hf"), None)
    assert set(records) == {"train", "val", "test"} and records["val"][0][0].endswith("[validation] row 0")
    assert [dm._pair(where, row) for where, row in records["val"]] == [(t, s) for s, t in PAIRS[100:110]]


def test_parquet_translation_file_is_read_with_datasets(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"translation": [{"en": s, "fr": t} for s, t in PAIRS]})
    frame.to_parquet(tmp_path / "train.parquet")
    dm = ParallelTextDataModule(source=str(tmp_path / "train.parquet"), src_lang="en", tgt_lang="fr")
    assert set(all_pairs(dm, "test")) <= set(PAIRS)


def test_max_length_drops_long_pairs(tmp_path):
    long = ("a long source " * 20, "ein langes ziel " * 20)
    write(tmp_path / "train.tsv", tsv([*PAIRS[:100], long]))
    write(tmp_path / "val.tsv", tsv([*PAIRS[100:110], long]))
    write(tmp_path / "test.tsv", tsv(PAIRS[110:]))
    dm = ParallelTextDataModule(source=str(tmp_path), tokenizer=TokenizerConfig("char"), max_length=40)
    assert dm.meta["dropped"] == {"train": 1, "val": 1, "test": 0}
    with pytest.warns(UserWarning, match="1 pairs of the val split are longer than 40 tokens"):
        pairs = all_pairs(dm, "val")
    assert sorted(pairs) == sorted(PAIRS[100:110])
    tiny = ParallelTextDataModule(source=str(tmp_path), tokenizer=TokenizerConfig("char"), max_length=5)
    with pytest.raises(InputError, match=r"data\.max_length: all \d+ pairs of the \w+ split are longer"):
        tiny.prepare_data()


# --------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("name", "text", "kwargs", "message"),
    [
        ("train.tsv", "a\tb\nc\td\te\n", {}, r"train\.tsv:2: expected 2 tab-separated fields .* found 3"),
        ("train.tsv", "a\tb\nno tab here\n", {}, r"train\.tsv:2: expected 2 tab-separated fields .* found 1"),
        ("train.tsv", "a\tb\n \tc\n", {}, r"train\.tsv:2: empty source in a pair"),
        ("train.jsonl", '{"src": "a", "tgt": ""}\n', {}, r"train\.jsonl:1: empty target in a pair"),
        (
            "train.jsonl",
            '{"src": "a", "tgt": "b"}\n{"src": "a", tgt\n',
            {},
            r"train\.jsonl:2: not valid JSON",
        ),
        (
            "train.jsonl",
            '{"src": "a", "tgt": "b"}\n["a", "b"]\n',
            {},
            r"train\.jsonl:2: expected a JSON object",
        ),
        (
            "train.jsonl",
            '{"source": "a", "tgt": "b"}\n',
            {},
            r"train\.jsonl:1 has no column 'src' \(its columns",
        ),
        (
            "train.jsonl",
            '{"translation": {"en": "a", "de": "b"}}\n',
            {},
            r"set data\.src_lang and data\.tgt_lang",
        ),
        (
            "train.jsonl",
            '{"translation": {"en": "a", "de": "b"}}\n',
            {"src_lang": "en", "tgt_lang": "fr"},
            r"train\.jsonl:1: 'translation' has no language fr \(it has en, de\)",
        ),
        ("train.jsonl", '{"src": 3, "tgt": "b"}\n', {}, r"train\.jsonl:1: the source is int, not text"),
        ("train.tsv", "\n\n", {}, r"train\.tsv' is empty"),
    ],
)
def test_bad_files_name_the_file_and_line(tmp_path, name, text, kwargs, message):
    path = write(tmp_path / name, text)
    dm = ParallelTextDataModule(source=str(path), cache_dir=str(tmp_path / "cache"), **kwargs)
    with pytest.raises(InputError, match=message):
        dm.prepare_data()
    assert not list((tmp_path / "cache" / "parallel").glob("*/meta.json"))  # nothing half-built


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": "sideways"}, r"data\.direction: unknown direction 'sideways'"),
        ({"batch_size": 0}, r"data\.batch_size: expected a positive integer"),
        ({"val_fraction": 0.6}, r"data\.val_fraction: expected a fraction"),
        ({"src_lang": "en"}, r"give both languages"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        ParallelTextDataModule(**kwargs)


def test_too_few_pairs_for_a_batch(tmp_path):
    write(tmp_path / "train.tsv", tsv(PAIRS[:20]))
    dm = ParallelTextDataModule(
        source=str(tmp_path / "train.tsv"), tokenizer=TokenizerConfig("char"), batch_size=64
    )
    with pytest.raises(
        InputError, match=r"data\.batch_size: the train split has \d+ pairs, fewer than one batch"
    ):
        dm.setup("fit")


def test_resuming_with_another_vocabulary_is_refused_and_hparams_rebuild(tmp_path):
    write(tmp_path / "train.tsv", tsv(PAIRS))
    dm = ParallelTextDataModule(source=str(tmp_path / "train.tsv"), tokenizer=TokenizerConfig("char"))
    other = ParallelTextDataModule(
        source=str(tmp_path / "train.tsv"),
        tokenizer=TokenizerConfig("char"),
        tgt_tokenizer=TokenizerConfig("word"),
    )
    with pytest.raises(InputError, match="vocabulary of"):
        other.load_state_dict(dm.state_dict())
    dm.load_state_dict(dm.state_dict())
    assert dm.hparams["tokenizer"] == {
        "kind": "char", "vocab_size": 8192, "min_frequency": 2, "unk_token": "<unk>", "end_of_line": "<|eos|>"
    }  # fmt: skip
    assert ParallelTextDataModule(**dm.hparams).cache_key == dm.cache_key  # as load_from_checkpoint does


def test_predict_inputs_are_encoded_with_the_source_tokenizer():
    dm = ParallelTextDataModule(**SMALL, inputs=["twelve", "one hundred five"])
    batch = next(iter(dm.predict_dataloader()))
    assert batch["text"] == ["twelve", "one hundred five"]
    assert batch["src"].shape == (2, 3) and batch["src"][0, 1] == dm.pad_id
    assert [dm.src_tokenizer.decode(r.tolist()) for r in batch["src"]] == batch["text"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.asarray(dm.dataset("val").src.lengths()).min() >= 1

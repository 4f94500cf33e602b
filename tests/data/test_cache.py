"""The cache: entries built whole or not at all, checked against their manifest, rebuilt when damaged."""

import errno
import json

import numpy as np
import pytest
from imagefiles import class_folders

from lightning_seq.data import LabelledTextDataModule, ParallelTextDataModule, TextDataModule, TokenizerConfig
from lightning_seq.data import cache as cache_module
from lightning_seq.data.cache import (
    MANIFEST,
    SAMPLE_BLOCKS,
    SAMPLE_BYTES,
    build_once,
    check_manifest,
    file_digest,
)
from lightning_seq.data.images import ImageDataModule
from lightning_seq.errors import InputError

CHAR = TokenizerConfig("char")


def writer(files: dict[str, bytes]):
    """A ``write(folder)`` for build_once that writes ``files`` and counts its calls."""

    def write(folder):
        write.calls += 1
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    write.calls = 0
    return write


def test_an_entry_holds_a_manifest_of_sizes_and_checksums(tmp_path):
    write = writer({"meta.json": b"{}", "tokens/train.bin": bytes(range(256)) * 10})
    assert build_once(tmp_path / "entry", write, done=MANIFEST) is False
    manifest = json.loads((tmp_path / "entry" / MANIFEST).read_text())["files"]
    assert manifest["tokens/train.bin"][0] == 2560 and set(manifest) == {"meta.json", "tokens/train.bin"}
    assert check_manifest(tmp_path / "entry") is None
    assert build_once(tmp_path / "entry", write, done=MANIFEST) is True and write.calls == 1


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda e: (e / "train.bin").write_bytes(b"\0" * 100), "has train.bin of 100 bytes where 2560"),
        (lambda e: (e / "meta.json").write_text('{"vocab": 9}'), "has meta.json changed since it was"),
        (lambda e: (e / "train.bin").unlink(), "lacks its file train.bin"),
        (lambda e: (e / MANIFEST).unlink(), "has no manifest.json"),
        (lambda e: (e / MANIFEST).write_text("{"), "has an unreadable manifest.json"),
    ],
    ids=["truncated", "edited", "deleted", "no manifest", "broken manifest"],
)
def test_a_damaged_entry_is_named_and_built_again(tmp_path, lightning_log, damage, problem):
    files = {"meta.json": b'{"vocab": 7}', "train.bin": bytes(range(256)) * 10}
    write, entry = writer(files), tmp_path / "entry"
    build_once(entry, write, done=MANIFEST)
    damage(entry)
    assert problem in check_manifest(entry)
    assert build_once(entry, write, done=MANIFEST) is False
    lines = lightning_log.text
    assert write.calls == 2 and f"cache: '{entry}' {problem}" in lines and "building it again" in lines
    assert {n: (entry / n).read_bytes() for n in files} == files and check_manifest(entry) is None


def test_large_files_are_checked_by_sampled_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "HASH_WHOLE", 1 << 20)  # 8 MiB counts as large
    size = 8 << 20
    data = bytearray(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    digest = file_digest(path, size)
    step = (size - SAMPLE_BYTES) / (SAMPLE_BLOCKS - 1)
    inside, between = round(10 * step) + 7, round(10 * step) + SAMPLE_BYTES + 7  # in block 10; after it
    for offset, seen in ((inside, True), (between, False)):
        data[offset] ^= 1
        path.write_bytes(data)
        assert (file_digest(path, size) != digest) is seen
        data[offset] ^= 1


def test_an_entry_from_before_manifests_is_kept_where_done_is_another_file(tmp_path):
    entry = tmp_path / "old"
    entry.mkdir()
    (entry / "meta.json").write_text("{}")
    assert build_once(entry, writer({}), done="meta.json") is True  # e.g. a feature net trained earlier


def test_a_file_in_place_of_the_cache_folder_is_named(tmp_path):
    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.raises(InputError, match=rf"data.init_args.cache_dir: '{blocker}' is a file.*LIGHTNING_SEQ"):
        TextDataModule(source=str(text_file(tmp_path)), tokenizer=CHAR, cache_dir=str(blocker)).prepare_data()
    with pytest.raises(InputError, match=rf"'{blocker}' is a file"):
        TextDataModule(tokenizer=CHAR, cache_dir=str(blocker / "deeper")).prepare_data()
    assert blocker.read_text() == "not a folder"


def test_a_full_disk_while_writing_is_named_and_leaves_nothing_behind(tmp_path):
    def write(folder):
        (folder / "half.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    entry = tmp_path / "c" / "entry"
    with pytest.raises(
        InputError, match=rf"cannot write the cache entry '{entry}': no space left on the dev"
    ):
        build_once(entry, write)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["entry.lock"]  # no half-written folder


def test_a_failing_source_is_not_blamed_on_the_cache(tmp_path):
    def write(folder):
        raise PermissionError(13, "Permission denied", str(tmp_path / "elsewhere" / "source.txt"))

    with pytest.raises(PermissionError):
        build_once(tmp_path / "cache" / "entry", write)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no folder left, finished or not


def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"line {i} of the corpus, with some words.\n" for i in range(300)))
    return path


# --------------------------------------------------------------------- each DataModule's cache
def test_text_cache_with_a_truncated_token_file_is_tokenized_again(tmp_path):
    args = {"source": str(text_file(tmp_path)), "tokenizer": CHAR, "cache_dir": str(tmp_path / "c")}
    first = TextDataModule(**args)
    full = len(first.tokens("train"))
    train = first.cache_path / "train.bin"
    train.write_bytes(train.read_bytes()[: train.stat().st_size // 3])  # a fragment of the tokens
    again = TextDataModule(**args)
    assert again.vocab_size == first.vocab_size and again.cache_hit is False
    assert len(again.tokens("train")) == full


def test_labelled_cache_with_edited_labels_is_built_again(tmp_path):
    rows = [{"text": f"{w} film {i}", "label": w} for i in range(40) for w in ("great", "awful")]
    source = tmp_path / "reviews.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = {"source": str(source), "tokenizer": CHAR, "batch_size": 4, "cache_dir": str(tmp_path / "c")}
    first = LabelledTextDataModule(**args)
    labels = first.dataset("train").labels.copy()
    np.save(first.cache_path / "train.labels.npy", np.zeros_like(labels))  # same size, other labels
    again = LabelledTextDataModule(**args)
    assert again.num_classes == 2 and again.cache_hit is False
    assert np.array_equal(again.dataset("train").labels, labels)


def test_parallel_cache_with_a_truncated_offsets_file_is_built_again(tmp_path):
    args = {"train_size": 300, "val_size": 50, "test_size": 50, "cache_dir": str(tmp_path / "c")}
    first = ParallelTextDataModule(**args)
    pairs = len(first.dataset("train"))
    offsets = first.cache_path / "train.src.offsets.npy"
    offsets.write_bytes(offsets.read_bytes()[:-80])
    again = ParallelTextDataModule(**args)
    assert again.tgt_vocab_size == first.tgt_vocab_size and again.cache_hit is False
    assert len(again.dataset("train")) == pairs


def test_image_cache_with_an_edited_index_is_built_again(tmp_path):
    root = class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=6)
    args = {"dataset": str(root), "batch_size": 2, "num_workers": 0, "cache_dir": str(tmp_path / "c")}
    first = ImageDataModule(**args)
    rows = first.split_dataset("train").labels.copy()
    with np.load(first.cache_path / "train.npz") as arrays:
        np.savez(first.cache_path / "train.npz", rows=arrays["rows"][:2], labels=arrays["labels"][:2])
    again = ImageDataModule(**args)
    assert again.classes == ["cat", "dog"] and again.cache_hit is False
    assert np.array_equal(again.split_dataset("train").labels, rows)


def test_embedded_scenes_missing_an_image_are_drawn_again(tmp_path):
    args = {"num_train": 40, "num_val": 8, "num_test": 8, "batch_size": 8, "num_workers": 0}
    first = ImageDataModule(cache_dir=str(tmp_path), **args)
    first.prepare_data()
    image = first.scenes_path / "train" / "000003.png"
    drawn = image.read_bytes()
    image.unlink()
    again = ImageDataModule(cache_dir=str(tmp_path), **args)
    again.prepare_data()
    assert again.cache_hit is True and image.read_bytes() == drawn  # the index still holds, the scene is back

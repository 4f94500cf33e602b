"""Bad caches, data files and image folders through the command line: one clear error line, exit status 2,
nothing already written changed; a damaged cache is built again, never trained on."""

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from clitools import CSV_ONLY, REPO, SMOKE, assert_one_error, ok, snapshot, two_at_a_time
from imagefiles import class_folders

from lightning_seq.data import TextDataModule, TokenizerConfig
from lightning_seq.data.tokenizers import MAX_VOCAB_SIZE

CHAR_LSTM = str(REPO / "recipes" / "char_lstm.yaml")
RESNET_SE = str(REPO / "recipes" / "resnet_se.yaml")
TEXT = ["fit", "--config", CHAR_LSTM, "--config", CSV_ONLY, "--config", SMOKE]
SMALL_TEXT = ["--data.init_args.batch_size=4", "--data.init_args.block_size=16"]
IMAGES = [
    "fit",
    "--config",
    RESNET_SE,
    "--config",
    CSV_ONLY,
    "--config",
    SMOKE,
    "--data.init_args.num_workers=0",
]
LINE = "a line of text for the cache, number {i}, with some words in it.\n"


def corpus(folder: Path, lines: int = 1000) -> Path:
    """A text file of ``lines`` lines (about 64 bytes each; its tokens take twice that in the cache)."""
    path = folder / "corpus.txt"
    path.write_text("".join(LINE.format(i=i) for i in range(lines)), encoding="utf-8")
    return path


def text_args(source: Path) -> list[str]:
    return [*TEXT, f"--data.init_args.source={source}", *SMALL_TEXT]


def built_cache(source: Path, cache_dir: Path | None = None) -> Path:
    """The cache entry that ``text_args(source)`` uses, built in this process."""
    dm = TextDataModule(
        source=str(source), tokenizer=TokenizerConfig("char"), cache_dir=cache_dir and str(cache_dir)
    )
    dm.prepare_data()
    return dm.cache_path


def cache_root() -> Path:
    return Path(os.environ["LIGHTNING_SEQ_CACHE"])  # the isolated cache the CLI fixture gives its commands


# -------------------------------------------------------------------------- mounts (root only)
def mount(*args: str) -> None:
    """``mount ARGS``, or skip the test where this machine or user cannot mount (CI runs as root)."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()})")


@contextmanager
def tmpfs(folder: Path, options: str):
    """A tmpfs mounted at ``folder`` with ``options`` (``ro``, ``size=64k``) for the duration."""
    folder.mkdir(parents=True, exist_ok=True)
    mount("-t", "tmpfs", "-o", options, "tmpfs", str(folder))
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def read_only_view(source: Path, folder: Path):
    """``source`` seen read-only at ``folder`` (a bind mount, remounted read-only)."""
    folder.mkdir(parents=True, exist_ok=True)
    mount("--bind", str(source), str(folder))
    try:
        mount("-o", "remount,bind,ro", str(folder))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ------------------------------------------------------------------------ one error line each
def bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    source = corpus(tmp_path)
    (tmp_path / "a_file").write_text("I am not a folder")
    (tmp_path / "nul.txt").write_bytes(b"\0" * 5000)
    (tmp_path / "utf16.txt").write_bytes(("some text\n" * 300).encode("utf-16-le"))  # no byte-order mark
    good = '{"text": "a fine line"}\n'
    (tmp_path / "rows.jsonl").write_text(good * 2 + '{"text": "no closing brace"\n' + good)
    (tmp_path / "rows.csv").write_text("text\nfine\nalso fine\nthree,fields,here\n")
    pets = class_folders(tmp_path / "pets", classes=("cat", "dog"), per_class=3)
    (pets / "bird").mkdir()
    split = class_folders(tmp_path / "split", classes=("cat", "dog"), per_class=3, prefix="train")
    class_folders(split, classes=("cat", "dog", "bird"), per_class=2, prefix="val")
    big = 10**12  # the tokenizers library aborts the whole process at this size (SIGABRT, no message)
    return {  # case: (arguments, what the one error line says)
        "cache_dir is a file": (
            [*text_args(source), f"--data.init_args.cache_dir={tmp_path / 'a_file'}"],
            f"error: data.init_args.cache_dir: '{tmp_path / 'a_file'}' is a file",
        ),
        "BPE vocabulary too large for the native trainer": (
            [
                *text_args(source),
                "--data.init_args.tokenizer.kind=bpe",
                f"--data.init_args.tokenizer.vocab_size={big}",
            ],
            f"error: data.init_args.tokenizer.vocab_size: {big} is outside the allowed range "
            f"5..{MAX_VOCAB_SIZE}",
        ),
        "text file of NUL bytes": (
            text_args(tmp_path / "nul.txt"),
            f"error: data.source: '{tmp_path / 'nul.txt'}' is not text: 100% of its characters are control",
        ),
        "UTF-16 text without a byte-order mark": (
            text_args(tmp_path / "utf16.txt"),
            "it looks like UTF-16 text: convert it, e.g. iconv -f utf-16le -t utf-8",
        ),
        "malformed JSONL line": (
            text_args(tmp_path / "rows.jsonl"),
            f"error: data.source: {tmp_path / 'rows.jsonl'}:3: not valid JSON (Expecting ',' delimiter",
        ),
        "malformed CSV line": (
            text_args(tmp_path / "rows.csv"),
            f"error: data.source: {tmp_path / 'rows.csv'}:4: the row has 3 fields but the header has 1",
        ),
        "empty class folder": (
            [*IMAGES, f"--data.init_args.dataset={pets}"],
            f"error: data.dataset: class folder '{pets / 'bird'}' holds no images",
        ),
        "class in val/ but not in train/": (
            [*IMAGES, f"--data.init_args.dataset={split}"],
            f"error: data.dataset: class folder '{split / 'val' / 'bird'}' has no counterpart in the train",
        ),
    }


def test_bad_data_gets_one_clear_error_and_nothing_is_written(cli, tmp_path):
    cases = bad_inputs(tmp_path)
    cache_root().mkdir(parents=True, exist_ok=True)
    before, cached = snapshot(tmp_path), snapshot(cache_root())
    results = two_at_a_time(lambda args: cli(*args, cwd=tmp_path), [args for args, _ in cases.values()])
    for (case, (_, message)), result in zip(cases.items(), results, strict=True):
        assert_one_error(result, message, case)
    assert snapshot(tmp_path) == before  # no run folder, nothing changed
    assert cached.items() <= snapshot(cache_root()).items()  # earlier cache entries untouched


def test_read_only_cache_folder(cli, tmp_path):
    source = corpus(tmp_path)
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        result = cli(*text_args(source), cwd=tmp_path, env={"LIGHTNING_SEQ_CACHE": str(folder / "cache")})
        message = (
            f"error: data.init_args.cache_dir: cannot write the cache entry '{folder / 'cache' / 'text'}/"
        )
        assert_one_error(result, message, "read-only cache folder")
        assert "the file system is read-only" in result.stderr and "LIGHTNING_SEQ_CACHE" in result.stderr
    assert not (tmp_path / "runs").exists()  # stopped before any run folder


def test_full_disk_leaves_no_half_written_cache(cli, tmp_path):
    source = corpus(tmp_path)  # 64 KB of text: 128 KB of tokens
    with tmpfs(tmp_path / "full", "size=64k") as folder:
        result = cli(*text_args(source), cwd=tmp_path, env={"LIGHTNING_SEQ_CACHE": str(folder)})
        assert_one_error(result, "error: data.init_args.cache_dir: cannot write the cache entry", "full disk")
        assert "no space left on the device (nothing of it was kept). Fix: free space there" in result.stderr
        left = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
        assert len(left) == 2 and left[0] == "text" and left[1].endswith(".lock"), left  # a lock file only
    assert not (tmp_path / "runs").exists()


def test_damaged_cache_on_a_read_only_folder_is_named_and_an_intact_one_is_read(cli, tmp_path):
    source = corpus(tmp_path)
    entry = built_cache(source, tmp_path / "shared")
    train = entry / "train.bin"
    size = train.stat().st_size
    with read_only_view(tmp_path / "shared", tmp_path / "view") as view:  # e.g. a cache shared read-only
        dm = TextDataModule(source=str(source), tokenizer=TokenizerConfig("char"), cache_dir=str(view))
        assert dm.vocab_size > 4 and dm.cache_hit is True  # intact: read where it is
    train.write_bytes(train.read_bytes()[: size // 2])
    with read_only_view(tmp_path / "shared", tmp_path / "view") as view:
        result = cli(*text_args(source), cwd=tmp_path, env={"LIGHTNING_SEQ_CACHE": str(view)})
        damaged = view / "text" / entry.name
        message = f"'{damaged}' has train.bin of {size // 2} bytes where {size} were written, and it cannot"
        assert_one_error(result, message, "damaged read-only cache")
        assert "be built again there: the file system is read-only. Fix: delete the entry" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_damaged_cache_is_built_again_and_empty_cells_are_counted(cli, tmp_path):
    rows = [f"row {i} of a table of text long enough to train on" if i % 9 else "" for i in range(400)]
    source = tmp_path / "table.csv"
    source.write_text("text,id\n" + "".join(f"{text},{i}\n" for i, text in enumerate(rows)))
    entry = built_cache(source)
    train = entry / "train.bin"
    size = train.stat().st_size
    train.write_bytes(train.read_bytes()[: size // 10])  # a fragment: the run must not train on it
    result = ok(cli(*text_args(source), "--trainer.max_steps=1", cwd=tmp_path))
    assert f"cache: '{entry}' has train.bin of {size // 10} bytes where {size} were written" in result.stderr
    assert train.stat().st_size == size  # built again from the source
    empty = sum(not r for r in rows)
    assert f"data.text_column: left out {empty} of the 400 rows of '{source}' whose 'text' cell is empty" in (
        result.stderr
    )

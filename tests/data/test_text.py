import itertools

import numpy as np
import pytest
import torch

from lightning_seq.data import TextDataModule, TokenizerConfig
from lightning_seq.data.text import TokenStreams, TokenWindows
from lightning_seq.errors import InputError


def test_stream_mode_batches_continue_each_other():
    tokens = np.arange(1000)
    batches = list(TokenStreams(tokens, batch_size=4, bptt=16))
    assert len(batches) == len(TokenStreams(tokens, 4, 16))
    for prev, nxt in itertools.pairwise(batches):
        # the last target of each row is the first input of the same row in the next batch
        assert torch.equal(prev[:, -1], nxt[:, 0])
    for b in range(4):
        row = torch.cat([batches[0][b]] + [x[b, 1:] for x in batches[1:]])
        assert torch.equal(row, torch.arange(row[0], row[0] + len(row)))  # one contiguous stream
    assert [len(batches[0][b]) for b in range(4)] == [17] * 4


def test_streams_cover_the_corpus_and_ranks_get_disjoint_contiguous_streams():
    tokens = np.arange(2 * 4 * 50 + 1)
    seen = []
    for rank in range(2):
        batches = list(TokenStreams(tokens, batch_size=4, bptt=16, rank=rank, world_size=2))
        inputs = torch.cat([b[:, :-1] for b in batches], dim=1)  # (4, 50): each row one stream
        for row in inputs:
            assert torch.equal(row, torch.arange(row[0], row[0] + 50))
        seen.append(inputs.flatten())
    assert torch.equal(torch.sort(torch.cat(seen)).values, torch.arange(400))


def test_window_mode_items():
    windows = TokenWindows(np.arange(100), block_size=10)
    assert len(windows) == 9
    assert torch.equal(windows[2], torch.arange(20, 31))
    every = TokenWindows(np.arange(100), block_size=10, stride=1)
    assert len(every) == 90 and torch.equal(every[89], torch.arange(89, 100))  # every offset, none short
    assert torch.equal(every[3], torch.arange(3, 14))


def test_datamodule_sizes_and_cache_is_reused(corpus_file):
    dm = TextDataModule(source=str(corpus_file), batch_size=4, block_size=32)
    assert dm.vocab_size == len(set(corpus_file.read_text())) + 4
    assert dm.cache_hit is False
    files = {p.name: p.stat().st_mtime_ns for p in dm.cache_path.iterdir()}
    assert {"tokenizer.json", "meta.json", "train.bin", "val.bin", "test.bin"} <= set(files)

    again = TextDataModule(source=str(corpus_file), batch_size=4, block_size=32)
    assert again.vocab_size == dm.vocab_size and again.cache_hit is True
    assert {p.name: p.stat().st_mtime_ns for p in again.cache_path.iterdir()} == files  # nothing rewritten

    bpe = TextDataModule(source=str(corpus_file), tokenizer=TokenizerConfig(kind="bpe", vocab_size=300))
    assert bpe.cache_path != dm.cache_path and bpe.cache_hit is None  # other settings, other cache


def test_cached_tokens_decode_back_to_the_corpus(corpus_file):
    dm = TextDataModule(source=str(corpus_file))
    text = "".join(
        dm.tokenizer.decode(np.asarray(dm.tokens(s)[:]).tolist()) for s in ("train", "val", "test")
    )
    assert text == corpus_file.read_text()
    assert dm.chars_per_token("val") == pytest.approx(1.0)


def test_pre_tokenized_split_files_give_the_references_tokens(tmp_path):
    """ptb.train.txt / ptb.valid.txt / ptb.test.txt: each split holds its words and one <|eos|> per line
    (none added at the end of a file that ends with a newline), as the literature counts them."""
    texts = {
        "train": " the cat sat \n the dog sat \n a <unk> ran \n",
        "valid": " the zebra sat \n\n",
        "test": " a cat ran",  # no final newline: the end of the document ends the line
    }
    for name, text in texts.items():
        (tmp_path / f"ptb.{name}.txt").write_text(text)
    config = TokenizerConfig(kind="whitespace", min_frequency=1, vocab_size=None)
    dm = TextDataModule(source=str(tmp_path), tokenizer=config, batch_size=1, block_size=2)
    for split, name in (("train", "train"), ("val", "valid"), ("test", "test")):
        text = texts[name]
        assert dm.meta["num_tokens"][split] == len(text.split()) + max(1, text.count("\n"))
    assert dm.vocab_size == 4 + len({"the", "cat", "sat", "dog", "a", "ran"})  # the train split's words
    val = dm.tokenizer.decode(np.asarray(dm.tokens("val")[:]).tolist(), skip_special_tokens=False)
    assert val == "the <unk> sat <|eos|> <|eos|>"  # zebra: not in train


def test_changed_source_file_is_tokenized_again(corpus_file):
    first = TextDataModule(source=str(corpus_file))
    first.prepare_data()
    corpus_file.write_text("new line with zebra\n" + corpus_file.read_text())
    second = TextDataModule(source=str(corpus_file))
    assert second.cache_key != first.cache_key
    assert "z" in second.tokenizer.get_vocab()


def test_dataloaders_in_both_modes(corpus_file):
    stream = TextDataModule(source=str(corpus_file), batch_size=4, block_size=32)
    stream.setup("fit")
    batch = next(iter(stream.train_dataloader()))
    assert batch.shape == (4, 33) and batch.dtype == torch.long
    window = TextDataModule(source=str(corpus_file), batch_size=4, block_size=32, mode="window")
    window.setup("fit")
    assert next(iter(window.train_dataloader())).shape == (4, 33)
    assert next(iter(window.val_dataloader())).shape[1] == 33


@pytest.mark.parametrize("mode", ["stream", "window"])
def test_evaluation_has_its_own_batch_size(corpus_file, mode):
    """eval_batch_size: validation and test cut into that many streams (the reference word LM evaluates
    on 10 while training on 20); training keeps batch_size."""
    dm = TextDataModule(source=str(corpus_file), batch_size=4, eval_batch_size=2, block_size=8, mode=mode)
    dm.setup("fit")
    dm.setup("test")
    assert next(iter(dm.train_dataloader())).shape == (4, 9)
    for split, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
        batches = list(loader)
        assert batches[0].shape == (2, 9)
        if mode == "stream":  # the two streams cover the split: half its tokens each
            assert sum(b.shape[1] - 1 for b in batches) == (len(dm.tokens(split)) - 1) // 2


# ------------------------------------------------------------------------------- bad input
def test_block_size_larger_than_the_corpus(corpus_file):
    dm = TextDataModule(source=str(corpus_file), mode="window", block_size=100_000)
    with pytest.raises(
        InputError, match=r"data\.block_size: the train split has \d+ tokens, fewer than block_size"
    ):
        dm.setup("fit")
    streams = TextDataModule(source=str(corpus_file), block_size=5_000, batch_size=8)
    with pytest.raises(InputError, match=r"data\.block_size: .* per stream"):
        streams.setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"data\.batch_size: expected a positive integer"),
        ({"val_fraction": 0.7}, r"data\.val_fraction: expected a fraction"),
        ({"mode": "bucket"}, r"data\.mode: unknown mode 'bucket'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        TextDataModule(**kwargs)


def test_resuming_with_another_tokenizer_is_refused(corpus_file):
    dm = TextDataModule(source=str(corpus_file))
    other = TextDataModule(source=str(corpus_file), tokenizer=TokenizerConfig(kind="bpe", vocab_size=300))
    with pytest.raises(InputError, match="vocabulary of"):
        other.load_state_dict(dm.state_dict())


def test_hyperparameters_are_plain_data(corpus_file):
    dm = TextDataModule(source=str(corpus_file), tokenizer=TokenizerConfig(kind="bpe", vocab_size=300))
    assert dm.hparams["tokenizer"] == {
        "kind": "bpe", "vocab_size": 300, "min_frequency": 2, "unk_token": "<unk>", "end_of_line": "<|eos|>"
    }  # fmt: skip
    again = TextDataModule(**dm.hparams)  # as load_from_checkpoint rebuilds it
    assert again.cache_key == dm.cache_key


def test_no_test_split_trains_on_the_first_90_percent(corpus_file):
    text = corpus_file.read_text()
    dm = TextDataModule(
        source=str(corpus_file), mode="window", block_size=32, val_fraction=0.1, test_fraction=0
    )
    decoded = {
        s: dm.tokenizer.decode(dm.tokens(s)[:].tolist(), skip_special_tokens=True) for s in ("train", "val")
    }
    assert decoded["train"] + decoded["val"] == text  # nothing dropped, in order
    assert abs(len(decoded["val"]) / len(text) - 0.1) < 0.01  # cut at a newline near 90%
    assert len(dm.tokens("test")) == 0
    dm.setup("fit")
    with pytest.raises(InputError, match=r"data\.test_fraction: the test split is empty"):
        dm.setup("test")

import pytest
from tokenizers import Tokenizer

from lightning_seq.data.tokenizers import (
    EOS,
    MAX_VOCAB_SIZE,
    SPECIAL_TOKENS,
    TokenizerConfig,
    build_tokenizer,
    load_tokenizer_file,
    save_tokenizer,
    special_ids,
)
from lightning_seq.errors import InputError

TRAIN = [
    "The quick brown fox jumps over the lazy dog.\nThe dog sleeps; the fox runs!\n",
    "Tabs\tand  double spaces, 'quotes' and \"more\" (brackets) [x] = {y}.\n\n",
    "Unicode: café, naïve, 東京, emoji 🙂.\n",
] * 20


def test_char_round_trip_is_exact_for_seen_characters():
    tok = build_tokenizer(TokenizerConfig(kind="char"), TRAIN)
    for text in TRAIN[:3]:
        ids = tok.encode(text).ids
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text


def test_char_unseen_character_maps_to_unk():
    tok = build_tokenizer(TokenizerConfig(kind="char"), TRAIN)
    assert tok.encode("Ω").tokens == ["<|unk|>"]


def test_bpe_round_trip_is_exact_for_any_text_and_compresses():
    tok = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=400, min_frequency=2), TRAIN)
    assert tok.get_vocab_size() <= 400
    unseen = "Zebras ℵ₀ never seen before — ok?\n"
    for text in [*TRAIN[:3], unseen]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
    assert len(tok.encode(TRAIN[0]).ids) < len(TRAIN[0]) / 2


def test_word_round_trip_keeps_spacing_and_newlines():
    tok = build_tokenizer(TokenizerConfig(kind="word", vocab_size=1000, min_frequency=1), TRAIN)
    for text in TRAIN[:3]:
        enc = tok.encode(text)
        assert "<|unk|>" not in enc.tokens
        assert tok.decode(enc.ids) == text
    assert "▁fox" in tok.get_vocab()


def test_word_min_frequency_sends_rare_words_to_unk():
    tok = build_tokenizer(TokenizerConfig(kind="word", min_frequency=2), ["a common b common c rare"])
    assert tok.encode("a common rare").tokens == ["<|unk|>", "▁common", "<|unk|>"]


# Penn Treebank's layout: lower-cased, space-separated tokens, one sentence per line, rare words <unk>.
PRE_TOKENIZED = (
    " aer banknote berlitz calloway centrust cluett fromstein gitano guterman \n"
    " pierre <unk> N years old will join the board as a nonexecutive director nov. N \n"
    " mr. <unk> is chairman of <unk> n.v. the dutch publishing group \n"
    "\n"
    " the <unk> @-@ based company 's shares rose $ N to $ N.N \n"
)


def test_whitespace_tokens_are_exactly_the_words_and_one_per_line():
    tok = build_tokenizer(
        TokenizerConfig(kind="whitespace", min_frequency=1, vocab_size=None), [PRE_TOKENIZED]
    )
    enc = tok.encode(PRE_TOKENIZED, add_special_tokens=False)
    assert len(enc.ids) == len(PRE_TOKENIZED.split()) + PRE_TOKENIZED.count("\n")  # the reference's count
    words = [t for t in enc.tokens if t != EOS]
    assert words == PRE_TOKENIZED.split()  # '@-@', "'s", 'n.v.', 'N.N' stay whole
    assert enc.tokens.count(EOS) == 5  # the empty line too, as the reference's "<eos>" per line
    assert tok.decode(enc.ids) == " ".join(PRE_TOKENIZED.split())


def test_whitespace_uses_the_corpus_unknown_word_and_the_train_vocabulary():
    tok = build_tokenizer(TokenizerConfig(kind="whitespace", min_frequency=2), [PRE_TOKENIZED])
    ids = special_ids(tok)
    assert sorted(ids.values()) == [0, 1, 2, 3] and tok.id_to_token(ids["unk"]) == "<unk>"
    assert "<|unk|>" not in tok.get_vocab()
    assert sorted(tok.get_vocab().values()) == list(range(tok.get_vocab_size()))  # no holes in the ids
    # seen once (min_frequency 2) or never: the corpus's own <unk>, like the words it already replaced
    assert tok.encode("the gitano zebra <unk> N").tokens == ["the", "<unk>", "<unk>", "<unk>", "N"]
    kept = build_tokenizer(TokenizerConfig(kind="whitespace", min_frequency=1, vocab_size=7), [PRE_TOKENIZED])
    assert list(kept.get_vocab()) and kept.get_vocab_size() == 7  # 4 special tokens, then the most frequent
    assert {"N", "the", "$"} <= set(kept.get_vocab())  # 'N' x5, 'the' x3, '$' x2 (<unk> is special)


@pytest.mark.parametrize(("end_of_line", "lines"), [(None, []), ("<eos>", ["<eos>"] * 2)])
def test_whitespace_end_of_line_token_is_configurable(end_of_line, lines):
    config = TokenizerConfig(kind="whitespace", min_frequency=1, end_of_line=end_of_line)
    tok = build_tokenizer(config, ["a b\nc\n"])
    assert tok.encode("a b\nc\n").tokens == ["a", "b", *lines[:1], "c", *lines[1:]]


@pytest.mark.parametrize(
    ("field", "value"), [("unk_token", ""), ("unk_token", "<u n k>"), ("end_of_line", " ")]
)
def test_whitespace_special_words_must_be_words(field, value):
    with pytest.raises(InputError, match=f"data.tokenizer.{field}: .* is not a word"):
        TokenizerConfig(kind="whitespace", **{field: value})


@pytest.mark.parametrize("kind", ["char", "bpe", "word", "whitespace"])
def test_special_tokens_exist_and_are_atomic(kind):
    tok = build_tokenizer(TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1), TRAIN)
    ids = special_ids(tok)
    assert sorted(ids.values()) == [0, 1, 2, 3]
    assert tok.encode(f"dog{EOS}fox").tokens.count(EOS) == 1


def test_existing_tokenizer_file_is_used_and_gets_special_tokens(tmp_path):
    base = build_tokenizer(TokenizerConfig(kind="char"), ["abc"])
    plain = Tokenizer.from_str(base.to_str())
    path = tmp_path / "tokenizer.json"
    plain.save(str(path))
    tok = build_tokenizer(TokenizerConfig(kind=str(path)), ["ignored"])
    assert tok.decode(tok.encode("cab").ids) == "cab"
    assert all(tok.token_to_id(t) is not None for t in SPECIAL_TOKENS)


def test_unknown_kind_is_rejected_with_the_choices():
    with pytest.raises(
        InputError, match=r"data\.tokenizer\.kind: unknown tokenizer kind 'sentencepiece'.*char, bpe, word"
    ):
        TokenizerConfig(kind="sentencepiece")


def test_missing_and_malformed_tokenizer_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_tokenizer_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"not a valid tokenizer\.json"):
        load_tokenizer_file(bad)


@pytest.mark.parametrize("size", [4, MAX_VOCAB_SIZE + 1, 10**12, 2**70])
def test_vocabulary_sizes_outside_the_range_stop_before_the_native_trainer(size):
    with pytest.raises(
        InputError, match=rf"data\.init_args\.tokenizer\.vocab_size: {size} is outside .* 5\.\."
    ):
        TokenizerConfig(kind="bpe", vocab_size=size)


def test_the_largest_vocabulary_size_trains():
    tok = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=MAX_VOCAB_SIZE), TRAIN)
    assert 256 < tok.get_vocab_size() < 1000  # as large as the text allows


def test_saved_tokenizer_is_the_librarys_own_file(tmp_path):
    tok = build_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300), TRAIN)
    tok.save(str(tmp_path / "library.json"))
    save_tokenizer(tok, tmp_path / "ours.json")
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "library.json").read_bytes()

"""TransformerLM: GPT-2's size, tied head, GPT-2 init, cached generation == recomputation, it learns."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lightning_seq.data import TextDataModule
from lightning_seq.decoding import GenerationConfig, beam_search, greedy
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import TransformerLM

V = 13
KINDS = ["softmax", "linear"]


def _tiny(**kwargs) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM.from_preset("nano", V, **kwargs).double().eval()


def _with_cache(net: TransformerLM):
    def step(tokens, state):
        logits, state = net(tokens, state)
        return logits[:, -1], state

    return step


def _recomputing(net: TransformerLM):
    """A step that keeps the whole token history as its state and recomputes it every call."""

    def step(tokens, history):
        history = tokens if history is None else torch.cat([history, tokens], dim=1)  # (N, t)
        logits, _ = net(history)
        return logits[:, -1], history

    return step


# -------------------------------------------------------------------------------- architecture
def test_gpt2_124m_has_exactly_gpt2s_parameter_count() -> None:
    with torch.device("meta"):  # no memory, no time
        net = TransformerLM.from_preset("gpt2-124M", 50257)
    assert sum(p.numel() for p in net.parameters()) == 124_439_808
    assert net.head.weight is net.embedding.weight
    assert len(net.transformer.blocks) == 12 and net.positions.weight.shape == (1024, 768)


def test_shapes_and_state() -> None:
    net = _tiny()
    tokens = torch.randint(0, V, (3, 7))
    logits, state = net(tokens)
    assert logits.shape == (3, 7, V)
    assert state["offset"] == 7 and len(state["layers"]) == 2
    keys, values = state["layers"][0]["self"]
    assert keys.shape == values.shape == (3, 2, 7, 16)  # (B, heads, T, head_dim), batch first
    logits, state = net(tokens[:, :2], state)
    assert logits.shape == (3, 2, V) and state["offset"] == 9


def test_tied_head_is_embedding_transposed() -> None:
    net = _tiny()
    tokens = torch.randint(0, V, (2, 5))
    assert net.embed_scale == math.sqrt(32)  # Vaswani's scale with sinusoidal positions
    y = net.transformer(net.positions(net.embedding(tokens) * net.embed_scale), causal=True)  # (B, T, dim)
    torch.testing.assert_close(net(tokens)[0], y @ net.embedding.weight.T)
    untied = TransformerLM.from_preset("nano", V, tie_weights=False)
    assert untied.head.weight is not untied.embedding.weight
    # a state_dict round trip keeps the tie
    clone = TransformerLM.from_preset("nano", V)
    clone.load_state_dict(net.state_dict())
    assert clone.head.weight is clone.embedding.weight


def test_gpt2_initialisation() -> None:
    torch.manual_seed(0)
    net = TransformerLM.from_preset("small", 1000, positions="learned")
    depth = len(net.transformer.blocks)
    assert net.embedding.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert net.positions.weight.std().item() == pytest.approx(0.02, rel=0.03)
    residual = 0.02 / math.sqrt(2 * depth)
    for block in net.transformer.blocks:
        assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert block.ffn.net[0].weight.std().item() == pytest.approx(0.02, rel=0.03)
        assert block.attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.03)
        assert block.ffn.net[3].weight.std().item() == pytest.approx(residual, rel=0.03)
    biases = [p for n, p in net.named_parameters() if n.endswith("bias") and "norm" not in n]
    assert biases and all(not b.any() for b in biases)


def test_weight_decay_only_on_weight_matrices() -> None:
    from lightning_seq.modules._optim import param_groups

    net = TransformerLM.from_preset("nano", V, positions="learned")
    decay, no_decay = param_groups(net)
    kept = {id(p) for p in no_decay["params"]}
    assert id(net.embedding.weight) in kept and id(net.positions.weight) in kept  # looked up, not multiplied
    assert all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) == 6 * len(net.transformer.blocks)  # q, k, v, out, FFN in, FFN out


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"dim": 30, "heads": 4}, "heads=4"),
        ({"attention": "performer"}, "attention"),
        ({"positions": "rotary"}, "positions"),
    ],
)
def test_bad_args_raise_input_error(kwargs: dict, field: str) -> None:
    with pytest.raises(InputError, match=field):
        TransformerLM(**{"vocab_size": V, "dim": 32, "depth": 1, "heads": 2, **kwargs})
    with pytest.raises(InputError, match="preset"):
        TransformerLM.from_preset("gpt5", V)


def test_learned_positions_past_max_len_is_a_clear_error() -> None:
    net = _tiny(positions="learned", max_len=8)
    _, state = net(torch.randint(0, V, (1, 8)))  # exactly max_len is fine
    with pytest.raises(InputError, match=r"9 positions \(8 cached \+ 1 new tokens\) exceed max_len=8"):
        net(torch.randint(0, V, (1, 1)), state)
    with pytest.raises(InputError, match="max_len=8"):
        greedy(_with_cache(net), torch.randint(0, V, (1, 4)), max_new_tokens=6)
    with pytest.raises(InputError, match="max_len=8"):
        net(torch.randint(0, V, (1, 9)))


def test_training_with_a_carried_state_is_a_clear_error() -> None:
    """Stream mode would carry the cache from batch to batch and grow it without end."""
    net = _tiny().train()
    _, state = net(torch.randint(0, V, (2, 4)))
    with pytest.raises(InputError, match="mode=window"):
        net(torch.randint(0, V, (2, 4)), state)
    with torch.no_grad():  # generation with a model left in training mode is fine
        assert net(torch.randint(0, V, (2, 1)), state)[1]["offset"] == 5


# ----------------------------------------------------------------------- cached decoding == full
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_cached_logits_equal_one_full_pass(kind: str, positions: str) -> None:
    net = _tiny(attention=kind, positions=positions)
    tokens = torch.randint(0, V, (2, 12))
    full, _ = net(tokens)
    logits, state = net(tokens[:, :5])
    chunks = [logits]
    for t in range(5, 12):
        logits, state = net(tokens[:, t : t + 1], state)
        chunks.append(logits)
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_with_cache_gives_the_tokens_of_recomputation(kind: str) -> None:
    net = _tiny(attention=kind)
    prompt = torch.randint(0, V, (3, 4))
    with torch.no_grad():
        cached = greedy(_with_cache(net), prompt, max_new_tokens=30)
        recomputed = greedy(_recomputing(net), prompt, max_new_tokens=30)
    assert cached.shape == (3, 30)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_reorders_the_cache(kind: str) -> None:
    net = _tiny(attention=kind)
    prompt = torch.randint(0, V, (2, 3))
    tokens, scores = beam_search(_with_cache(net), prompt, max_new_tokens=12, num_beams=3, eos_id=0)
    expected, expected_scores = beam_search(_recomputing(net), prompt, 12, num_beams=3, eos_id=0)
    assert torch.equal(tokens, expected)
    torch.testing.assert_close(scores, expected_scores)
    # the score is the model's own log-probability of what it returned (length penalty 1)
    for row in range(2):
        new = (
            tokens[row][: (tokens[row] == 0).nonzero()[0, 0] + 1] if (tokens[row] == 0).any() else tokens[row]
        )
        seq = torch.cat([prompt[row], new])[None]  # (1, T0 + n)
        logp = net(seq[:, :-1])[0].log_softmax(-1)[0, prompt.shape[1] - 1 :].gather(1, new[:, None]).sum()
        assert scores[row].item() == pytest.approx(logp.item() / len(new), rel=1e-6)


# ------------------------------------------------------------------------ with LanguageModel
def _lm(corpus_file, **net_kwargs) -> tuple[LanguageModel, TextDataModule]:
    dm = TextDataModule(source=str(corpus_file), mode="window", block_size=64, batch_size=16)
    net = TransformerLM.from_preset("nano", dm.vocab_size, **net_kwargs)
    model = LanguageModel(net, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), warmup_steps=10)
    return model, dm


def _trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_language_model_learns_the_corpus(tmp_path, corpus_file, kind: str) -> None:
    """Window mode (no carried state), 200 steps of 16 x 64 characters: val loss < 0.3 nats/char."""
    L.seed_everything(0)
    model, dm = _lm(corpus_file, attention=kind)
    t = _trainer(
        tmp_path, 200, enable_checkpointing=False, limit_val_batches=4, val_check_interval=200,
        check_val_every_n_epoch=None,
    )  # fmt: skip
    t.fit(model, dm)
    val_loss = t.callback_metrics["val/loss"].item()
    uniform = math.log(dm.vocab_size)
    assert val_loss < 0.3, f"val loss {val_loss:.3f} nats/char after 200 steps (uniform: {uniform:.2f})"
    ids = model.tokenizer.encode("mat number 3. the dog ran", add_special_tokens=False).ids
    new = model.generate_tokens(torch.tensor([ids]), GenerationConfig(strategy="greedy", max_new_tokens=26))
    assert model.tokenizer.decode(new[0].tolist()).startswith(" to the park.\nthe cat sat")


def test_checkpoint_round_trip_gives_identical_logits(tmp_path, corpus_file) -> None:
    L.seed_everything(0)
    model, dm = _lm(corpus_file, positions="learned", max_len=64)
    t = _trainer(tmp_path, 5, limit_val_batches=1)
    t.fit(model, dm)
    ckpt = tmp_path / "model.ckpt"
    t.save_checkpoint(ckpt)
    net = TransformerLM.from_preset("nano", dm.vocab_size, positions="learned", max_len=64)
    loaded = LanguageModel.load_from_checkpoint(ckpt, net=net).eval()
    model.eval()
    tokens = torch.randint(0, dm.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model(tokens)[0])
    assert loaded.net.head.weight is loaded.net.embedding.weight
    greedy_config = GenerationConfig(strategy="greedy", max_new_tokens=10)
    assert loaded.generate("the dog", greedy_config) == model.generate("the dog", greedy_config)

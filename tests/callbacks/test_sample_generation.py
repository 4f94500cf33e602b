"""SampleGeneration: when it generates, what it writes, and that training is left as it was."""

import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import CSVLogger

from lightning_seq.callbacks import SampleGeneration
from lightning_seq.data import TextDataModule
from lightning_seq.decoding import GenerationConfig
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM

GREEDY = GenerationConfig(strategy="greedy", max_new_tokens=12)
PROMPTS = ["the cat", "the dog ran"]


def fit(tmp_path, corpus_file, callbacks, seed=0, **trainer_kwargs) -> tuple[L.Trainer, LanguageModel]:
    """Train a tiny LSTM LM (seeded), the run directory given by a CSV logger under ``tmp_path``."""
    L.seed_everything(seed)
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    model = LanguageModel(
        RNNLM.from_preset("nano", dm.vocab_size), optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        warmup_steps=0, carry_state=True,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=CSVLogger(save_dir=tmp_path), limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=callbacks, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, dm)
    return trainer, model


def sections(trainer: L.Trainer) -> list[tuple[str, list[str]]]:
    """The ``samples.md`` of the run: (header, texts) per generation, in order."""
    text = (Path(trainer.log_dir) / "samples.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)[1:]  # header, body, header, body...
    headers, bodies = parts[0::2], parts[1::2]
    return [
        (h, re.findall(r"```\n(.*?)\n```", body, flags=re.DOTALL))
        for h, body in zip(headers, bodies, strict=True)
    ]


def test_every_n_steps_writes_samples_and_prints_the_final_ones(tmp_path, corpus_file, capsys):
    callback = SampleGeneration(PROMPTS, every_n_steps=5, every_n_epochs=None, generation=GREEDY)
    trainer, model = fit(tmp_path, corpus_file, [callback], max_steps=12)

    assert Path(trainer.log_dir) == tmp_path / "lightning_logs" / "version_0"
    found = sections(trainer)
    assert [h for h, _ in found] == ["step 5", "step 10", "final, step 12"]
    for _, texts in found:
        assert len(texts) == len(PROMPTS)
        assert all(t.startswith(p) and len(t) > len(p) for t, p in zip(texts, PROMPTS, strict=True))
    # The final samples are the trained model's own continuations.
    assert found[-1][1] == callback.last == model.generate(PROMPTS, GREEDY)

    out = capsys.readouterr().out
    assert "sample 1" in out and "sample 2" in out
    assert PROMPTS[1] in out and callback.last[1].splitlines()[0][:30] in out


def test_no_print_at_end(tmp_path, corpus_file, capsys):
    callback = SampleGeneration(
        PROMPTS, every_n_steps=3, every_n_epochs=None, generation=GREEDY, print_at_end=False
    )
    trainer, _ = fit(tmp_path, corpus_file, [callback], max_steps=4)
    assert [h for h, _ in sections(trainer)] == ["step 3"]
    assert "sample 1" not in capsys.readouterr().out


def test_every_n_epochs(tmp_path, corpus_file):
    callback = SampleGeneration(PROMPTS, every_n_epochs=2, generation=GREEDY, print_at_end=False)
    trainer, _ = fit(tmp_path, corpus_file, [callback], max_epochs=4, limit_train_batches=3)
    assert [h for h, _ in sections(trainer)] == ["epoch 1, step 6", "epoch 3, step 12"]


def test_gradient_accumulation_does_not_generate_a_step_twice(tmp_path, corpus_file):
    # Two batches per optimizer step: global_step stays at 2 for batches 4 and 5, at 4 for batches 8 and 9.
    callback = SampleGeneration(
        PROMPTS, every_n_steps=2, every_n_epochs=None, generation=GREEDY, print_at_end=False
    )
    trainer, _ = fit(tmp_path, corpus_file, [callback], max_steps=5, accumulate_grad_batches=2)
    assert [h for h, _ in sections(trainer)] == ["step 2", "step 4"]


class ModeProbe(L.Callback):
    """Listed after SampleGeneration: the module's mode right after it generated."""

    def __init__(self):
        self.modes: dict[int, bool] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.modes[trainer.global_step] = pl_module.training


def test_training_continues_in_train_mode_and_unchanged(tmp_path, corpus_file):
    sampling = GenerationConfig(strategy="sample", max_new_tokens=12, seed=1)
    probe = ModeProbe()
    callback = SampleGeneration(PROMPTS, every_n_steps=2, every_n_epochs=None, generation=sampling)
    trainer, with_samples = fit(tmp_path / "a", corpus_file, [callback, probe], max_steps=6)
    # training ends at step 6, whose samples were just written: they are the final ones, not written twice
    assert [h for h, _ in sections(trainer)] == ["step 2", "step 4", "step 6"]
    assert callback.last == sections(trainer)[-1][1]
    assert probe.modes[2] is True and probe.modes[4] is True and all(probe.modes.values())
    assert with_samples.training

    _, without = fit(tmp_path / "b", corpus_file, [], max_steps=6)
    for (name, a), (_, b) in zip(
        with_samples.state_dict().items(), without.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name  # generating consumed no training randomness and changed no state


def test_a_module_without_generate_gets_a_clear_error(tmp_path):
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[SampleGeneration(every_n_steps=1, every_n_epochs=None)],
    )  # fmt: skip
    with pytest.raises(InputError, match=r"SampleGeneration: BoringModel has no generate\(\) method"):
        trainer.fit(BoringModel())


@pytest.mark.parametrize(
    "kwargs", [{"every_n_steps": 0}, {"every_n_steps": -2}, {"every_n_epochs": 0}, {"every_n_epochs": -1}]
)
def test_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(InputError, match=rf"SampleGeneration\.{name}: expected a positive integer or null"):
        SampleGeneration(["x"], **kwargs)

"""GradientClipping: the logged norm is the norm before clipping; the optimizer sees clipped gradients."""

import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.precision import MixedPrecision

from lightning_seq.callbacks import GradientClipping
from lightning_seq.data import TextDataModule
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM


def _grads(optimizer) -> list[torch.Tensor]:
    """Copies of the optimizer's gradients, in its parameter order."""
    return [
        p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None
    ]


def _norm(grads: list[torch.Tensor]) -> float:
    return torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()


class BeforeClipping(L.Callback):
    """Listed before GradientClipping: the gradients exactly as backward (and unscaling) left them."""

    def __init__(self):
        self.grads: list[list[torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append(_grads(optimizer))

    @property
    def norms(self) -> list[float]:
        return [_norm(g) for g in self.grads]


class SeenByOptimizer(L.Callback):
    """The gradients that ``optimizer.step`` used, read by a step post-hook on the torch optimizer.

    Not a pre-hook: Lightning runs the closure (backward, the hooks, the clipping) inside ``step``. The
    gradients are still there after the update (Adam does not modify them; zero_grad comes next step).
    """

    def __init__(self):
        self.grads: list[list[torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        trainer.optimizers[0].register_step_post_hook(
            lambda opt, args, kwargs: self.grads.append(_grads(opt))
        )

    @property
    def norms(self) -> list[float]:
        return [_norm(g) for g in self.grads]


def fit(
    tmp_path, corpus_file, callbacks, max_steps=4, impl="fused", log_every_n_steps=1, **trainer_kwargs
) -> L.Trainer:
    """Train a tiny LSTM LM for a few steps (seeded), logging every step (by default) to a CSV file."""
    L.seed_everything(0)
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    net = RNNLM.from_preset("nano", dm.vocab_size, impl=impl)
    model = LanguageModel(net, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), warmup_steps=0)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=log_every_n_steps, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
        **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(model, dm)
    return trainer


def logged(trainer: L.Trainer, name: str) -> list[float]:
    """Every value of a step metric, in step order, read back from the CSV logger's file."""
    with open(f"{trainer.logger.log_dir}/metrics.csv", newline="") as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


def test_logs_the_norm_before_clipping_and_the_optimizer_sees_clipped_gradients(tmp_path, corpus_file):
    clip = 0.1  # the tiny LM's gradient norms are about 0.3 at the start: every step is clipped
    before, seen = BeforeClipping(), SeenByOptimizer()
    trainer = fit(tmp_path, corpus_file, [before, GradientClipping(clip_val=clip), seen], max_steps=4)

    norms = logged(trainer, "train/grad_norm")
    assert len(norms) == len(before.norms) == len(seen.norms) == 4
    assert norms == pytest.approx(before.norms, rel=1e-5)
    assert min(before.norms) > 2 * clip  # so the test clips for real
    for pre, grads_pre, grads_post in zip(before.norms, before.grads, seen.grads, strict=True):
        post = _norm(grads_post)
        assert post <= clip * (1 + 1e-5)
        assert post == pytest.approx(clip, rel=1e-4)  # rescaled to the threshold, not zeroed
        for g, h in zip(grads_pre, grads_post, strict=True):  # one common factor: directions kept
            torch.testing.assert_close(h, g * (post / pre), rtol=1e-4, atol=1e-9)


# The tiny LM's gradient norms grow from about 0.29 to 0.46 over the first 6 steps: 0.37 splits them.
@pytest.mark.parametrize(("clip", "expected"), [(1e-6, [1.0, 1.0]), (1e9, [0.0, 0.0]), (0.37, None)])
def test_clipped_fraction_is_the_share_of_steps_above_the_threshold(tmp_path, corpus_file, clip, expected):
    before = BeforeClipping()
    trainer = fit(
        tmp_path, corpus_file, [before, GradientClipping(clip_val=clip)], max_steps=6, log_every_n_steps=3
    )
    shares = logged(trainer, "train/grad_clipped")  # written at steps 3 and 6: each the share of 3 steps
    above = [n > clip for n in before.norms]
    assert shares == pytest.approx([sum(above[:3]) / 3, sum(above[3:]) / 3])
    assert len(logged(trainer, "train/grad_norm")) == 2
    assert logged(trainer, "train/grad_norm") == pytest.approx([before.norms[2], before.norms[5]], rel=1e-5)
    if expected is not None:
        assert shares == expected
    else:
        assert sum(shares) not in (0.0, 2.0), before.norms  # some steps clipped, some not


def test_value_clipping_clamps_every_element(tmp_path, corpus_file):
    clip = 1e-3
    before, seen = BeforeClipping(), SeenByOptimizer()
    fit(
        tmp_path, corpus_file, [before, GradientClipping(clip_val=clip, algorithm="value"), seen], max_steps=3
    )
    assert len(seen.grads) == 3
    for grads_pre, grads_post in zip(before.grads, seen.grads, strict=True):
        assert max(g.abs().max().item() for g in grads_pre) > clip  # something to clamp
        for g, h in zip(grads_pre, grads_post, strict=True):
            torch.testing.assert_close(h, g.clamp(-clip, clip), rtol=0, atol=0)


def test_monitor_only_does_not_change_gradients(tmp_path, corpus_file):
    before, seen = BeforeClipping(), SeenByOptimizer()
    trainer = fit(tmp_path, corpus_file, [before, GradientClipping(clip_val=None), seen], max_steps=2)
    assert logged(trainer, "train/grad_norm") == pytest.approx(before.norms, rel=1e-5)
    assert "train/grad_clipped" not in trainer.callback_metrics
    for g_pre, g_post in zip(before.grads, seen.grads, strict=True):
        for g, h in zip(g_pre, g_post, strict=True):
            assert torch.equal(g, h)


def test_bf16_mixed_logs_a_finite_norm_and_clips(tmp_path, corpus_file):
    clip = 0.1
    before, seen = BeforeClipping(), SeenByOptimizer()
    trainer = fit(
        tmp_path,
        corpus_file,
        [before, GradientClipping(clip_val=clip), seen],
        max_steps=3,
        precision="bf16-mixed",
    )
    assert isinstance(trainer.precision_plugin, MixedPrecision) and trainer.precision_plugin.scaler is None
    norms = logged(trainer, "train/grad_norm")
    assert len(norms) == 3 and all(math.isfinite(n) and n > clip for n in norms)
    assert norms == pytest.approx(before.norms, rel=1e-5)
    assert all(n <= clip * (1 + 1e-5) for n in seen.norms)


def test_fp16_with_a_grad_scaler_logs_the_unscaled_norm(tmp_path, corpus_file):
    # Trainer(precision="16-mixed", accelerator="cpu") silently becomes bf16-mixed in Lightning 2.6, so the
    # fp16 plugin with its GradScaler is passed explicitly. The fused LSTM has no fp16 CPU kernel (oneDNN
    # fails), so the net runs its explicit step-by-step cells, which give the same function.
    clip = 0.1
    reference = BeforeClipping()
    fit(
        tmp_path / "fp32",
        corpus_file,
        [reference, GradientClipping(clip_val=clip)],
        max_steps=3,
        impl="explicit",
    )

    before, seen = BeforeClipping(), SeenByOptimizer()
    trainer = fit(
        tmp_path / "fp16", corpus_file, [before, GradientClipping(clip_val=clip), seen], max_steps=3,
        impl="explicit", plugins=[MixedPrecision("16-mixed", "cpu")],
    )  # fmt: skip
    scaler = trainer.precision_plugin.scaler
    assert scaler is not None and scaler.get_scale() >= 2.0**15  # the loss was scaled by a large factor
    norms = logged(trainer, "train/grad_norm")
    assert len(norms) == len(seen.norms) == 3  # no step skipped for overflow
    assert norms == pytest.approx(before.norms, rel=1e-5)
    assert norms == pytest.approx(reference.norms, rel=1e-2)  # the fp32 norm, not ~65536 times it
    assert all(n <= clip * (1 + 1e-3) for n in seen.norms)


def test_trainer_clipping_and_callback_clipping_are_exclusive(tmp_path, corpus_file):
    with pytest.raises(InputError, match="gradient_clip_val"):
        fit(
            tmp_path / "both",
            corpus_file,
            [GradientClipping(clip_val=0.5)],
            max_steps=1,
            gradient_clip_val=1.0,
        )

    # Monitoring only beside the Trainer's clipping: the callback logs the norm before Lightning clips.
    clip = 0.1
    before, seen = BeforeClipping(), SeenByOptimizer()
    trainer = fit(
        tmp_path / "monitor", corpus_file, [before, GradientClipping(clip_val=None), seen], max_steps=2,
        gradient_clip_val=clip,
    )  # fmt: skip
    assert logged(trainer, "train/grad_norm") == pytest.approx(before.norms, rel=1e-5)
    assert min(before.norms) > clip
    assert all(n <= clip * (1 + 1e-5) for n in seen.norms)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algorithm": "foo"}, r"GradientClipping\.algorithm.*'norm' or 'value'.*'foo'"),
        ({"clip_val": 0}, r"GradientClipping\.clip_val: expected a positive number"),
        ({"clip_val": -1.0}, r"GradientClipping\.clip_val"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(InputError, match=match):
        GradientClipping(**kwargs)

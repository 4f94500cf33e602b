"""The parts of fault tolerance one at a time: the NaN/Inf guard, atomic checkpoint files, loading
that refuses code, data loaders that resume mid-epoch, and Slurm's warning once a command is done."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_seq.callbacks import NonFiniteLoss
from lightning_seq.checkpointing import AtomicCheckpointIO
from lightning_seq.data import TextDataModule
from lightning_seq.data.resumable import ResumableLoader, ResumableSampler
from lightning_seq.errors import InputError
from lightning_seq.modules import LanguageModel
from lightning_seq.nets import RNNLM


class NaNAt(LanguageModel):
    """A language model whose training loss is NaN at the given global steps (a user's hook override)."""

    def __init__(self, *args, bad_steps: tuple[int, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.bad_steps = bad_steps

    def compute_loss(self, logits, targets):
        nll_sum, count = super().compute_loss(logits, targets)
        if self.training and self.trainer.global_step in self.bad_steps:
            nll_sum = nll_sum * float("nan")
        return nll_sum, count


class Weights(L.Callback):
    """The weights after each training step, by global step."""

    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.after[trainer.global_step] = {k: v.clone() for k, v in pl_module.state_dict().items()}


def _fit(tmp_path, corpus_file, guard: NonFiniteLoss, bad_steps, steps=8):
    dm = TextDataModule(source=str(corpus_file), batch_size=8, block_size=32)
    net = RNNLM.from_preset("nano", dm.vocab_size)
    model = NaNAt(net, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), bad_steps=bad_steps)
    weights = Weights()
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
        callbacks=[guard, weights, ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=2, save_last=True)],
    )  # fmt: skip
    return trainer, model, dm, weights


def test_a_nan_loss_stops_the_run_before_the_weights_change_and_names_the_step_and_checkpoint(
    tmp_path, corpus_file
):
    trainer, model, dm, weights = _fit(tmp_path, corpus_file, NonFiniteLoss(), bad_steps=(5,))
    with pytest.raises(InputError, match=r"training stopped at step 5: the loss is NaN") as err:
        trainer.fit(model, dm)
    assert str(tmp_path / "ckpt" / "last.ckpt") in str(err.value)
    assert sorted(weights.after) == [1, 2, 3, 4, 5]
    for name, value in model.state_dict().items():  # the bad step never reached the weights
        assert torch.equal(value, weights.after[5][name]), name
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 4 and all(v.isfinite().all() for v in saved["state_dict"].values())


def test_skip_drops_the_update_of_each_bad_step_and_trains_on(tmp_path, corpus_file):
    guard = NonFiniteLoss(action="skip")
    trainer, model, dm, weights = _fit(tmp_path, corpus_file, guard, bad_steps=(3, 4))
    trainer.fit(model, dm)
    assert trainer.global_step == 8
    for name, value in weights.after[3].items():
        assert torch.equal(weights.after[4][name], value) and torch.equal(weights.after[5][name], value)
        assert value.isfinite().all()
    assert any(not torch.equal(weights.after[6][k], v) for k, v in weights.after[5].items())


def test_skip_stops_after_too_many_bad_steps_in_a_row(tmp_path, corpus_file):
    trainer, model, dm, _ = _fit(
        tmp_path, corpus_file, NonFiniteLoss("skip", max_skips=2), bad_steps=(3, 4, 5)
    )
    with pytest.raises(InputError, match=r"step 5: .*\(2 skipped in a row before it\)"):
        trainer.fit(model, dm)


# ------------------------------------------------------------------------------ atomic checkpoints
SAVER = """
import sys, torch
from lightning_seq.checkpointing import AtomicCheckpointIO
io = AtomicCheckpointIO()
big = {"weights": torch.ones(256 * 2**20 // 4, dtype=torch.float32)}  # 256 MiB: writes take a while
io.save_checkpoint({"generation": 0, **big}, sys.argv[1])
print("saved", flush=True)
for generation in range(1, 1000):
    io.save_checkpoint({"generation": generation, **big}, sys.argv[1])
"""


def _kill_during_saves(path: Path) -> int:
    """Let a process save the same checkpoint over and over; SIGKILL it in the middle of a write.

    Returns the size of a whole checkpoint file."""
    script = textwrap.dedent(SAVER)
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"saved"
    full = path.stat().st_size
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait until a write is under way, then kill at once
            if any(_size(p) < full for p in path.parent.glob(".*.tmp")):
                break
        else:
            raise AssertionError("no write seen in progress")
    finally:
        proc.kill()
        proc.wait()
    return full


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed in the meantime
        return 1 << 62


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path):
    path = tmp_path / "last.ckpt"
    full = _kill_during_saves(path)
    assert path.stat().st_size == full
    assert torch.load(path, weights_only=True)["weights"].numel() == 256 * 2**20 // 4
    assert list(tmp_path.glob(".*.tmp"))  # the cut write, cleared by the next save
    AtomicCheckpointIO().save_checkpoint({"generation": -1}, path)
    assert not list(tmp_path.glob(".*.tmp")) and torch.load(path, weights_only=True) == {"generation": -1}


def test_a_checkpoint_holding_python_objects_is_refused_with_a_message(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "extra": Path("x")}, path)
    with pytest.raises(InputError, match=r"foreign.ckpt.*could run code.*weights_only=False"):
        AtomicCheckpointIO().load_checkpoint(path)
    assert AtomicCheckpointIO().load_checkpoint(path, weights_only=False)["extra"] == Path("x")


# --------------------------------------------------------------------------------- resumable data
def test_loader_resumes_mid_epoch_with_the_batches_it_had_not_handed_out():
    data = list(range(40))
    first = ResumableLoader(data, batch_size=4, sampler=ResumableSampler(data, shuffle=True, seed=5), seed=5)
    first.sampler.set_epoch(2)
    epoch = [b.tolist() for b in first]
    it = iter(first)
    taken = [next(it).tolist() for _ in range(3)]
    assert taken == epoch[:3]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3}

    again = ResumableLoader(data, batch_size=4, sampler=ResumableSampler(data, shuffle=True, seed=5), seed=5)
    again.sampler.set_epoch(2)
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == epoch[3:]
    assert [b.tolist() for b in again] == epoch  # only once: the next pass is whole
    again.load_state_dict(state)
    again.sampler.set_epoch(3)  # the checkpoint was from the end of epoch 2: epoch 3 starts afresh
    assert len(list(again)) == 10


def test_two_ranks_of_half_batches_see_the_batches_of_one_rank():
    data = list(range(48))
    one = [
        set(b.tolist()) for b in ResumableLoader(data, batch_size=8, sampler=ResumableSampler(data, seed=1))
    ]
    ranks = [
        [
            b.tolist()
            for b in ResumableLoader(data, batch_size=4, sampler=ResumableSampler(data, True, 1, r, 2))
        ]
        for r in (0, 1)
    ]
    assert [set(a) | set(b) for a, b in zip(*ranks, strict=True)] == one


def test_a_slurm_warning_during_interpreter_shutdown_does_not_kill_a_finished_command(tmp_path):
    """Python resets handled signals to their default action before it tears its modules down (where
    gloo and W&B can take seconds); Slurm's SIGUSR1 arriving then killed finished jobs (status 138)."""
    script = tmp_path / "late_warning.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal, time
            from lightning_seq.cli import main

            class SlowTeardown:  # a module global: torn down after Python has reset its signal handlers
                def __del__(self, kill=os.kill, pid=os.getpid(), usr1=signal.SIGUSR1, sleep=time.sleep):
                    kill(pid, usr1)  # the module's globals may be gone by now: hold what it needs
                    sleep(0.2)

            teardown = SlowTeardown()
            try:
                main(["submit", "--help"])
            except SystemExit:
                pass
            print("command done")
            """
        )
    )
    env = {**os.environ, "SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train"}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert "command done" in result.stdout, result.stderr
    assert result.returncode == 0, (
        f"died of {signal.Signals(-result.returncode).name}" if result.returncode < 0 else result.stderr
    )

"""``ModelCheckpoint``: ``last.ckpt`` holds the last step of the run, whatever the validations did."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_seq.callbacks import ModelCheckpoint
from tests.trainers import quiet_trainer


class _Worsening(L.LightningModule):
    """A linear model whose ``val/score`` only gets worse: the first validation is the best."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", -float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(batches: int) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(batches * 2, 4)), batch_size=2)


def _fit(tmp_path, checkpoint_class, **trainer_args) -> ModelCheckpoint:
    checkpoint = checkpoint_class(
        dirpath=tmp_path / "ckpt", monitor="val/score", mode="max", filename="best", save_last=True
    )
    trainer = quiet_trainer(tmp_path, callbacks=[checkpoint], enable_checkpointing=True, **trainer_args)
    trainer.fit(_Worsening(), _loader(10), _loader(1))
    return checkpoint


def _step(path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


@pytest.mark.parametrize(
    "trainer_args, last_step",
    [
        (dict(max_steps=7, val_check_interval=3), 7),  # ends between two validations
        (dict(max_steps=6, val_check_interval=3), 6),  # ends on a validation that did not improve
        (dict(max_epochs=3, check_val_every_n_epoch=2), 30),  # by epochs, the last one unvalidated
    ],
)
def test_last_ckpt_is_the_last_step_and_best_stays_the_best(tmp_path, trainer_args, last_step):
    checkpoint = _fit(tmp_path, ModelCheckpoint, **trainer_args)
    first_validation = 3 if "max_steps" in trainer_args else 20
    assert _step(tmp_path / "ckpt" / "last.ckpt") == last_step
    assert _step(tmp_path / "ckpt" / "best.ckpt") == first_validation
    assert checkpoint.best_model_score == -first_validation


def test_lightnings_own_last_ckpt_stays_at_the_last_improvement(tmp_path):
    """What the subclass is for: Lightning 2.6 leaves the best step in ``last.ckpt``."""
    _fit(tmp_path, LightningModelCheckpoint, max_steps=6, val_check_interval=3)
    assert _step(tmp_path / "ckpt" / "last.ckpt") == 3


def test_a_resumed_last_ckpt_ends_where_an_uninterrupted_run_ends(tmp_path):
    """The final ``last.ckpt`` is saved at the end of the last epoch, so it resumes as a finished run."""
    _fit(tmp_path / "a", ModelCheckpoint, max_steps=7, val_check_interval=3)
    trainer = quiet_trainer(tmp_path / "b", max_steps=7, val_check_interval=3)
    model = _Worsening()
    trainer.fit(model, _loader(10), _loader(1), ckpt_path=tmp_path / "a" / "ckpt" / "last.ckpt")
    assert trainer.global_step == 7
    saved = torch.load(tmp_path / "a" / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert torch.equal(model.layer.weight, saved["layer.weight"])  # no step taken after it

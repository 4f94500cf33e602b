"""The module base: constructor preamble, several optimizers, eval toggling, the sample() contract."""

from functools import partial

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_seq.errors import InputError
from lightning_seq.modules import GenerativeModule, NetModule, Optimization
from lightning_seq.modules._optim import PlateauLR


class Regression(NetModule):
    """A module that states only its own argument."""

    def __init__(self, net: nn.Module, scale: float = 2.0, min_lr_ratio: float = 0.5, **kwargs):
        super().__init__(net, min_lr_ratio=min_lr_ratio, **kwargs)
        self.scale = scale

    def _step(self, batch, stage: str) -> dict:
        x, y = batch
        return {"loss": (self.net(x) * self.scale - y).pow(2).mean()}


def test_a_subclass_states_only_its_own_arguments_and_the_base_keeps_the_rest():
    model = Regression(nn.Linear(3, 1), scale=3.0, warmup_steps=7, optimizer=torch.optim.SGD)
    hp = dict(model.hparams)
    expected = {"scale": 3.0, "min_lr_ratio": 0.5, "warmup_steps": 7, "lr_schedule": "cosine"}
    assert hp == {**expected, "plateau_factor": 0.25, "compile": False}
    assert model.optimizer.factory is torch.optim.SGD and isinstance(model.net, nn.Linear)
    with pytest.raises(InputError, match="lr_schedule"):
        Regression(nn.Linear(3, 1), lr_schedule="linear")

    # the command line sees the base's arguments through **kwargs, with the subclass's own default
    parser = ArgumentParser()
    parser.add_class_arguments(Regression, "model")
    config = parser.parse_args(["--model.net=torch.nn.Identity", "--model.warmup_steps=5"])
    assert (config.model.warmup_steps, config.model.min_lr_ratio, config.model.compile) == (5, 0.5, False)
    assert config.model.scale == 2.0 and "optimizer" in config.model


def test_evaluating_switches_to_eval_without_gradients_and_restores_the_mode():
    model = Regression(nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)))
    model.train()
    with model.evaluating():
        assert not model.training and not model.net[1].training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError), model.evaluating():
        raise RuntimeError("inside")
    assert model.training
    model.eval()
    with model.evaluating():
        pass
    assert not model.training


class TwoOptimizers(NetModule):
    """Manual optimisation of two parts, each with its own optimizer and schedule."""

    def __init__(self, net: nn.Module, **kwargs):
        super().__init__(net, **kwargs)
        self.automatic_optimization = False

    def optimizations(self) -> dict[str, Optimization]:
        return {
            "first": Optimization(self.optimizer, self.net[0], warmup_steps=4, lr_schedule="constant"),
            "second": Optimization(self.optimizer, self.net[1], lr_schedule="cosine", min_lr_ratio=0.0),
        }

    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        for name in ("first", "second"):
            optimizer = self.named_optimizer(name)
            loss = (self.net(x) - y).pow(2).mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            self.named_scheduler(name).step()


def test_several_named_optimizers_each_update_their_part_on_their_own_schedule(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    model = TwoOptimizers(net, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    data = DataLoader(TensorDataset(torch.randn(40, 4), torch.randn(40, 1)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    first = [p.clone() for p in net[0].parameters()]
    trainer.fit(model, data)
    first_opt, second_opt = (model.named_optimizer(n).optimizer for n in ("first", "second"))
    owned = [{id(p) for g in o.param_groups for p in g["params"]} for o in (first_opt, second_opt)]
    assert owned == [{id(p) for p in net[0].parameters()}, {id(p) for p in net[1].parameters()}]
    assert all(not torch.equal(a, b) for a, b in zip(first, net[0].parameters(), strict=True))
    # 10 steps each: the first is constant after its 4-step warmup, the second has decayed to 0
    assert first_opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert second_opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="no optimizer 'third'; it has first, second"):
        model.named_optimizer("third")


def test_one_optimizer_by_default_over_every_parameter():
    model = Regression(nn.Linear(3, 1), warmup_steps=2)
    model.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    setup = model.configure_optimizers()
    assert isinstance(setup, dict) and setup["lr_scheduler"]["interval"] == "step"
    assert sum(len(g["params"]) for g in setup["optimizer"].param_groups) == 2


def test_a_part_trained_at_its_own_share_of_the_learning_rate_follows_the_same_schedule():
    from lightning_seq.modules._optim import configure_optimization

    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    sgd = partial(torch.optim.SGD, lr=0.1, weight_decay=0.01)
    setup = configure_optimization(net, sgd, 10, 4, "cosine", 0.1, lr_scales={"0": 0.25})
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    # the others first, as without scales (weights, then biases without decay), then the scaled part's
    groups = [(g["params"], g["weight_decay"], g["initial_lr"]) for g in optimizer.param_groups]
    groups = [([id(p) for p in params], decay, lr) for params, decay, lr in groups]
    assert groups == [
        ([id(net[1].weight)], 0.01, 0.1), ([id(net[1].bias)], 0.0, 0.1),
        ([id(net[0].weight)], 0.01, 0.025), ([id(net[0].bias)], 0.0, 0.025),
    ]  # fmt: skip
    for _ in range(6):  # past the warmup: both decay by the same factor
        optimizer.step()
        scheduler.step()
    rates = [g["lr"] for g in optimizer.param_groups]
    assert rates[2] == pytest.approx(0.25 * rates[0]) and 0.01 < rates[0] < 0.1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"lr": -1.0},
            "model.init_args.optimizer.init_args.lr: torch.optim.AdamW rejects it (Invalid learning",
        ),
        ({"lr": float("nan")}, "model.init_args.optimizer.init_args.lr: torch.optim.AdamW rejects it"),
        ({"betas": (1.5, 0.999)}, "model.init_args.optimizer.init_args.betas: torch.optim.AdamW rejects it"),
        ({"eps": -1.0}, "model.init_args.optimizer.init_args.eps: torch.optim.AdamW"),
        ({"weight_decay": -0.1}, "model.init_args.optimizer.init_args.weight_decay: torch.optim.AdamW"),
    ],
)
def test_an_optimizer_value_torch_rejects_is_an_input_error_when_the_module_is_built(settings, message):
    with pytest.raises(InputError, match="Fix: give") as raised:
        Regression(nn.Linear(3, 1), optimizer=partial(torch.optim.AdamW, **settings))
    assert str(raised.value).startswith(message)
    with pytest.raises(
        InputError, match=r"^model\.init_args\.optimizer\.init_args\.alpha: the optimizer rejects"
    ):
        Regression(nn.Linear(3, 1), optimizer=lambda params: torch.optim.RMSprop(params, alpha=-1.0))
    Regression(nn.Linear(3, 1), optimizer=partial(torch.optim.AdamW, lr=0.0))  # a learning rate of 0 is fine


class Critic(NetModule):
    """Two optimizers, the second from a constructor argument of its own."""

    def __init__(self, net: nn.Module, critic_optimizer=torch.optim.SGD, **kwargs):
        super().__init__(net, **kwargs)
        self.critic_optimizer = critic_optimizer
        self.automatic_optimization = False

    def optimizations(self) -> dict[str, Optimization]:
        return {
            "net": Optimization(self.optimizer, self.net[0]),
            "critic": Optimization(self.critic_optimizer, self.net[1]),
            "unnamed": Optimization(partial(torch.optim.SGD, lr=-2.0), self.net[1]),
        }


def test_each_of_several_optimizers_is_checked_naming_its_field_or_its_name():
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model = Critic(net, critic_optimizer=partial(torch.optim.SGD, lr=0.1, momentum=-1.0))
    with pytest.raises(InputError, match=r"^model\.init_args\.critic_optimizer\.init_args\.momentum: torch"):
        model.check_optimizations()
    model = Critic(net, critic_optimizer=partial(torch.optim.SGD, lr=0.1))
    with pytest.raises(InputError, match=r"^model: optimizer 'unnamed' \(torch\.optim\.SGD\) rejects lr"):
        model.check_optimizations()


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"min_lr_ratio": float("nan")}, "min_lr_ratio"),
        ({"plateau_factor": 0.0}, "plateau_factor"),
        ({"plateau_factor": 4.0}, "plateau_factor"),
    ],
)
def test_a_schedule_value_out_of_range_names_its_field(settings, field):
    with pytest.raises(InputError, match=rf"^model\.init_args\.{field}: expected .* Fix: give"):
        Regression(nn.Linear(3, 1), **settings)


class Blobs(GenerativeModule):
    """Images of one grey level per class plus noise: enough to check the sample() contract."""

    def __init__(self, net: nn.Module, **kwargs):
        super().__init__(net, **kwargs)
        self.seen_training: bool | None = None

    def _sample(self, n, labels, generator):
        self.seen_training = self.training
        level = torch.zeros(n, device=self.device) if labels is None else labels.float() / 10
        images = level.view(n, 1, 1, 1) + 0.01 * self.noise(n, 1, 4, 4, generator=generator)
        return self.net(images).clamp(0, 1)


def test_sample_is_deterministic_for_a_generator_and_runs_in_eval_mode():
    model = Blobs(nn.Identity(), pixels="unit")
    a = model.sample(6, generator=torch.Generator().manual_seed(1))
    b = model.sample(6, generator=torch.Generator().manual_seed(1))
    c = model.sample(6, generator=torch.Generator().manual_seed(2))
    assert a.shape == (6, 1, 4, 4) and torch.equal(a, b) and not torch.equal(a, c)
    assert model.seen_training is False and model.training and a.device == model.device
    with pytest.raises(InputError, match="not class-conditional"):
        model.sample(2, labels=torch.tensor([0, 1]))
    with pytest.raises(InputError, match="n >= 1"):
        model.sample(0)


def test_a_conditional_model_cycles_through_the_classes_or_takes_the_labels_given():
    model = Blobs(nn.Identity(), pixels="unit", conditional=True, num_classes=3)
    images = model.sample(6, generator=torch.Generator().manual_seed(0))
    levels = images.mean(dim=(1, 2, 3))
    assert torch.allclose(levels, torch.tensor([0.0, 0.1, 0.2, 0.0, 0.1, 0.2]), atol=0.01)
    given = model.sample(2, labels=torch.tensor([2, 2]))
    assert torch.allclose(given.mean(dim=(1, 2, 3)), torch.tensor([0.2, 0.2]), atol=0.01)
    with pytest.raises(InputError, match=r"labels of shape \(2,\) in 0..2"):
        model.sample(2, labels=torch.tensor([0, 3]))
    with pytest.raises(InputError, match="needs the number of classes"):
        Blobs(nn.Identity(), conditional=True)
    with pytest.raises(InputError, match=r"model\.pixels"):
        Blobs(nn.Identity(), pixels="float")
    assert Blobs(nn.Identity(), num_classes=3).num_classes is None  # linked, but not conditional


class BatchRecorder(NetModule):
    """Records the items of every training batch by step."""

    def __init__(self, **kwargs):
        super().__init__(nn.Linear(1, 1), **kwargs)
        self.seen: dict[int, list[int]] = {}

    def _step(self, batch, stage):
        if stage == "train":
            self.seen[self.global_step] = batch["index"].tolist()
        return {"loss": self.net(batch["image"].float().mean().view(1, 1)).sum()}


class Crash(L.Callback):
    """Stops the process's training with an error at step ``step``, like a kill."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def test_a_fit_resumed_mid_epoch_goes_on_with_the_next_batch_when_max_epochs_is_set(tmp_path):
    """With ``max_epochs`` set, the schedule's ``estimated_stepping_batches`` builds the train loader before
    Lightning restores the checkpoint's loops, and Lightning then never applies the saved loader position;
    the base applies it at ``on_train_start``, so the resumed run does not start the epoch over."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from trainers import quiet_trainer

    from lightning_seq.data import ImageDataModule

    def data():  # 6 batches an epoch
        return ImageDataModule(image_size=16, num_train=96, num_val=16, num_test=16, batch_size=16,
                               num_workers=0, cache_dir=str(tmp_path / "cache"))  # fmt: skip

    settings = dict(max_epochs=3, limit_val_batches=0)
    whole = BatchRecorder()
    quiet_trainer(tmp_path / "whole", **settings).fit(whole, data())
    first, rest = BatchRecorder(), BatchRecorder()
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_last=True)
    crashing = quiet_trainer(
        tmp_path / "cut", enable_checkpointing=True, callbacks=[saving, Crash(10)], **settings
    )
    with pytest.raises(RuntimeError, match="crash"):
        crashing.fit(first, data())
    quiet_trainer(tmp_path / "cut", **settings).fit(rest, data(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert min(rest.seen) == 8  # the checkpoint of step 8, in the second epoch
    assert {**first.seen, **rest.seen} == whole.seen


# ------------------------------------------------------------------------------ the plateau schedule
def test_plateau_warms_up_then_cuts_the_rate_after_each_validation_that_does_not_improve():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=20.0)
    schedule = PlateauLR(opt, warmup_steps=2, factor=0.25)

    def lr() -> float:
        return opt.param_groups[0]["lr"]

    seen = [lr()]
    for _ in range(3):
        schedule.step()
        seen.append(lr())
    assert seen == [10.0, 20.0, 20.0, 20.0]  # linear warmup over 2 steps, then the peak
    assert not schedule.observe(5.0) and lr() == 20.0  # the first loss is the best so far
    assert schedule.observe(5.0) and lr() == 5.0  # equal is not better: divided by 4 at once
    assert not schedule.observe(4.0) and lr() == 5.0
    assert schedule.observe(4.5) and lr() == 1.25  # worse than the best (4.0), not than the last
    schedule.step()
    assert lr() == 1.25 and schedule.get_last_lr() == [1.25]

    again = PlateauLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=20.0), warmup_steps=2, factor=0.25)
    again.load_state_dict(schedule.state_dict())  # what a checkpoint keeps: best 4.0, scale 1/16
    again.step()
    assert again.get_last_lr() == [1.25] and again.best == 4.0
    assert not again.observe(3.0) and again.observe(3.5) and again.get_last_lr() == [0.3125]


class LoggedRegression(Regression):
    """Regression that logs ``stage/loss`` (what the plateau schedule follows)."""

    def _step(self, batch, stage: str) -> dict:
        out = super()._step(batch, stage)
        self.log_loss(stage, out["loss"], batch[0].size(0))
        return out


class Rates(L.Callback):
    """The learning rate of every training step and the val/loss of every validation."""

    def __init__(self):
        self.rates, self.losses = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.losses.append(float(trainer.callback_metrics["val/loss"]))


def _regression_data(seed: int) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(200, 4, generator=g), torch.randn(4, 1, generator=g)
    y = x @ w + 0.5 * torch.randn(200, 1, generator=g)
    train = DataLoader(TensorDataset(x[:160], y[:160]), batch_size=8, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(x[160:], y[160:]), batch_size=40)


def test_plateau_schedule_in_training_cuts_after_each_validation_loss_that_is_not_the_best(tmp_path):
    """The rate of every step after a validation is the peak times 1/4 per validation so far whose logged
    val/loss did not improve on the best before it."""
    from trainers import quiet_trainer

    torch.manual_seed(0)
    model = LoggedRegression(
        nn.Linear(4, 1), optimizer=partial(torch.optim.SGD, lr=0.05), warmup_steps=0, lr_schedule="plateau"
    )
    rates = Rates()
    trainer = quiet_trainer(tmp_path, max_steps=200, val_check_interval=10, callbacks=[rates],
                            num_sanity_val_steps=1)  # fmt: skip
    trainer.fit(model, *_regression_data(0))
    best, cuts, expected = float("inf"), 0, []
    for loss in rates.losses:
        cuts += loss >= best
        best = min(best, loss)
        expected.append(0.05 * 0.25**cuts)
    after_each_validation = rates.rates[10::10]  # the steps right after validations 1, 2, ...
    assert after_each_validation == pytest.approx(expected[: len(after_each_validation)])
    assert 1 <= cuts < len(rates.losses)  # the run improved, then stalled at the noise


def test_a_plateau_run_resumed_from_a_checkpoint_ends_as_an_uninterrupted_one(tmp_path):
    """The schedule's best loss and cuts are in the checkpoint of the validation that made them."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from trainers import quiet_trainer

    train, val = _regression_data(1)
    train = DataLoader(TensorDataset(*train.dataset[:80]), batch_size=8)  # 10 steps an epoch, in order

    def run(root, callbacks=(), ckpt_path=None) -> LoggedRegression:
        torch.manual_seed(0)
        model = LoggedRegression(nn.Linear(4, 1), optimizer=partial(torch.optim.SGD, lr=0.05),
                                 warmup_steps=0, lr_schedule="plateau")  # fmt: skip
        trainer = quiet_trainer(root, max_epochs=15, callbacks=list(callbacks),
                                enable_checkpointing=bool(callbacks))  # fmt: skip
        trainer.fit(model, train, val, ckpt_path=ckpt_path)
        return model

    whole = run(tmp_path / "whole")
    saving = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)  # after every validation
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "cut", [saving, Crash(75)])
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 70 and saved["lr_schedulers"][0]["scale"] < 1.0  # cut before the crash
    resumed = run(tmp_path / "cut", ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.lr_schedulers().scale == whole.lr_schedulers().scale < saved["lr_schedulers"][0]["scale"]
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)

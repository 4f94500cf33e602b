"""Captioner: the loss follows its equation over real tokens only, a tiny captioner learns its captions and
finds them by beam search, the caption metrics and grounding give their known answers, and the encoder
trains at its own rate, frozen for a number of epochs or started from a classifier checkpoint."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from trainers import quiet_trainer

from lightning_seq.data.tokenizers import TokenizerConfig, build_tokenizer, special_ids
from lightning_seq.decoding import GenerationConfig
from lightning_seq.errors import InputError
from lightning_seq.modules import Captioner, ImageClassifier
from lightning_seq.modules.captioner import _box_share, _names_scene, grounding
from lightning_seq.nets import ResNet, ShowAttendTell, TransformerCaptioner

CAPTIONS = [
    "a red star above a blue ring",
    "a green circle to the left of a yellow square",
    "a purple cross",
    "an orange triangle below a red circle and a blue star",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(TokenizerConfig(kind="word", vocab_size=None, min_frequency=1), CAPTIONS)


def encode(tokenizer, texts: list[str]) -> torch.Tensor:
    """``[BOS, words..., EOS]`` per text, right-padded: ``(B, T)``."""
    ids = special_ids(tokenizer)
    rows = [[ids["bos"], *tokenizer.encode(t, add_special_tokens=False).ids, ids["eos"]] for t in texts]
    longest = max(len(r) for r in rows)
    return torch.tensor([r + [ids["pad"]] * (longest - len(r)) for r in rows])


def make(tokenizer, net_class=ShowAttendTell, **kwargs) -> Captioner:
    ids = special_ids(tokenizer)
    net = net_class.from_preset("nano", tokenizer.get_vocab_size(), image_size=32, in_channels=3)
    model = Captioner(
        net, pad_id=ids["pad"], bos_id=ids["bos"], eos_id=ids["eos"], warmup_steps=5,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2), lr_schedule="constant", **kwargs,
    )  # fmt: skip
    model.tokenizer = tokenizer
    return model


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_loss_is_cross_entropy_over_real_tokens_plus_the_attention_penalty(tokenizer):
    torch.manual_seed(0)
    model = make(tokenizer, attention_penalty=0.5, label_smoothing=0.0)
    captions = encode(tokenizer, CAPTIONS)  # (4, T + 1)
    logits, attention = model(images(), captions[:, :-1])
    targets = captions[:, 1:]
    loss, ce, penalty = model.compute_loss(logits, targets, attention)
    real = targets != model.pad_id
    expected_ce = F.cross_entropy(logits[real], targets[real])
    coverage = torch.stack([attention[b, real[b]].sum(0) for b in range(4)])  # (4, L): sum over real steps
    expected_penalty = 0.5 * ((1 - coverage) ** 2).sum(1).mean()
    assert torch.allclose(ce, expected_ce, atol=1e-6) and torch.allclose(penalty, expected_penalty, atol=1e-5)
    assert torch.allclose(loss, expected_ce + expected_penalty, atol=1e-5)
    # what follows the EOS is padding: changing it changes nothing
    padded = captions.clone()
    padded[~torch.cat([torch.ones(4, 1, dtype=torch.bool), real], 1)] = 5
    model.eval()
    with torch.no_grad():
        same_logits, same_attention = model(images(), captions[:, :-1])
        a = model.compute_loss(same_logits, targets, same_attention)[0]
        other_logits, other_attention = model(images(), padded[:, :-1])
        b = model.compute_loss(other_logits, targets, other_attention)[0]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("net_class", [ShowAttendTell, TransformerCaptioner])
def test_a_tiny_captioner_learns_four_captions_and_beam_search_finds_them(tokenizer, tmp_path, net_class):
    torch.manual_seed(0)
    model = make(tokenizer, net_class, attention_penalty=0.0, decode_val_batches=0)
    batch = {"images": images(), "captions": encode(tokenizer, CAPTIONS)}
    loader = DataLoader([batch], batch_size=None)
    trainer = quiet_trainer(tmp_path, max_steps=150, limit_val_batches=0)
    trainer.fit(model, loader)
    assert trainer.callback_metrics["train/loss"].item() < 0.05
    config = GenerationConfig(strategy="beam", num_beams=3, max_new_tokens=16)
    assert model.caption(images(), config) == CAPTIONS


def test_validation_captions_and_scores_them_against_the_references(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = make(tokenizer)
    train = {"images": images(), "captions": encode(tokenizer, CAPTIONS)}
    scenes = [
        [{"shape": "star", "color": "red", "bbox": [0.3, 0.0, 0.7, 0.4]},
         {"shape": "ring", "color": "blue", "bbox": [0.3, 0.6, 0.7, 1.0]}],
        [{"shape": "circle", "color": "green", "bbox": [0.0, 0.3, 0.4, 0.7]},
         {"shape": "square", "color": "yellow", "bbox": [0.6, 0.3, 1.0, 0.7]}],
        [{"shape": "cross", "color": "purple", "bbox": [0.2, 0.2, 0.8, 0.8]}],
        [{"shape": "triangle", "color": "orange", "bbox": [0.0, 0.6, 0.3, 0.9]},
         {"shape": "circle", "color": "red", "bbox": [0.0, 0.0, 0.3, 0.3]},
         {"shape": "star", "color": "blue", "bbox": [0.6, 0.6, 0.9, 0.9]}],
    ]  # fmt: skip
    val = {**train, "references": [[c, "something else entirely"] for c in CAPTIONS], "objects": scenes}
    trainer = quiet_trainer(
        tmp_path, max_steps=150, limit_val_batches=1, val_check_interval=150, check_val_every_n_epoch=None
    )
    trainer.fit(model, DataLoader([train], batch_size=None), DataLoader([val], batch_size=None))
    metrics = trainer.callback_metrics
    # the captions are learnt: each equals one of its references
    assert metrics["val/bleu4"].item() == pytest.approx(1.0) and metrics["val/scene_acc"].item() == 1.0
    assert metrics["val/cider"].item() > 1.0
    assert 0 < metrics["val/grounding_chance"].item() < 1 and 0 <= metrics["val/grounding"].item() <= 1
    assert "val/ppl" not in metrics  # the Perplexity callback is not here; its inputs are the step's outputs


def test_grounding_is_the_attention_mass_inside_the_named_objects_box():
    grid = (4, 4)
    scene = [
        {"shape": "star", "color": "red", "bbox": [0.0, 0.0, 0.5, 0.5]},  # the top-left 2 x 2 cells
        {"shape": "star", "color": "blue", "bbox": [0.5, 0.5, 1.0, 1.0]},
    ]
    inside_box = _box_share([[0.0, 0.0, 0.5, 0.5]], *grid)
    assert inside_box.view(4, 4)[:2, :2].eq(1).all() and inside_box.sum() == 4
    on_red = inside_box / inside_box.sum()  # all of the attention on the red star
    uniform = torch.full((16,), 1 / 16)
    attention = torch.stack([uniform, uniform, on_red])[None]  # (1, 3, 16): "a red star"
    inside, chance = grounding([["a", "red", "star"]], attention, [scene], grid)
    assert inside == [pytest.approx(1.0)] and chance == [pytest.approx(0.25)]
    # a shape word with no colour before it: both stars' boxes; uniform attention gets the chance share
    inside, chance = grounding([["star"]], uniform.view(1, 1, 16), [scene], grid)
    assert inside == [pytest.approx(0.5)] == chance
    # half a cell covered counts half
    assert _box_share([[0.0, 0.0, 0.125, 0.25]], *grid)[0] == pytest.approx(0.5)


def test_scene_accuracy_wants_every_object_by_colour_and_shape_whatever_the_order():
    scene = [{"shape": "star", "color": "red"}, {"shape": "ring", "color": "blue"}]
    assert _names_scene("a blue ring below a red star", scene)
    assert not _names_scene("a blue star below a red ring", scene)
    assert not _names_scene("a red star", scene)
    assert not _names_scene("a red star above a blue ring and a red star", scene)


def test_the_encoder_trains_at_its_own_share_of_the_learning_rate_or_not_at_all(tokenizer, tmp_path):
    model = make(tokenizer, encoder_lr_scale=0.1)
    model.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    optimizer = model.configure_optimizers()["optimizer"]
    encoder = {id(p) for p in model.net.encoder.parameters()}
    for group in optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        assert ids <= encoder or not ids & encoder
        assert group["initial_lr"] == pytest.approx(1e-3 if ids <= encoder else 1e-2)
    frozen = make(tokenizer, encoder_lr_scale=0.0)
    frozen.trainer = L.Trainer(max_steps=10, logger=False, enable_checkpointing=False)
    optimizer = frozen.configure_optimizers()["optimizer"]
    assert not {id(p) for g in optimizer.param_groups for p in g["params"]} & encoder


def test_an_encoder_frozen_for_the_first_epoch_keeps_its_weights_and_statistics_then_learns(
    tokenizer, tmp_path
):
    torch.manual_seed(0)
    model = make(tokenizer, freeze_encoder_epochs=1, decode_val_batches=0)
    loader = DataLoader([{"images": images(), "captions": encode(tokenizer, CAPTIONS)}] * 3, batch_size=None)
    start = {k: v.clone() for k, v in model.net.encoder.state_dict().items()}
    trainer = quiet_trainer(tmp_path / "one", max_epochs=1, limit_val_batches=0)
    trainer.fit(model, loader)
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    after = model.net.encoder.state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start if "num_batches" not in k)  # BN stats too
    trainer = quiet_trainer(tmp_path / "two", max_epochs=2, limit_val_batches=0)
    trainer.fit(model, loader, ckpt_path=str(tmp_path / "one.ckpt"))
    assert not all(torch.equal(start[k], v) for k, v in model.net.encoder.state_dict().items())


def classifier_checkpoint(folder, widths: tuple[int, int]) -> tuple[str, ImageClassifier]:
    """A checkpoint of a ResNet classifier trained one step, with the net's ``class_path`` config in its
    hyperparameters, as ``lightning fit`` writes it."""
    net_config = {"image_size": 32, "in_channels": 3, "num_classes": 6, "widths": widths, "depths": (1, 1)}
    classifier = ImageClassifier(ResNet(**net_config), classes=list("abcdef"))
    trainer = quiet_trainer(folder, max_steps=1, limit_val_batches=0)
    trainer.fit(classifier, DataLoader([{"image": images(), "label": torch.arange(4)}], batch_size=None))
    path = folder / "classifier.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "lightning_seq.modules.ImageClassifier"
    state["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    state["hyper_parameters"]["net"] = {"class_path": "lightning_seq.nets.ResNet", "init_args": net_config}
    torch.save(state, path)
    return str(path), classifier


def test_the_encoder_starts_from_a_classifier_checkpoint(tokenizer, tmp_path):
    torch.manual_seed(0)
    path, classifier = classifier_checkpoint(tmp_path / "narrow", (8, 16))  # the nano captioner's encoder
    model = make(tokenizer, encoder_checkpoint=path)
    model.load_encoder(path)
    for name, weight in model.net.encoder.state_dict().items():
        assert torch.equal(weight, classifier.net.state_dict()[name]), name
    wide, _ = classifier_checkpoint(tmp_path / "wide", (16, 16))
    with pytest.raises(InputError, match=r"encoder_checkpoint: the net of .*classifier.ckpt.* does not fit"):
        model.load_encoder(wide)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("label_smoothing", 1.0, "model.label_smoothing"),
        ("attention_penalty", -1.0, "model.attention_penalty"),
        ("decode_val_batches", -1, "model.decode_val_batches"),
        ("encoder_lr_scale", -0.5, "model.encoder_lr_scale"),
        ("freeze_encoder_epochs", 1.5, "model.freeze_encoder_epochs"),
    ],
)
def test_bad_settings_get_one_clear_error(tokenizer, setting, value, message):
    with pytest.raises(InputError, match=message):
        make(tokenizer, **{setting: value})


def test_a_net_without_the_captioning_contract_is_refused():
    with pytest.raises(
        InputError, match=r"not a captioning net .*lacks encode, start, decode, encoder, grid"
    ):
        Captioner(torch.nn.Linear(2, 2))

"""Data-to-model links apply only where the DataModule has the size AND the model or its net takes it."""

import textwrap

import pytest
import torch
from clitools import CSV_ONLY, FEW_CAPTIONS, RECIPES, REPO, SMALL_IMAGES, SMOKE, ok, run_dir

from lightning_seq.cli import LightningSeqCLI, check_linked_settings, user_settings
from lightning_seq.errors import InputError

LM = {"net.vocab_size", "pad_id", "carry_state"}
TRANSLATION = {"net.src_vocab_size", "net.tgt_vocab_size", "pad_id", "bos_id", "eos_id"}
LABELLED_TEXT = {"net.vocab_size", "net.num_classes", "pad_id", "classes"}
IMAGES = {"net.num_classes", "net.image_size", "net.in_channels", "classes"}
GENERATIVE = {"net.image_size", "net.in_channels", "pixels"}  # unlabelled: no classes
CAPTIONS = {"net.vocab_size", "net.image_size", "net.in_channels", "pad_id", "bos_id", "eos_id"}
EXPECTED = {
    "char_lstm": LM, "word_gru": LM, "rnn_tanh": LM, "gpt": LM, "linear_gpt": LM,
    "translate": TRANSLATION, "translate_rnn": TRANSLATION,
    "classify": LABELLED_TEXT, "tag": LABELLED_TEXT,
    "swin": IMAGES, "vit": IMAGES, "deit": IMAGES, "resnet_se": IMAGES,
    "vae": GENERATIVE, "vae_conv": GENERATIVE, "pixelcnn": GENERATIVE,
    "dcgan": GENERATIVE, "cgan": GENERATIVE | {"net.num_classes", "num_classes"},
    "ddpm": GENERATIVE, "ddpm_cond": GENERATIVE | {"net.num_classes", "num_classes"},
    "caption": CAPTIONS, "caption_transformer": CAPTIONS,
}  # fmt: skip


def applied(cli: LightningSeqCLI) -> dict[str, object]:
    """The links that applied, as ``net.vocab_size`` / ``pad_id`` -> value."""
    return {
        key.removeprefix("model.init_args.").replace("net.init_args.", "net."): value
        for key, value in cli.applied_links.items()
    }


def test_every_recipe_receives_every_size_it_needs_and_no_other(tmp_path, monkeypatch):
    assert {p.stem for p in RECIPES} == set(EXPECTED)
    monkeypatch.chdir(tmp_path)
    for recipe in RECIPES:
        text = recipe.read_text()
        small = (
            SMALL_IMAGES if "ImageDataModule" in text else FEW_CAPTIONS if "CaptionDataModule" in text else []
        )
        cli = LightningSeqCLI(
            args=["--config", str(recipe), "--config", SMOKE, "--config", CSV_ONLY, *small], run=False
        )
        links = applied(cli)
        assert set(links) == EXPECTED[recipe.stem], recipe.stem
        hparams = cli.model.hparams
        for target, value in links.items():  # what was linked is what the model was built with
            where = hparams["net"]["init_args"] if target.startswith("net.") else hparams
            assert where[target.removeprefix("net.")] == value, (recipe.stem, target)
        if "classes" in links:
            assert links["classes"] == cli.datamodule.classes
            assert links.get("net.num_classes") == len(cli.datamodule.classes)


def test_what_the_user_sets_is_read_from_the_command_line_and_the_recipe_files(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  init_args:\n    net:\n      init_args: {vocab_size: 64, hidden_size: 8}\n")
    args = [
        "fit", "--config", str(recipe), "--model.init_args.pad_id=3", "--model.net.num_layers", "2",
        '--model={"init_args": {"classes": ["a", "b"]}}', "--data.init_args.block_size=8",
    ]  # fmt: skip
    assert user_settings(args) == {
        "model.net.vocab_size": (64, f"in '{recipe}'"),
        "model.net.hidden_size": (8, f"in '{recipe}'"),
        "model.pad_id": (3, "on the command line"),
        "model.net.num_layers": (2, "on the command line"),
        "model.classes": (["a", "b"], "on the command line"),
    }
    later = user_settings(["fit", "--config", str(recipe), "--model.init_args.net.init_args.vocab_size=107"])
    assert later["model.net.vocab_size"] == (107, "on the command line")  # later settings win


def test_a_setting_of_a_linked_size_is_refused_unless_it_equals_the_data():
    links = {"model.init_args.net.init_args.vocab_size": 107, "model.init_args.classes": ("neg", "pos")}
    check_linked_settings(links, {})
    check_linked_settings(links, {"model.net.vocab_size": (107, "on the command line")})
    check_linked_settings(links, {"model.classes": (["neg", "pos"], "in 'r.yaml'")})
    with pytest.raises(InputError) as refused:
        check_linked_settings(links, {"model.net.vocab_size": (100, "in 'r.yaml'")})
    assert str(refused.value) == (
        "model.init_args.net.init_args.vocab_size: set to 100 in 'r.yaml', but the data decides it "
        "(data.vocab_size is 107). Fix: remove that setting; to change it, change the data's tokenizer "
        "(data.init_args.tokenizer)."
    )
    with pytest.raises(InputError, match=r"^model\.init_args\.classes: set to \['pos', 'neg'\]"):
        check_linked_settings(links, {"model.classes": (["pos", "neg"], "on the command line")})


def test_the_cli_builds_the_model_when_a_linked_size_equals_the_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str(REPO / "recipes" / "char_lstm.yaml")
    base = ["--config", recipe, "--config", SMOKE, "--config", CSV_ONLY]
    vocab = LightningSeqCLI(args=base, run=False).datamodule.vocab_size
    cli = LightningSeqCLI(args=[*base, f"--model.init_args.net.init_args.vocab_size={vocab}"], run=False)
    assert cli.model.net.vocab_size == vocab
    with pytest.raises(ValueError, match="set to 5 on the command line, but the data decides it"):  # wrapped
        LightningSeqCLI(args=[*base, "--model.init_args.net.init_args.vocab_size=5"], run=False)


TOY = '''
import torch
from torch import nn
import lightning as L


class PixelNet(nn.Module):
    """A net that takes only what every image DataModule knows: its image size and channels."""

    def __init__(self, image_size: int = 8, in_channels: int = 3):
        super().__init__()
        self.linear = nn.Linear(in_channels * image_size * image_size, 1)

    def forward(self, images):
        return self.linear(images.flatten(1))


class Brightness(L.LightningModule):
    """No classes, no num_classes: it regresses the mean brightness."""

    def __init__(self, net: nn.Module, lr: float = 0.01):
        super().__init__()
        self.save_hyperparameters()  # under the CLI, the net as its class_path config
        self.net = net

    def training_step(self, batch, batch_idx):
        images = batch["image"]
        loss = (self.net(images).squeeze(-1) - images.mean(dim=(1, 2, 3))).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
'''


@pytest.mark.parametrize("labels", ["class", "none"])
def test_a_model_without_classes_trains_on_image_data_and_its_checkpoint_reloads(labels, cli, tmp_path):
    (tmp_path / "brightness.py").write_text(textwrap.dedent(TOY))
    (tmp_path / "recipe.yaml").write_text(
        textwrap.dedent(f"""
        trainer:
          max_steps: 3
          limit_val_batches: 1
          enable_progress_bar: false
          logger: {{class_path: lightning_seq.loggers.CSVLogger, init_args: {{save_dir: runs, name: toy}}}}
        model:
          class_path: brightness.Brightness
          init_args:
            net: {{class_path: brightness.PixelNet}}
        data:
          class_path: lightning_seq.data.ImageDataModule
          init_args: {{num_train: 64, num_val: 16, num_test: 16, batch_size: 16, num_workers: 0,
                       image_size: 16, pixels: unit, labels: {labels}}}
        """)
    )
    env = {"PYTHONPATH": str(tmp_path)}
    ok(cli("fit", "--config", "recipe.yaml", cwd=tmp_path, env=env))
    ckpt = next((run_dir(tmp_path, "toy") / "checkpoints").glob("*.ckpt"))
    hparams = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert set(hparams) == {"_class_path", "_instantiator", "net", "lr"}  # nothing linked that it lacks
    assert hparams["net"]["init_args"] == {"image_size": 16, "in_channels": 3}
    ok(cli("validate", "--config", "recipe.yaml", "--ckpt_path", str(ckpt), cwd=tmp_path, env=env))

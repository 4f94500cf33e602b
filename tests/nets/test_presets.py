"""Named sizes: ``nano`` everywhere, picked in Python or by a recipe, single fields still overridable."""

import inspect

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

import lightning_seq.nets as nets
from lightning_seq.errors import InputError
from lightning_seq.nets import RNNLM, Swin, TransformerClassifier, ViT

PRESET_NETS = [getattr(nets, name) for name in nets.__all__ if getattr(getattr(nets, name), "PRESETS", None)]
SIZES = {"vocab_size": 11, "src_vocab_size": 11, "tgt_vocab_size": 9, "num_classes": 3}


def shapes(net: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}


def test_every_family_has_the_nano_preset_and_a_preset_argument():
    assert len(PRESET_NETS) >= 10
    for cls in PRESET_NETS:
        assert "nano" in cls.PRESETS, cls.__name__
        params = inspect.signature(cls.__init__).parameters
        assert "preset" in params, cls.__name__
        sizes = {k: v for k, v in SIZES.items() if k in params}
        by_argument = cls(**sizes, preset="nano")
        assert shapes(by_argument) == shapes(cls.from_preset("nano", **sizes)), cls.__name__
        assert sum(t.numel() for t in by_argument.parameters()) < 200_000, cls.__name__


def test_a_preset_fills_the_defaults_and_what_is_given_wins():
    net = ViT(preset="nano", depth=3, num_classes=4)
    assert (len(net.blocks), net.pos_embed.shape[-1], net.head.out_features) == (3, 32, 4)
    assert shapes(net) == shapes(ViT.from_preset("nano", depth=3, num_classes=4))
    swin = Swin(preset="nano", depths=[2, 4], heads=[2, 4])  # a list as recipes give it
    assert shapes(swin) == shapes(Swin.from_preset("nano", depths=(2, 4), heads=(2, 4)))
    assert shapes(TransformerClassifier(11, 3, preset="small")) == shapes(
        TransformerClassifier.from_preset("small", 11, 3)
    )
    with pytest.raises(InputError, match=r"preset='huge' is unknown; expected one of nano, tiny, small"):
        ViT(preset="huge")


def test_a_recipe_picks_a_preset_by_name_and_overrides_one_field():
    parser = ArgumentParser()
    parser.add_argument("--net", type=nn.Module)
    recipe = {"class_path": "lightning_seq.nets.RNNLM", "init_args": {"vocab_size": 11, "preset": "nano"}}
    config = parser.parse_args([f"--net={recipe}".replace("'", '"'), "--net.hidden_size=24"])
    net = parser.instantiate(config).net
    assert shapes(net) == shapes(RNNLM.from_preset("nano", 11, hidden_size=24))
    assert net(torch.randint(0, 11, (2, 5)))[0].shape == (2, 5, 11)

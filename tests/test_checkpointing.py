"""Reading checkpoints: one error vocabulary on real bad files, the newest match of a glob, and a module
or its net rebuilt from a real ``lightning fit`` checkpoint alone."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from clitools import CSV_ONLY, REPO, SMOKE, assert_one_error, ok, run_dir, run_python

from lightning_seq.checkpointing import (
    AtomicCheckpointIO,
    checkpoint_class,
    load_module,
    load_net,
    net_class,
    newest_match,
    read_checkpoint,
    remove_leftover_temporaries,
)
from lightning_seq.errors import InputError
from lightning_seq.modules import ImageClassifier, LanguageModel

RESNET_SE = str(REPO / "recipes" / "resnet_se.yaml")
TINY = [  # a few scenes and a ResNet of a few thousand weights: the run takes seconds
    "--data.init_args.num_train=64", "--data.init_args.num_val=32", "--data.init_args.num_test=32",
    "--data.init_args.batch_size=16", "--model.init_args.net.init_args.widths=[4,8,8]",
    "--model.init_args.net.init_args.depths=[1,1,1]",
]  # fmt: skip
FIX = "Fix: give a .ckpt written by `lightning fit`"


@pytest.fixture(scope="module")
def trained(cli, tmp_path_factory) -> tuple[Path, Path]:
    """A two-step run of recipes/resnet_se.yaml with a tiny net: (working folder, last checkpoint)."""
    cwd = tmp_path_factory.mktemp("trained")
    ok(cli("fit", "--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, *TINY,
           "--trainer.max_steps=2", cwd=cwd))  # fmt: skip
    return cwd, run_dir(cwd, "lightning_logs") / "checkpoints" / "last.ckpt"


def write_module(folder: Path, name: str) -> None:
    """A Python module ``name`` in ``folder`` with a class ``Marker``."""
    (folder / f"{name}.py").write_text("class Marker:\n    def __init__(self):\n        self.x = 1\n")


def save_with_marker(checkpoint: dict, path: Path, module: str, monkeypatch) -> None:
    """Save ``checkpoint`` plus an ``extra`` object of ``module.Marker``; afterwards the module is not
    importable in this process (it is off the path and out of ``sys.modules``)."""
    write_module(path.parent, module)
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(path.parent))
        marker = __import__(module).Marker()
        torch.save({**checkpoint, "extra": marker}, path)
    del sys.modules[module]


# ------------------------------------------------------------------------------- the vocabulary
def bad_files(folder: Path, real: Path) -> dict[str, tuple[Path, str]]:
    """Case: (a real bad file, what the error says after ``model.x: '<path>'``)."""
    (folder / "run" / "checkpoints").mkdir(parents=True)
    (folder / "run" / "checkpoints" / "last.ckpt").write_bytes(real.read_bytes())
    data = real.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "empty.ckpt").write_bytes(b"")
    (folder / "notes.ckpt").write_text("epoch 3: val/acc 0.91, looks good\n")
    torch.save([torch.ones(2)], folder / "list.ckpt")
    torch.save({"epoch": 3, "weights": torch.ones(2)}, folder / "weights.ckpt")
    unreadable = r"' is not a readable checkpoint: it is"
    return {
        "missing": (
            folder / "none.ckpt",
            r"no checkpoint at '.*none\.ckpt' \(no such file\)\. Fix: check the",
        ),
        "folder": (
            folder / "run",
            r"'.*run' is a folder, not a checkpoint file\. Fix: give a \.ckpt file, e\.g\. '.*/checkpoints/",
        ),
        "truncated": (
            folder / "truncated.ckpt",
            rf"truncated\.ckpt{unreadable} truncated or corrupt \(\d+ bytes; PytorchStreamReader failed "
            r"reading zip archive.*\)\. Fix: a save or copy was cut short",
        ),
        "empty": (folder / "empty.ckpt", rf"empty\.ckpt{unreadable} empty \(0 bytes\)\. Fix: a save or copy"),
        "text": (
            folder / "notes.ckpt",
            rf"notes\.ckpt{unreadable} a text file \(it starts with b'epoch 3: val'\)\. {FIX}",
        ),
        "not a dict": (
            folder / "list.ckpt",
            rf"list\.ckpt' is not a Lightning checkpoint: it holds a list.*{FIX}",
        ),
        "lacks keys": (
            folder / "weights.ckpt",
            rf"weights\.ckpt' lacks 'state_dict' and 'hyper_parameters' \(it holds epoch, weights\).*{FIX}",
        ),
    }


@pytest.mark.parametrize("weights_only", [True, False])
def test_each_bad_file_gets_one_line_naming_the_field_the_file_and_the_fix(trained, tmp_path, weights_only):
    _, real = trained
    need = ("state_dict", "hyper_parameters")
    for case, (path, message) in bad_files(tmp_path, real).items():
        with pytest.raises(InputError, match=rf"^model\.x: '?.*{message}") as caught:
            read_checkpoint(path, need, field="model.x", weights_only=weights_only)
        assert "\n" not in str(caught.value) and "Fix:" in str(caught.value), case
    good = read_checkpoint(real, need, weights_only=weights_only)
    assert checkpoint_class(good) == "lightning_seq.modules.ImageClassifier"
    assert net_class(good) == "lightning_seq.nets.ResNet"


def test_the_trainers_checkpoint_plugin_reads_through_the_same_vocabulary(trained, tmp_path):
    _, real = trained
    cases = bad_files(tmp_path, real)
    for case in ("truncated", "text", "folder"):
        path, message = cases[case]
        with pytest.raises(InputError, match=rf"^--ckpt_path: '?.*{message}"):
            AtomicCheckpointIO().load_checkpoint(path)
    restored = AtomicCheckpointIO().load_checkpoint(real)  # a full read, as Trainer.fit(ckpt_path=...) does
    assert restored["global_step"] == 2 and "net.head.weight" in restored["state_dict"]


def test_python_objects_are_refused_weights_only_and_need_their_code_else(trained, tmp_path, monkeypatch):
    _, real = trained
    path = tmp_path / "with_object.ckpt"
    save_with_marker(torch.load(real, weights_only=True), path, "ckpt_marker_a", monkeypatch)
    objects = r"'.*with_object\.ckpt' holds Python objects beyond tensors and plain values"
    cli_fix = r"weights_only=False \(`--weights_only false` on the command line\)\.$"
    marker = r"\(an object of ckpt_marker_a\.Marker\), and loading it could run code"
    with pytest.raises(
        InputError, match=rf"^--ckpt_path: checkpoint {objects} {marker}\. Fix: .* with {cli_fix}"
    ):
        read_checkpoint(path)
    python_fix = r"load it in Python with torch\.load\(path, weights_only=False\)"
    with pytest.raises(InputError, match=rf"^model\.teacher: checkpoint {objects}.*{python_fix}"):
        read_checkpoint(path, field="model.teacher")
    missing = r"No module named 'ckpt_marker_a'"
    with pytest.raises(InputError, match=rf"whose code cannot be imported here \({missing}\)\. Fix: install"):
        read_checkpoint(path, weights_only=False)
    monkeypatch.syspath_prepend(str(tmp_path))  # the code is here now: a trusted load works
    loaded = read_checkpoint(path, ("state_dict",), weights_only=False)
    assert type(loaded["extra"]).__name__ == "Marker" and loaded["extra"].x == 1
    del sys.modules["ckpt_marker_a"]


# ------------------------------------------------------------------------------- newest match
def test_newest_match_is_the_file_itself_or_the_most_recently_written_match(tmp_path, monkeypatch):
    written = {}
    for i, (version, age) in enumerate([("version_0", 300), ("version_1", 100), ("version_2", 200)]):
        path = tmp_path / "runs" / version / "checkpoints" / "best.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * (i + 1))
        stamp = 1_700_000_000 - age
        os.utime(path, (stamp, stamp))
        written[version] = path
    (tmp_path / "runs" / "version_1" / "checkpoints" / "other.ckpt").write_bytes(b"y")  # newest, no match

    pattern = tmp_path / "runs" / "version_*" / "checkpoints" / "best.ckpt"
    assert newest_match(pattern, "model.teacher", "train one.") == written["version_1"]
    assert newest_match(str(tmp_path / "runs" / "**" / "best.ckpt"), "f", "x") == written["version_1"]
    monkeypatch.chdir(tmp_path)
    assert newest_match("runs/version_*/checkpoints/best.ckpt", "f", "x").resolve() == written["version_1"]
    assert newest_match(written["version_0"], "f", "x") == written["version_0"]  # a file: itself, if older
    none = r"^model\.teacher: no checkpoint at 'runs/\*/last\.ckpt'\. Fix: train one\.$"
    with pytest.raises(InputError, match=none):
        newest_match("runs/*/last.ckpt", "model.teacher", "train one.")
    newest = r"'runs/version_1/checkpoints/other\.ckpt' \(the newest in it\)"
    with pytest.raises(InputError, match=rf"^f: 'runs' is a folder, not a checkpoint file\. .* {newest}\.$"):
        newest_match("runs", "f", "x")


# ------------------------------------------------------------------------------- rebuilding
def test_a_module_and_its_net_rebuild_from_the_checkpoint_alone_in_a_fresh_process(trained):
    cwd, ckpt = trained
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    torch.save(images, cwd / "images.pt")
    module = load_module(ckpt)
    net = load_net(ckpt)
    assert isinstance(module, ImageClassifier) and not module.training
    assert not net.training and all(not p.requires_grad and p.device.type == "cpu" for p in net.parameters())
    with torch.no_grad():
        here = module(images)
    assert torch.equal(net(images), here)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]  # the averaged (EMA) weights
    assert all(torch.equal(t, saved[f"net.{k}"]) for k, t in net.state_dict().items())

    script = f"""
        import json, sys, torch
        from lightning_seq.checkpointing import load_module, load_net
        torch.set_num_threads(1)  # as in the tests' process, so that sums run in the same order
        images = torch.load("images.pt")
        net = load_net({str(ckpt)!r})
        no_module = not any(name.startswith("lightning_seq.modules") for name in sys.modules)
        with torch.no_grad():
            module = load_module({str(ckpt)!r})(images).tolist()
        print(json.dumps({{"net": net(images).tolist(), "module": module, "no_module": no_module}}))
    """
    there = json.loads(run_python(script, cwd=cwd))
    assert there["no_module"], "load_net imported the LightningModule classes"
    assert torch.equal(torch.tensor(there["net"]), here) and torch.equal(torch.tensor(there["module"]), here)


def test_another_familys_checkpoint_is_refused_naming_both_classes(trained, tmp_path):
    _, ckpt = trained
    with pytest.raises(InputError, match=r"^model\.x: '.*last\.ckpt' is a checkpoint of ImageClassifier "
                       r"\(lightning_seq\.modules\.ImageClassifier\), not of LanguageModel\. Fix: give a "
                       r"checkpoint of a LanguageModel"):  # fmt: skip
        load_module(ckpt, LanguageModel, field="model.x")
    state = torch.load(ckpt, weights_only=True)
    student = ImageClassifier(load_net(ckpt), classes=state["hyper_parameters"]["classes"], teacher=str(ckpt))
    student.setup("fit")  # a teacher of the same family, loaded through load_module
    assert not student.teacher.training and not any(p.requires_grad for p in student.teacher.parameters())

    # as a module built in Python saves it: no class path, no instantiator, no net config
    python_only = ("_class_path", "_instantiator", "net")
    hparams = {k: v for k, v in state["hyper_parameters"].items() if k not in python_only}
    anonymous = {**state, "hyper_parameters": hparams}
    torch.save(anonymous, tmp_path / "python.ckpt")
    with pytest.raises(InputError, match=r"does not say which LightningModule wrote it .*Fix: load it with"):
        load_module(tmp_path / "python.ckpt")
    with pytest.raises(InputError, match=r"cannot rebuild its ImageClassifier .*net.*Fix: ImageClassifier\."
                       r"load_from_checkpoint\(path, net=\.\.\.\)"):  # fmt: skip
        load_module(tmp_path / "python.ckpt", ImageClassifier)
    with pytest.raises(InputError, match=r"python\.ckpt' holds no config of its net \(hyper_parameters\.net"):
        load_net(tmp_path / "python.ckpt")
    foreign = {**state, "hyper_parameters": {**state["hyper_parameters"], "_class_path": "no_such_pkg.Model"}}
    torch.save(foreign, tmp_path / "foreign.ckpt")
    missing = r"No module named 'no_such_pkg'"
    with pytest.raises(
        InputError, match=rf"class no_such_pkg\.Model, which cannot be imported here \({missing}"
    ):
        load_module(tmp_path / "foreign.ckpt")


# ------------------------------------------------------------------------------- the command line
def test_a_bad_ckpt_path_is_one_error_before_any_run_folder(trained, cli, tmp_path):
    _, real = trained
    (tmp_path / "truncated.ckpt").write_bytes(real.read_bytes()[:1000])
    cases = {
        "missing": ("gone/last.ckpt", "error: --ckpt_path: no checkpoint at 'gone/last.ckpt' (no such file)"),
        "truncated": ("truncated.ckpt", "'truncated.ckpt' is not a readable checkpoint: it is truncated"),
    }
    for case, (path, message) in cases.items():
        args = ["fit", "--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, "--ckpt_path", path]
        result = cli(*args, cwd=tmp_path)
        assert_one_error(result, message, case)
        assert not (tmp_path / "runs").exists(), case


def test_weights_only_false_on_the_command_line_is_honoured(trained, cli, tmp_path, monkeypatch):
    _, real = trained
    path = tmp_path / "with_object.ckpt"
    save_with_marker(torch.load(real, weights_only=True), path, "ckpt_marker_b", monkeypatch)
    args = ["validate", "--config", RESNET_SE, "--config", CSV_ONLY, "--config", SMOKE, *TINY[:4],
            "--ckpt_path", str(path)]  # fmt: skip
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    refused = cli(*args, cwd=tmp_path, env=env)
    assert_one_error(refused, "holds Python objects beyond tensors and plain values (an object of "
                     "ckpt_marker_b.Marker)", "weights-only")  # fmt: skip
    assert "`--weights_only false` on the command line" in refused.stderr
    trusted = ok(cli(*args, "--weights_only", "false", cwd=tmp_path, env=env))
    # validated with the checkpoint's own tiny net (the recipe's widths would not fit its weights)
    assert "val/acc" in trusted.stdout


# ------------------------------------------------------------------------------- leftovers of saves
def test_only_temporary_files_of_saves_whose_process_is_gone_are_removed(tmp_path):
    target = tmp_path / "last.ckpt"
    killed = f"""
        import os, sys, torch
        from lightning_seq.checkpointing import AtomicCheckpointIO
        torch.save = lambda obj, f: os._exit(3)  # killed in the middle of writing the temporary file
        AtomicCheckpointIO().save_checkpoint({{"step": 1}}, {str(target)!r})
    """
    assert subprocess.run([sys.executable, "-c", textwrap.dedent(killed)]).returncode == 3
    (dead,) = tmp_path.glob(".last.ckpt.*@*.tmp")  # named with its process id and host
    pid = int(dead.name.split(".")[3].split("@")[0])
    old_format = tmp_path / f".last.ckpt.{pid}.tmp"  # the same dead process, as older versions named it
    old_format.write_bytes(b"x")
    live = tmp_path / f".last.ckpt.{os.getpid()}.tmp"  # a save in progress here
    elsewhere = tmp_path / ".last.ckpt.1@othernode.tmp"  # another host's save: written to a moment ago
    stale = tmp_path / ".best.ckpt.1@othernode.tmp"  # another host's, untouched for two hours
    unrelated = tmp_path / ".notes.tmp"
    for path in (live, elsewhere, stale, unrelated):
        path.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200,) * 2)
    assert sorted(remove_leftover_temporaries(tmp_path)) == sorted([dead, old_format, stale])
    assert live.exists() and elsewhere.exists() and unrelated.exists()

    dead.write_bytes(b"x")  # the next save into the folder clears such files too
    AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert not dead.exists() and live.exists() and torch.load(target, weights_only=True) == {"step": 2}

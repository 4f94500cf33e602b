"""Writing checkpoints that survive a crash, and reading them without running code.

:class:`AtomicCheckpointIO` is the Trainer's checkpoint plugin under the command line. It writes a
checkpoint to a temporary file beside the target, flushes it to disk, then renames it over the
target: a process killed in the middle of a save leaves the previous checkpoint whole, and the
rename is durable. (Lightning's own plugin serialises into memory, writes a temporary file in the
system's temp folder and moves it: where checkpoints live on another filesystem, a cluster's shared
disk, that move is a copy into the target, which a kill cuts short.) The temporary file of a save
that was killed is removed by the next save into that folder (and by the next run of the recipe,
see :mod:`lightning_seq.runs`): :func:`remove_leftover_temporaries` says which ones are leftovers.

Every read goes through :func:`read_checkpoint`, with ``torch.load(weights_only=True)`` by default:
our checkpoints hold only tensors, numbers, strings and containers of them, and such a load cannot
execute code. It has one vocabulary of :class:`~lightning_seq.errors.InputError` messages, each
naming the field (``--ckpt_path``, ``model.teacher``...), the file and the fix: no such file, a
folder, an empty, truncated or corrupt file, a file that is no checkpoint (a text file named
``.ckpt``), one that holds other Python objects (refused with ``weights_only=True``: unpickling them
may run arbitrary code, so load such a file with ``weights_only=False`` only if you trust where it
came from), and one that lacks a key the caller needs.

On top of it: :func:`newest_match` (a file, or the newest file a glob matches), :func:`load_module`
(the LightningModule rebuilt from the checkpoint alone) and :func:`load_net` (its net alone, with no
LightningModule class involved). Both rebuild from the ``class_path`` configs that ``lightning fit``
stores; doing so imports the modules those configs name (as a recipe's ``class_path`` does), and
unpickles nothing. What a checkpoint says about where it came from: :func:`checkpoint_class` and
:func:`net_class` (the model's classes), :func:`recipe_of` (the ``--config`` files of its run).
"""

import glob
import importlib
import os
import pickle
import re
import socket
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from lightning_seq.errors import InputError

# ``ckpt_path`` values that Lightning resolves itself rather than naming a file
_LIGHTNING_WORDS = ("last", "best", "hpc", "registry")
_ZIP, _PICKLE = b"PK\x03\x04", b"\x80"  # how torch.save's zip format and its legacy pickle format start
_WRITTEN_BY_FIT = "give a .ckpt written by `lightning fit` (in runs/<name>/version_<n>/checkpoints/)"
# A save's temporary file: ``.<target>.<pid>@<host>.tmp`` (``.<target>.<pid>.tmp`` from older versions)
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "localhost"
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_-]+))?\.tmp")
STALE_AFTER_S = 3600  # a temporary file of another host's save, unwritten for this long, is a leftover


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save by write-to-temporary, fsync, rename; load through :func:`read_checkpoint`, with
    ``weights_only=True`` by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftover_temporaries(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}@{_HOST}.tmp")
        try:
            with tmp.open("wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_folder(path.parent)  # make the rename itself durable

    def load_checkpoint(
        self, path: _PATH, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        weights_only = True if weights_only is None else weights_only
        if _is_local(path):  # the whole checkpoint is restored: no mmap
            location = map_location or (lambda storage, loc: storage)
            return read_checkpoint(path, weights_only=weights_only, mmap=False, map_location=location)
        try:
            return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError as err:
            raise InputError(_objects_message("--ckpt_path", path, str(err))) from None


def remove_leftover_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files that saves killed midway left in ``folder``; returns them.

    A save writes ``.<name>.<pid>@<host>.tmp`` (``.<name>.<pid>.tmp`` before hosts were named) beside
    its target. Such a file is a leftover when the process that wrote it is gone: its host is this one
    and no process of that id runs here, or (another host, whose processes cannot be seen from here)
    nothing has written to it for ``STALE_AFTER_S`` seconds. A save in progress is never touched.
    """
    removed = []
    for tmp in folder.glob(".*.tmp"):
        found = _TEMPORARY.fullmatch(tmp.name)
        if found is None or not tmp.is_file():
            continue
        pid, host = int(found["pid"]), found["host"] or _HOST
        try:
            gone = not _running(pid) if host == _HOST else time.time() - tmp.stat().st_mtime > STALE_AFTER_S
        except OSError:  # removed meanwhile
            continue
        if gone:
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a process of another user counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def names_a_file(ckpt_path: str | None) -> bool:
    """Whether a ``--ckpt_path`` value names a local file (not None, ``last``, ``best``... or a URL)."""
    if ckpt_path is None or ckpt_path.lower() in ("", "null", "none", *_LIGHTNING_WORDS):
        return False
    return not ckpt_path.startswith("registry:") and "://" not in ckpt_path


def newest_match(pattern: str | Path, field: str, fix: str) -> Path:
    """``pattern`` itself when it is a file, else the most recently written file it matches as a glob.

    Args:
        pattern: a path, or a glob (``runs/resnet_se/version_*/checkpoints/best.ckpt``, ``**`` allowed).
        field: the setting it came from, named in the error (``model.teacher``).
        fix: what the user should do when nothing matches, for the error's ``Fix:`` part.

    Raises:
        InputError: nothing matches (naming ``field``, ``pattern`` and ``fix``), or it is a folder.
    """
    text = os.path.expanduser(str(pattern))
    path = Path(text)
    if path.is_file():
        return path
    if path.is_dir():
        raise InputError(_folder_message(field, path))
    files = [Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file()] if text else []
    if not files:
        raise InputError(f"{field}: no checkpoint at '{pattern}'. Fix: {fix}")
    return max(files, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def read_checkpoint(
    path: str | Path,
    need: Iterable[str] = (),
    *,
    field: str = "--ckpt_path",
    weights_only: bool = True,
    mmap: bool = True,
    map_location: Any = "cpu",
) -> dict:
    """The checkpoint at ``path``, or one clear :class:`InputError` naming ``field``, the file and the fix.

    Args:
        path: a ``.ckpt`` file (``torch.save``'s format).
        need: keys the caller needs, e.g. ``("state_dict", "hyper_parameters")``.
        field: the setting the path came from, named in errors.
        weights_only: refuse objects beyond tensors and plain values (their unpickling may run code).
        mmap: map the file instead of reading it (tensors are read when touched): cheap when only the
            hyperparameters are wanted. Ignored for files in torch's legacy format.
        map_location: where tensors go, as for ``torch.load``.

    Raises:
        InputError: no such file, a folder, an empty, truncated or corrupt file, no checkpoint at all,
            Python objects (with ``weights_only``) or ones whose code is missing, no dict, or a key of
            ``need`` missing.
    """
    path = Path(os.path.expanduser(str(path)))
    where = f"{field}: '{path}'"
    if not path.exists():
        raise InputError(
            f"{field}: no checkpoint at '{path}' (no such file). Fix: check the path; {_WRITTEN_BY_FIT}."
        )
    if path.is_dir():
        raise InputError(_folder_message(field, path))
    try:
        with path.open("rb") as f:
            head = f.read(16)
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"{where} cannot be read ({err.strerror}). Fix: check its permissions.") from None
    if not head:
        raise InputError(f"{where} is not a readable checkpoint: it is empty (0 bytes). {_CUT_SHORT}")
    if not head.startswith((_ZIP, _PICKLE)):
        kind = "a text file" if _is_text(head) else "not a file that torch.save writes"
        raise InputError(
            f"{where} is not a readable checkpoint: it is {kind} (it starts with {head[:12]!r}). "
            f"Fix: {_WRITTEN_BY_FIT}."
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            mmap = mmap and head.startswith(_ZIP)  # torch maps only its zip format
            checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only, mmap=mmap)
    except pickle.UnpicklingError as err:
        if weights_only and str(err).startswith("Weights only load failed"):
            raise InputError(_objects_message(field, path, str(err))) from None
        raise InputError(_corrupt_message(where, size, err)) from None
    except (ImportError, AttributeError) as err:  # weights_only=False: the pickled objects' code is missing
        raise InputError(
            f"{where} holds Python objects whose code cannot be imported here ({_first_line(err)}). Fix: "
            f"install the code that wrote it, or {_WRITTEN_BY_FIT}."
        ) from None
    except Exception as err:  # torch's zip reader, the unpickler: truncated or corrupt
        raise InputError(_corrupt_message(where, size, err)) from None
    if not isinstance(checkpoint, dict):
        raise InputError(
            f"{where} is not a Lightning checkpoint: it holds a {type(checkpoint).__name__}, not the dict "
            f"of state_dict, hyper_parameters... that Lightning saves. Fix: {_WRITTEN_BY_FIT}."
        )
    missing = [key for key in need if key not in checkpoint]
    if missing:
        keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "nothing"
        raise InputError(
            f"{where} lacks {' and '.join(repr(k) for k in missing)} (it holds {keys}), so it was not "
            f"written by `lightning fit`. Fix: {_WRITTEN_BY_FIT}."
        )
    return checkpoint


def checkpoint_class(checkpoint: dict) -> str | None:
    """The class path of the LightningModule that wrote ``checkpoint`` (saved by LightningCLI), if any."""
    hparams = checkpoint.get("hyper_parameters")
    value = hparams.get("_class_path") if isinstance(hparams, Mapping) else None
    return value if isinstance(value, str) else None


def net_class(checkpoint: dict) -> str | None:
    """The class path of the net of the module that wrote ``checkpoint`` (``hyper_parameters.net``)."""
    hparams = checkpoint.get("hyper_parameters")
    net = hparams.get("net") if isinstance(hparams, Mapping) else None
    value = net.get("class_path") if isinstance(net, Mapping) else None
    return value if isinstance(value, str) else None


def recipe_of(checkpoint: dict) -> list[str] | None:
    """The ``--config`` files of the ``lightning fit`` that wrote ``checkpoint``, as they were given; None
    for a checkpoint that does not record them (written before they were recorded, or from Python).

    Recorded by :class:`~lightning_seq.loggers.SaveConfig` in its callback state.
    """
    states = checkpoint.get("callbacks")
    for state in states.values() if isinstance(states, Mapping) else ():
        recipe = state.get("recipe") if isinstance(state, Mapping) else None
        if isinstance(recipe, list) and all(isinstance(name, str) for name in recipe):
            return recipe
    return None


def same_class(a: str, b: str) -> bool:
    """Whether two class paths name one class (``lightning_seq.nets.RNNLM`` and
    ``lightning_seq.nets.rnn_lm.RNNLM`` do); paths that do not import are compared by their last part."""
    if a == b:
        return True
    found = []
    for path in (a, b):
        module_name, _, name = path.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module_name), name) if module_name else None)
        except (ImportError, AttributeError, ValueError):
            found.append(None)
    if found[0] is not None and found[1] is not None:
        return found[0] is found[1]
    return a.rpartition(".")[2] == b.rpartition(".")[2]


def load_module(
    path: str | Path, expected: type | None = None, *, field: str = "--ckpt_path", map_location: Any = "cpu"
) -> LightningModule:
    """The LightningModule of a ``lightning fit`` checkpoint, rebuilt from the checkpoint alone, in eval mode.

    Its class comes from the saved hyperparameters (``_class_path``); the module is then built by
    Lightning's ``load_from_checkpoint`` (LightningCLI's instantiator, weights-only).

    Args:
        path: the checkpoint.
        expected: the family the caller wants, e.g. ``ImageClassifier``: a checkpoint of any other class
            (not a subclass) is refused, naming both. Also the class to use when the checkpoint names none.
        field: the setting the path came from, named in errors.
        map_location: where the weights go.
    """
    checkpoint = read_checkpoint(path, need=("state_dict", "hyper_parameters"), field=field)
    class_path = checkpoint_class(checkpoint)
    del checkpoint  # mapped, not read: Lightning reads the file itself below
    if class_path is None:
        if expected is None:
            raise InputError(
                f"{field}: '{path}' does not say which LightningModule wrote it (its hyperparameters have "
                "no _class_path: it was saved from Python, not by `lightning fit`). Fix: load it with "
                "YourModule.load_from_checkpoint(path), or name the class (load_module(path, expected=...))."
            )
        cls = expected
    else:
        cls = _import_class(class_path, LightningModule, field, path)
        if expected is not None and not issubclass(cls, expected):
            raise InputError(
                f"{field}: '{path}' is a checkpoint of {cls.__name__} ({class_path}), not of "
                f"{expected.__name__}. Fix: give a checkpoint of a {expected.__name__} (trained with a "
                f"recipe whose model is {expected.__name__} or a subclass of it)."
            )
    try:
        module = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    except InputError:
        raise
    except TypeError as err:
        if "required" not in str(err):
            raise
        raise InputError(
            f"{field}: '{path}' cannot rebuild its {cls.__name__} ({_first_line(err)}): a module built in "
            f"Python keeps its net out of the checkpoint. Fix: {cls.__name__}.load_from_checkpoint(path, "
            "net=...) with the same net, or train with `lightning fit`."
        ) from None
    except Exception as err:
        raise InputError(
            f"{field}: '{path}' cannot rebuild its {cls.__name__} here ({_reason(err)}). Fix: use the "
            f"lightning_seq version that wrote it, or {_WRITTEN_BY_FIT}."
        ) from None
    return module.eval()


def load_net(path: str | Path, *, field: str = "--ckpt_path", prefix: str = "net.") -> nn.Module:
    """The net alone of a ``lightning fit`` checkpoint: frozen, in eval mode, on the CPU.

    Built from its ``class_path`` config in the saved hyperparameters (``hyper_parameters["net"]``
    for ``prefix="net."``) and loaded with the ``state_dict`` entries under ``prefix``; the
    LightningModule that trained it is not needed.

    Args:
        path: the checkpoint.
        field: the setting the path came from, named in errors.
        prefix: the net's attribute in the module, with a dot, as its weights are named.
    """
    checkpoint = read_checkpoint(path, need=("state_dict", "hyper_parameters"), field=field)
    key = prefix.removesuffix(".")
    hparams = checkpoint["hyper_parameters"]
    config = hparams.get(key) if isinstance(hparams, Mapping) else None
    if not isinstance(config, Mapping) or not isinstance(config.get("class_path"), str):
        raise InputError(
            f"{field}: '{path}' holds no config of its {key} (hyper_parameters.{key} with a class_path), so "
            f"the {key} cannot be rebuilt from it alone. Fix: {_WRITTEN_BY_FIT} from a recipe."
        )
    _import_class(config["class_path"], nn.Module, field, path)
    net = _instantiate_net(dict(config), field, path)
    weights = checkpoint["state_dict"]
    state = {name.removeprefix(prefix): t for name, t in weights.items() if name.startswith(prefix)}
    if not state:
        raise InputError(f"{field}: '{path}' holds no weights under '{prefix}'. Fix: {_WRITTEN_BY_FIT}.")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(
            f"{field}: the weights in '{path}' do not fit its {key} config ({_reason(err)}). Fix: "
            f"{_WRITTEN_BY_FIT}."
        ) from None
    return net.eval().requires_grad_(False)


_CUT_SHORT = (
    "Fix: a save or copy was cut short; use another checkpoint (an earlier one, or last.ckpt) or copy "
    "it again."
)


def _corrupt_message(where: str, size: int, err: BaseException) -> str:
    reason = _first_line(err).split(". ")[0]
    detail = f"it is truncated or corrupt ({size} bytes; {reason})"
    return f"{where} is not a readable checkpoint: {detail}. {_CUT_SHORT}"


def _objects_message(field: str, path: _PATH, error: str) -> str:
    found = re.search(r"GLOBAL (\S+) was not an allowed global", error)
    what = f"an object of {found.group(1)}" if found else _first_line(error.split("error:")[-1])
    how = (
        "with weights_only=False (`--weights_only false` on the command line)"
        if field == "--ckpt_path"
        else "in Python with torch.load(path, weights_only=False) and save it again with plain values only"
    )
    return (
        f"{field}: checkpoint '{path}' holds Python objects beyond tensors and plain values ({what}), and "
        f"loading it could run code. Fix: {_WRITTEN_BY_FIT}, or, only if you trust where it came from, "
        f"load it {how}."
    )


def _folder_message(field: str, path: Path) -> str:
    found = sorted(path.glob("**/*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    example = f", e.g. '{found[-1]}' (the newest in it)" if found else ""
    return f"{field}: '{path}' is a folder, not a checkpoint file. Fix: give a .ckpt file{example}."


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:  # possibly a character cut at byte 16: judge the rest
        text = head[:-3].decode("utf-8", errors="replace")
    return all(c.isprintable() or c.isspace() for c in text)


def _first_line(err: BaseException | str) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _reason(err: BaseException) -> str:
    """The useful line of an error: jsonargparse's reason under a class_path, or the first line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.startswith("- Problem with given class_path"):
            return f"{line.removeprefix('- Problem with given class_path ').rstrip(':')}: {lines[i + 1]}"
    return _first_line(err)


def _import_class(class_path: str, base: type, field: str, path: _PATH) -> type:
    """The class a checkpoint names, checked to be a ``base``; a clear error when it is not importable."""
    module_name, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise InputError(
            f"{field}: '{path}' was written with the class {class_path}, which cannot be imported here "
            f"({_first_line(err)}). Fix: install the package that defines it, or give another checkpoint."
        ) from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise InputError(
            f"{field}: '{path}' names {class_path} where a {base.__name__} class belongs. Fix: "
            f"{_WRITTEN_BY_FIT}."
        )
    return found


def _instantiate_net(config: dict, field: str, path: _PATH) -> nn.Module:
    """An ``nn.Module`` from its ``{class_path, init_args}`` config, as LightningCLI builds it."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "net", fail_untyped=False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            parsed = parser.parse_object({"net": config})
            instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
            return instantiate(parsed).net
    except InputError:
        raise
    except Exception as err:
        raise InputError(
            f"{field}: the net config in '{path}' does not build here ({_reason(err)}). Fix: use the "
            f"lightning_seq version that wrote it, or {_WRITTEN_BY_FIT}."
        ) from None


def _is_local(path: _PATH) -> bool:
    return "file" in get_filesystem(path).protocol


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

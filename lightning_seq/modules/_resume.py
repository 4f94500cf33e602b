"""What a checkpoint keeps per rank so that a resumed run continues exactly: the random generators'
states, and whatever a module adds (the language model's carried hidden state).

Lightning restores weights, optimizer, schedulers, loops and (with our loaders) the data position;
random states are not among them, and under DDP each rank has its own. Every rank takes part in a
checkpoint's save, so the states are gathered into a list indexed by rank; plain tensors, lists and
numbers keep the checkpoint loadable with ``weights_only=True``.
"""

import random

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn


def rng_state() -> dict:
    """The states of torch's CPU (and initialised CUDA) generators, NumPy's and Python's."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_ranks(state: dict, trainer: L.Trainer | None) -> list[dict]:
    """Every rank's ``state``, by rank (a collective: all ranks call it, as they do when saving)."""
    world = trainer.world_size if trainer is not None else 1
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


def own_rank(states: list[dict], trainer: L.Trainer | None) -> dict | None:
    """This rank's entry of a gathered list; None (with a warning) when the number of ranks changed."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    if len(states) == world:
        return states[rank]
    rank_zero_warn(
        f"The checkpoint was saved by {len(states)} processes and is resumed by {world}: weights, optimizer "
        "and schedule are restored, but random streams and data order differ from an uninterrupted run."
    )
    return None


def apply_loader_positions(trainer: L.Trainer) -> None:
    """Hand the checkpoint's DataLoader positions to the train loader when Lightning would drop them.

    Lightning applies the saved loader states when it builds the train loader during a resumed fit.
    When the loader was built earlier, before the checkpoint's loops were restored (the schedule's
    ``trainer.estimated_stepping_batches`` builds it whenever ``max_epochs`` is set), the states are
    kept but never applied, and a run resumed mid-epoch would start the epoch over (Lightning 2.6).
    Called at the start of training (``on_train_start``: after the restore, before the first batch).
    """
    loop = trainer.fit_loop
    if loop._combined_loader is not None and loop._combined_loader_states_to_load:
        loop._load_combined_loader_states()

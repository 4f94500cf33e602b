"""Helpers over a decoder state: ``None`` or a pytree of tensors whose first dimension is the batch.

A state is whatever a step function carries from one call to the next: an RNN's hidden
tensors, a Transformer's KV cache, an encoder's memory. It may be nested tuples (named tuples
included), lists and dicts. Every tensor leaf must have the batch as its FIRST dimension (an
``nn.LSTM`` ``(h, c)`` pair is ``(layers, B, H)``: transpose it before handing it out). Leaves that
are not tensors (an int position, a flag) are passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

State = Any
"""``None`` or a nested tuple / list / dict of tensors, batch first."""

StepFn = Callable[[Tensor, State], tuple[Tensor, State]]
"""``step(tokens (N, t), state) -> (logits (N, V), new_state)``; see :mod:`lightning_seq.decoding`."""


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor leaf of ``state``, keeping its structure.

    Args:
        fn: Applied to each tensor leaf.
        state: ``None`` or a nested tuple / list / dict of tensors.

    Returns:
        A state of the same structure with ``fn(leaf)`` at each tensor leaf; ``None`` for ``None``.
    """
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, dict):
        return type(state)((key, map_state(fn, value)) for key, value in state.items())
    if isinstance(state, tuple) and hasattr(state, "_fields"):  # named tuple
        return type(state)(*(map_state(fn, value) for value in state))
    if isinstance(state, (tuple, list)):
        return type(state)(map_state(fn, value) for value in state)
    return state


def select_state(state: State, index: Tensor) -> State:
    """Pick batch rows ``index`` of every leaf: ``leaf[index]`` along dim 0 (reorders beams).

    Args:
        state: The state to index.
        index: Long tensor ``(M,)`` of row indices into the batch dimension.

    Returns:
        A state whose leaves have ``M`` rows.
    """
    return map_state(lambda leaf: leaf.index_select(0, index.to(leaf.device)), state)


def repeat_state(state: State, k: int) -> State:
    """Repeat every batch row ``k`` times in place: rows ``b`` become ``b*k ... b*k + k - 1``.

    Args:
        state: The state to expand, ``B`` rows per leaf.
        k: Copies per row (the number of beams).

    Returns:
        A state with ``B * k`` rows per leaf.
    """
    return map_state(lambda leaf: leaf.repeat_interleave(k, dim=0), state)


def detach_state(state: State) -> State:
    """Detach every tensor leaf from the autograd graph (truncated BPTT, caching)."""
    return map_state(torch.Tensor.detach, state)

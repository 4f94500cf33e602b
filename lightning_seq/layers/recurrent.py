"""Recurrent layers: Elman RNN, LSTM and GRU, fused and from the textbook equations.

The functional cells (:func:`rnn_tanh_cell`, :func:`lstm_cell`, :func:`gru_cell`) implement one
time step with PyTorch's gate order, so their weights are interchangeable with ``nn.RNN``,
``nn.LSTM`` and ``nn.GRU``. Each takes the input projection ``W_ih x + b_ih`` already computed,
so that a layer projects all time steps with one matmul and loops over time only for the
hidden-to-hidden part.

:class:`Recurrent` is the multi-layer sequence layer used by the networks. It always stores
its parameters in a ``batch_first`` ``nn.RNN``/``nn.LSTM``/``nn.GRU``; ``impl="fused"`` calls
that module (cuDNN/MKL), ``impl="explicit"`` runs the same parameters through the functional
cells. Both share one ``state_dict``.

State contract (batch-first, project-wide): for ``rnn`` and ``gru`` the state is a tensor
``(B, num_layers, H)``; for ``lstm`` a tuple ``(h, c)`` of two such tensors. Decoding reorders
beams with ``index_select`` on dim 0 of every state tensor.
"""

from __future__ import annotations

import math
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_seq.errors import InputError, check_choice

CellName: TypeAlias = Literal["rnn", "lstm", "gru"]
Impl: TypeAlias = Literal["fused", "explicit"]
RecurrentState: TypeAlias = Tensor | tuple[Tensor, Tensor]
"""A ``(B, num_layers, H)`` tensor (rnn, gru) or a pair of them ``(h, c)`` (lstm)."""

_IMPLS: tuple[str, ...] = ("fused", "explicit")


# --------------------------------------------------------------------------- functional cells


def rnn_tanh_cell(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None) -> Tensor:
    """One step of the Elman RNN with a tanh nonlinearity.

    .. math:: h' = \\tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    Args:
        x_proj: The input projection ``W_ih x + b_ih``, shape ``(B, H)``.
        h: The previous hidden state, ``(B, H)``.
        weight_hh: ``W_hh``, ``(H, H)``.
        bias_hh: ``b_hh``, ``(H,)``, or None for no bias.

    Returns:
        The new hidden state ``h'``, ``(B, H)``.
    """
    return torch.tanh(x_proj + F.linear(h, weight_hh, bias_hh))


def lstm_cell(
    x_proj: Tensor, state: tuple[Tensor, Tensor], weight_hh: Tensor, bias_hh: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One step of the LSTM, gates in PyTorch's order (input, forget, candidate, output).

    .. math::
        i &= \\sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\\\
        f &= \\sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\\\
        g &= \\tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\\\
        o &= \\sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\\\
        c' &= f \\odot c + i \\odot g \\\\
        h' &= o \\odot \\tanh(c')

    Args:
        x_proj: The input projection ``W_ih x + b_ih``, shape ``(B, 4H)``, rows ``[i; f; g; o]``.
        state: The previous ``(h, c)``, each ``(B, H)``.
        weight_hh: ``W_hh``, ``(4H, H)``.
        bias_hh: ``b_hh``, ``(4H,)``, or None for no bias.

    Returns:
        The new ``(h', c')``, each ``(B, H)``.
    """
    h, c = state
    gates = x_proj + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    i, f, g, o = gates.chunk(4, dim=-1)  # 4 x (B, H)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    return h_new, c_new


def gru_cell(x_proj: Tensor, h: Tensor, weight_hh: Tensor, bias_hh: Tensor | None = None) -> Tensor:
    """One step of the GRU, gates in PyTorch's order (reset, update, new).

    .. math::
        r &= \\sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\\\
        z &= \\sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\\\
        n &= \\tanh(W_{in} x + b_{in} + r \\odot (W_{hn} h + b_{hn})) \\\\
        h' &= (1 - z) \\odot n + z \\odot h

    Args:
        x_proj: The input projection ``W_ih x + b_ih``, shape ``(B, 3H)``, rows ``[r; z; n]``.
        h: The previous hidden state, ``(B, H)``.
        weight_hh: ``W_hh``, ``(3H, H)``.
        bias_hh: ``b_hh``, ``(3H,)``, or None for no bias.

    Returns:
        The new hidden state ``h'``, ``(B, H)``.
    """
    h_proj = F.linear(h, weight_hh, bias_hh)  # (B, 3H)
    x_r, x_z, x_n = x_proj.chunk(3, dim=-1)  # 3 x (B, H)
    h_r, h_z, h_n = h_proj.chunk(3, dim=-1)  # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1.0 - z) * n + z * h


_STEPS = {"rnn": rnn_tanh_cell, "lstm": lstm_cell, "gru": gru_cell}  # one time step of each cell


# --------------------------------------------------------------------------- argument checks


def _check_positive_int(owner: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{owner}: {field}={value!r} is invalid; expected a positive integer.")


def _check_probability(owner: str, field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise InputError(f"{owner}: {field}={value!r} is invalid; expected a probability in [0, 1).")


# --------------------------------------------------------------------------- cell modules


class _CellBase(nn.Module):
    """Parameters and init shared by the single-step cells (same as ``torch.nn.RNNCellBase``)."""

    num_gates: int = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        owner = type(self).__name__
        _check_positive_int(owner, "input_size", input_size)
        _check_positive_int(owner, "hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size
        gate_size = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gate_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gate_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gate_size))
        self.bias_hh = nn.Parameter(torch.empty(gate_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(H), 1/sqrt(H))``, as PyTorch does."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def _project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)  # (B, G*H)

    def _zeros(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden_size)  # (B, H)

    def zero_state(self, x: Tensor) -> RecurrentState:
        """The state before the first step: zeros ``(B, H)``."""
        return self._zeros(x)

    def forward(self, x: Tensor, state: RecurrentState | None = None) -> RecurrentState:
        """Advance one step.

        Args:
            x: Input, ``(B, I)``.
            state: Previous state (``h``, or ``(h, c)`` for the LSTM), each ``(B, H)``; None means zeros.

        Returns:
            The new state, in the same form.
        """
        state = self.zero_state(x) if state is None else state
        return self.step(self._project(x), state, self.weight_hh, self.bias_hh)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class RNNCell(_CellBase):
    """Elman RNN cell, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; weights as ``nn.RNNCell``."""

    num_gates = 1
    step = staticmethod(rnn_tanh_cell)


class LSTMCell(_CellBase):
    """LSTM cell (see :func:`lstm_cell` for the equations); weights as ``nn.LSTMCell``.

    Its state is the pair ``(h, c)``, each ``(B, H)``.
    """

    num_gates = 4
    step = staticmethod(lstm_cell)

    def zero_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._zeros(x), self._zeros(x)


class GRUCell(_CellBase):
    """GRU cell (see :func:`gru_cell` for the equations); weights as ``nn.GRUCell``."""

    num_gates = 3
    step = staticmethod(gru_cell)


# --------------------------------------------------------------------------- sequence layer


def _build_torch_rnn(
    cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float
) -> nn.RNNBase:
    # nn.RNNBase warns about dropout with one layer, where it has no effect anyway.
    dropout = dropout if num_layers > 1 else 0.0
    kwargs = {"num_layers": num_layers, "dropout": dropout, "batch_first": True}
    if cell == "rnn":
        return nn.RNN(input_size, hidden_size, nonlinearity="tanh", **kwargs)
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, **kwargs)
    return nn.GRU(input_size, hidden_size, **kwargs)


class Recurrent(nn.Module):
    """A stack of ``num_layers`` RNN/LSTM/GRU layers over a batch-first sequence.

    Layer ``k`` maps its input sequence ``x^{(k)}`` to ``h^{(k)}_t = cell(x^{(k)}_t, h^{(k)}_{t-1})``
    (equations in :func:`rnn_tanh_cell`, :func:`lstm_cell`, :func:`gru_cell`), with
    ``x^{(k+1)} = dropout(h^{(k)})`` for every layer but the last, in training only, as in
    ``nn.LSTM``.

    The parameters live in ``self.rnn``, a ``batch_first`` ``nn.RNN``/``nn.LSTM``/``nn.GRU``
    (``rnn.weight_ih_l{k}``, ``rnn.weight_hh_l{k}``, ``rnn.bias_ih_l{k}``, ``rnn.bias_hh_l{k}``),
    so a checkpoint trained with one ``impl`` runs with the other.

    Args:
        cell: ``"rnn"`` (tanh), ``"lstm"`` or ``"gru"``.
        input_size: Features per input step, ``I``.
        hidden_size: Features of the hidden state, ``H``.
        num_layers: Number of stacked layers.
        dropout: Dropout probability on each layer's output except the last.
        impl: ``"fused"`` calls the torch module (cuDNN/MKL); ``"explicit"`` runs the
            functional cells step by step in Python. Can be changed after construction.
    """

    def __init__(
        self,
        cell: CellName,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        impl: Impl = "fused",
    ) -> None:
        super().__init__()
        check_choice("Recurrent", "cell", cell, tuple(_STEPS))
        _check_positive_int("Recurrent", "input_size", input_size)
        _check_positive_int("Recurrent", "hidden_size", hidden_size)
        _check_positive_int("Recurrent", "num_layers", num_layers)
        _check_probability("Recurrent", "dropout", dropout)
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.impl = impl
        self.rnn = _build_torch_rnn(cell, input_size, hidden_size, num_layers, self.dropout)

    @property
    def impl(self) -> str:
        """``"fused"`` or ``"explicit"``; may be reassigned at any time."""
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        check_choice("Recurrent", "impl", value, _IMPLS)
        self._impl = value

    def extra_repr(self) -> str:
        return f"cell={self.cell!r}, impl={self.impl!r}"

    def forward(self, x: Tensor, state: RecurrentState | None = None) -> tuple[Tensor, RecurrentState]:
        """Run the sequence through every layer.

        Args:
            x: Input sequence, ``(B, T, I)``.
            state: Initial state, batch-first: ``(B, num_layers, H)`` for rnn/gru, a pair
                ``(h, c)`` of those for lstm. None means zeros.

        Returns:
            ``(out, state)``: the last layer's outputs ``(B, T, H)`` and the final state in the
            same batch-first format as the input state.
        """
        if x.dim() != 3:
            raise ValueError(f"Recurrent: expected input of shape (B, T, I), got {tuple(x.shape)}.")
        if state is not None:
            self._check_state(state, x.shape[0])
        if self.impl == "fused":
            return self._forward_fused(x, state)
        return self._forward_explicit(x, state)

    def _check_state(self, state: RecurrentState, batch_size: int) -> None:
        expected = (batch_size, self.num_layers, self.hidden_size)
        tensors = self._as_tuple(state)
        if len(tensors) != (2 if self.cell == "lstm" else 1):
            raise ValueError(f"Recurrent({self.cell}): state must be {self._state_doc()}.")
        for t in tensors:
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"Recurrent({self.cell}): state tensors must be batch-first {expected} "
                    f"(B, num_layers, H), got {tuple(t.shape)}; state is {self._state_doc()}."
                )

    def _state_doc(self) -> str:
        one = "a (B, num_layers, H) tensor"
        return f"a tuple (h, c) of {one}s" if self.cell == "lstm" else one

    @staticmethod
    def _as_tuple(state: RecurrentState) -> tuple[Tensor, ...]:
        return tuple(state) if isinstance(state, (tuple, list)) else (state,)

    def _forward_fused(self, x: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState]:
        torch_state = None
        if state is not None:
            # (B, L, H) -> (L, B, H), contiguous as cuDNN requires
            torch_state = tuple(t.transpose(0, 1).contiguous() for t in self._as_tuple(state))
            torch_state = torch_state if self.cell == "lstm" else torch_state[0]
        out, final = self.rnn(x, torch_state)  # out: (B, T, H)
        # (L, B, H) -> (B, L, H)
        batch_first = tuple(t.transpose(0, 1).contiguous() for t in self._as_tuple(final))
        return out, (batch_first if self.cell == "lstm" else batch_first[0])

    def _layer_params(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return tuple(getattr(self.rnn, f"{name}_l{k}") for name in names)  # type: ignore[return-value]

    def _initial_layer_state(self, x: Tensor, state: RecurrentState | None, k: int) -> RecurrentState:
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden_size)  # (B, H)
            return (zeros, zeros) if self.cell == "lstm" else zeros
        layer = tuple(t[:, k] for t in self._as_tuple(state))  # each (B, H)
        return layer if self.cell == "lstm" else layer[0]

    def _run_layer(self, x: Tensor, layer_state: RecurrentState, k: int) -> tuple[Tensor, RecurrentState]:
        weight_ih, weight_hh, bias_ih, bias_hh = self._layer_params(k)
        x_proj = F.linear(x, weight_ih, bias_ih)  # (B, T, G*H), all steps in one matmul
        step = _STEPS[self.cell]
        outputs = []
        for t in range(x.shape[1]):
            layer_state = step(x_proj[:, t], layer_state, weight_hh, bias_hh)
            outputs.append(layer_state[0] if self.cell == "lstm" else layer_state)  # (B, H)
        return torch.stack(outputs, dim=1), layer_state  # (B, T, H)

    def _forward_explicit(self, x: Tensor, state: RecurrentState | None) -> tuple[Tensor, RecurrentState]:
        finals = []
        for k in range(self.num_layers):
            x, layer_final = self._run_layer(x, self._initial_layer_state(x, state, k), k)
            finals.append(self._as_tuple(layer_final))
            if k < self.num_layers - 1 and self.dropout > 0:
                x = F.dropout(x, self.dropout, training=self.training)
        # per layer (B, H) -> (B, L, H)
        stacked = tuple(torch.stack(parts, dim=1) for parts in zip(*finals, strict=True))
        return x, (stacked if self.cell == "lstm" else stacked[0])

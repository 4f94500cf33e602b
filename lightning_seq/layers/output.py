"""The output layer over a vocabulary: ``nn.Linear``'s parameters and result, faster on CPU for odd sizes.

A language model's last layer writes a wide ``(rows, V)`` matrix of logits from a narrow input
(``rows x 200 -> rows x 24,033`` for the classic word LSTM). On CPU, when ``V`` is not a multiple
of 16, the rows of that matrix do not start on 64-byte boundaries and one GEMM call writes it at
about two thirds of its usual speed (MKL, 2 cores: 61 ms for 700 x 200 -> 24,033, where
``V = 24,000`` or ``24,048`` take 43-45 ms). Computing the same products in blocks of 512 output
columns, each block written where it belongs in one contiguous result, takes 43 ms
(``benchmarks/word_lm.py``; ``benchmarks/RESULTS.md``).
The backward pass is ``nn.Linear``'s: two GEMMs (not slowed: their outputs are narrow) and a column
sum.

The blocks are used only where they were measured to help: float32 on CPU, not under autocast or
``torch.compile``, ``V`` not a multiple of 16 and at least four blocks wide, at most 4,096 rows
(beyond that, blocks of 512 columns no longer fit the cache and the single call is as fast or
faster). Everywhere else it is ``F.linear``. Each logit is the same dot product either way, but a
GEMM of another shape may round its last bit differently (7e-7 apart at most in the tests), so a run
is equal to one with ``nn.Linear`` to float rounding, not bitwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["OutputLinear"]

BLOCK = 512  # output columns per GEMM call
MAX_ROWS = 4096


class _BlockedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, block: int) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])  # (N, K)
        out = x2.new_empty(x2.shape[0], weight.shape[0])  # (N, V)
        for start in range(0, weight.shape[0], block):
            cols = slice(start, start + block)
            if bias is None:
                torch.mm(x2, weight[cols].t(), out=out[:, cols])
            else:
                torch.addmm(bias[cols], x2, weight[cols].t(), out=out[:, cols])
        ctx.save_for_backward(x2, weight)
        ctx.in_shape = x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])  # (N, V)
        grad_x = (g @ weight).view(ctx.in_shape) if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ x2 if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.needs_input_grad[2] else None  # False too when there is no bias
        return grad_x, grad_w, grad_b, None


def _blocks_help(x: Tensor, weight: Tensor) -> bool:
    """Whether the column blocks are faster here (see the module's docstring)."""
    out_features, in_features = weight.shape
    return (
        x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and out_features % 16 != 0
        and out_features >= 4 * BLOCK
        and x.numel() // max(in_features, 1) <= MAX_ROWS
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


class OutputLinear(nn.Linear):
    """``nn.Linear`` for a vocabulary-sized output: the same parameters, ``state_dict`` and result,
    in blocks of output columns where that is faster (CPU, ``out_features`` not a multiple of 16)."""

    def forward(self, x: Tensor) -> Tensor:
        if _blocks_help(x, self.weight):
            return _BlockedLinear.apply(x, self.weight, self.bias, BLOCK)
        return F.linear(x, self.weight, self.bias)

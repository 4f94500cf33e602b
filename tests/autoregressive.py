"""Exact input dependence of autoregressive image nets, in raster order (R -> G -> B inside a pixel)."""

import torch
from torch import nn


def raster_jacobian(net: nn.Module, channels: int, size: int, seed: int = 0, images: int = 2) -> torch.Tensor:
    """``|d out_n / d x_m|`` summed over a few random images: ``(D, D)``, ``D = size * size * channels``,
    with rows (outputs) and columns (inputs) in raster order ``(i, j, c)``.

    Every output value ``n`` (a random mix of its ``P`` parameters) is differentiated in one backward
    pass: the image is repeated ``D`` times and copy ``n`` contributes only its own output ``n``; the
    nets treat the images of a batch independently, so copy ``n``'s input gradient is row ``n``.
    """
    generator = torch.Generator().manual_seed(seed)
    dims = channels * size * size
    total = torch.zeros(dims, dims, dtype=torch.float64)
    for _ in range(images):
        base = torch.randn(1, channels, size, size, generator=generator)
        x = base.repeat(dims, 1, 1, 1).requires_grad_()  # (D, C, H, W)
        out = net(x)  # (D, P, C, H, W)
        mix = torch.randn(out.size(1), generator=generator).view(1, -1, 1, 1, 1)
        values = (out * mix).sum(1).flatten(1)  # (D, D) copy x output, outputs as (c, i, j)
        (grad,) = torch.autograd.grad(values.diagonal().sum(), x)  # (D, C, H, W)
        grad = grad.view(channels, size, size, channels, size, size)  # (c, i, j | c', i', j')
        grad = grad.permute(1, 2, 0, 4, 5, 3).reshape(dims, dims)  # raster order both ways
        total += grad.abs().double()
    return total


def position(i: int, j: int, c: int, channels: int, size: int) -> int:
    """Raster index of channel ``c`` of pixel ``(i, j)``."""
    return (i * size + j) * channels + c


def blind_spots(jac: torch.Tensor, i: int, j: int, reach: int, channels: int, size: int) -> list[tuple]:
    """The earlier values ``(c_out, i', j', c_in)`` in the receptive field's square around ``(i, j)`` (rows
    ``i - reach .. i``, columns ``j - reach .. j + reach``, and the earlier colours of ``(i, j)``) that the
    output at ``(i, j)`` does not depend on."""
    missing = []
    for c in range(channels):
        row = jac[position(i, j, c, channels, size)]
        for pi in range(i - reach, i + 1):
            for pj in range(j - reach, j + reach + 1):
                for pc in range(channels):
                    if (pi, pj, pc) < (i, j, c) and row[position(pi, pj, pc, channels, size)] == 0:
                        missing.append((c, pi, pj, pc))
    return missing

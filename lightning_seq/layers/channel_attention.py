"""Channel attention: Squeeze-and-Excitation (Hu et al., 2018)."""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcitation(nn.Module):
    """Reweight channels by gates computed from their global averages.

    .. math::
        s = \\sigma(W_2\\, \\mathrm{ReLU}(W_1 \\bar{x} + b_1) + b_2), \\quad
        \\bar{x}_c = \\frac{1}{HW} \\sum_{h,w} x_{c,h,w}, \\quad y_{c,h,w} = s_c\\, x_{c,h,w}

    Args:
        channels: Channels ``C``.
        reduction: ``W_1`` maps ``C`` to ``max(C // reduction, min_hidden)`` features.
        min_hidden: Lower bound on that hidden width, so narrow layers keep a useful bottleneck.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gates(self, x: Tensor) -> Tensor:
        """The channel gates ``s`` in (0, 1), ``(B, C, H, W) -> (B, C)``."""
        squeezed = x.mean(dim=(2, 3))  # (B, C)
        return self.fc2(self.fc1(squeezed).relu()).sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``, each channel scaled by its gate."""
        return x * self.gates(x)[:, :, None, None]

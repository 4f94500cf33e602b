"""Transformer encoder pieces: position-wise feed-forward, stochastic depth and the block."""

from __future__ import annotations

from torch import Tensor, nn

from lightning_seq.errors import InputError
from lightning_seq.layers.attention import MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise feed-forward network.

    .. math:: \\mathrm{FFN}(x) = \\mathrm{dropout}(W_2\\, \\mathrm{dropout}(\\phi(W_1 x + b_1)) + b_2)

    Args:
        dim: Input and output width.
        hidden: Inner width (usually ``4 * dim``).
        dropout: Dropout after the activation and after the output projection.
        activation: The nonlinearity ``phi``, a module class built with no arguments.
    """

    def __init__(
        self, dim: int, hidden: int, dropout: float = 0.0, activation: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            activation(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(..., dim) -> (..., dim)``."""
        return self.net(x)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al., 2016): drop a whole residual branch per sample.

    .. math:: \\mathrm{DropPath}(x)_b = \\frac{m_b}{1 - p}\\, x_b, \\quad m_b \\sim \\mathrm{Bernoulli}(1 - p)

    in training, so that the expectation is ``x``; the identity in evaluation.

    Args:
        p: Probability of dropping the branch of a sample.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InputError(f"DropPath: p={p!r} is invalid; expected a probability in [0, 1).")
        self.p = float(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: Tensor) -> Tensor:
        """``(B, ...) -> (B, ...)``, each sample kept (and rescaled) or zeroed as a whole."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, ..., 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates growing linearly from 0 (first block) to ``max_rate`` (last block)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class TransformerBlock(nn.Module):
    """Transformer encoder block.

    Pre-norm (``norm_first=True``, as in ViT and GPT-2):

    .. math::
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(\\mathrm{LN}_1(x)))) \\\\
        x &\\leftarrow x + \\mathrm{DropPath}(\\mathrm{FFN}(\\mathrm{LN}_2(x)))

    Post-norm (``norm_first=False``, "Add & Norm" of Vaswani et al., 2017):

    .. math::
        x &\\leftarrow \\mathrm{LN}_1(x + \\mathrm{DropPath}(\\mathrm{dropout}(\\mathrm{MHA}(x)))) \\\\
        x &\\leftarrow \\mathrm{LN}_2(x + \\mathrm{DropPath}(\\mathrm{FFN}(x)))

    Args:
        dim: Model width.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim``.
        dropout: Dropout on the attention output and inside the FFN.
        attn_dropout: Dropout on the attention weights.
        drop_path: Stochastic-depth probability of both residual branches.
        norm_first: Pre-norm (True) or post-norm (False).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dropout=attn_dropout)
        self.attn_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def _attend(self, x: Tensor, mask: Tensor | None, causal: bool, bias: Tensor | None) -> Tensor:
        return self.drop_path(self.attn_drop(self.attn(x, mask=mask, causal=causal, bias=bias)))

    def forward(
        self, x: Tensor, mask: Tensor | None = None, causal: bool = False, bias: Tensor | None = None
    ) -> Tensor:
        """Apply the block.

        Args:
            x: Tokens, ``(B, T, dim)``.
            mask: Boolean attention mask broadcastable to ``(B, heads, T, T)``; True = may attend.
            causal: Causal self-attention.
            bias: Additive attention bias broadcastable to ``(B, heads, T, T)``.

        Returns:
            ``(B, T, dim)``.
        """
        if self.norm_first:
            x = x + self._attend(self.norm1(x), mask, causal, bias)
            return x + self.drop_path(self.ffn(self.norm2(x)))
        x = self.norm1(x + self._attend(x, mask, causal, bias))
        return self.norm2(x + self.drop_path(self.ffn(x)))


def trunc_normal_(tensor: Tensor, std: float = 0.02) -> None:
    """Fill ``tensor`` from a normal distribution with ``std``, cut at 2 std (the ViT/Swin init)."""
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def init_linear_(root: nn.Module, std: float = 0.02) -> None:
    """Every ``nn.Linear`` under ``root``: truncated normal weights (``std``, cut at 2 std), zero biases."""
    for module in root.modules():
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

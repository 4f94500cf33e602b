"""Batch normalisation over the global batch of every process, on any device (CPU/gloo included).

Under data parallelism each process sees ``B / W`` of a batch of ``B``, so plain batch norm normalises
by the statistics of its own share: the forward pass, and hence training, differs from one process
with the whole batch. :class:`CrossProcessBatchNorm` sums the statistics over the processes first::

    mu      = sum_r sum_i x_ri / N                  N = sum_r n_r   (values per channel, all ranks)
    sigma^2 = sum_r sum_i (x_ri - mu)^2 / N
    y       = gamma * (x - mu) / sqrt(sigma^2 + eps) + beta

with differentiable all-reduces (:func:`all_reduce_sum`), so gradients flow through the shared
statistics as they do through one process's. The running statistics get the unbiased global variance
``N / (N - 1) sigma^2``. It is torch's ``SyncBatchNorm`` for the devices that one refuses (torch's runs
on CUDA only), in two passes (mean, then centred squares) so that it matches one process closely.
Outside a process group, in eval mode, or with one process, it is plain batch norm.

:class:`ClassConditionalBatchNorm` is batch norm whose scale and shift are chosen by the class (de Vries
et al., 2017; Miyato & Koyama, 2018): the class reaches every layer it is used in, not only the input.
Its normalisation is a plain ``nn.BatchNorm2d`` child, so :func:`sync_batch_norm` makes it cross-process.
"""

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["ClassConditionalBatchNorm", "CrossProcessBatchNorm", "all_reduce_sum", "sync_batch_norm"]


class _AllReduceSum(torch.autograd.Function):
    """``y = sum_r x_r`` on every rank; the gradient of each ``x_r`` is ``sum_r dL_r / dy``."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(x: Tensor) -> Tensor:
    """The sum of ``x`` over the processes, differentiable (a new tensor; ``x`` is left as it is)."""
    return _AllReduceSum.apply(x)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CrossProcessBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (see the module docstring).

    Takes the arguments of ``nn.BatchNorm2d`` and keeps its parameter and buffer names, so state dicts
    load either way. Any input rank ``(B, C, ...)`` works.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (B, C, ...), got {input.dim()}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)  # (1, C, 1, ...)
        count = all_reduce_sum(x.new_tensor(float(x.numel() // x.shape[1])))  # N over the ranks
        mean = all_reduce_sum(x.sum(dims)) / count  # (C,)
        centred = x - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / count  # (C,), biased
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count.detach())
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, count: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * count / (count - 1).clamp(min=1)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


class ClassConditionalBatchNorm(nn.Module):
    """Batch norm with a scale and a shift per class::

        y = gamma_c * (x - mu) / sqrt(sigma^2 + eps) + beta_c

    ``mu`` and ``sigma^2`` are the batch's statistics per channel (the running ones in eval mode), as in
    ``nn.BatchNorm2d(affine=False)``; ``gamma_c, beta_c (C,)`` are rows ``c`` of two embeddings, one
    row per class, starting at ``gamma = 1`` and ``beta = 0`` (plain batch norm).

    Args:
        num_features: channels ``C``.
        num_classes: classes ``K``.
        eps: added to the variance.
        momentum: of the running statistics.
    """

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, eps, momentum, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)  # gamma (K, C)
        self.shift = nn.Embedding(num_classes, num_features)  # beta (K, C)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """``x (B, C, H, W)`` normalised, then scaled and shifted by the rows of ``labels (B,)``."""
        gamma = self.gain(labels)[:, :, None, None]  # (B, C, 1, 1)
        beta = self.shift(labels)[:, :, None, None]  # (B, C, 1, 1)
        return self.norm(x) * gamma.to(x.dtype) + beta.to(x.dtype)


def sync_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``nn.BatchNorm1d/2d/3d`` replaced, in place, by a
    :class:`CrossProcessBatchNorm` holding the same parameters and buffers; returns ``module``.

    Call it before the module is wrapped for data parallelism (a LightningModule's ``setup``).
    """
    for name, child in module.named_children():
        if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            tensors = [*child.parameters(), *child.buffers()]
            where = {"device": tensors[0].device} if tensors else {}
            norm = CrossProcessBatchNorm(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats,
                **where,
            )  # fmt: skip
            norm.load_state_dict(child.state_dict())
            norm.train(child.training)
            if child.affine:
                norm.weight, norm.bias = child.weight, child.bias  # the same Parameters: optimizers keep them
            setattr(module, name, norm)
        else:
            sync_batch_norm(child)
    return module

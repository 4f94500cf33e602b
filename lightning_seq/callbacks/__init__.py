"""Callbacks shared by every family: gradient clipping/monitoring, perplexity, sample generation,
labelled image grids, and fault tolerance (NaN/Inf guard, requeue on Slurm's signal, W&B run id)."""

from lightning_seq.callbacks.fault_tolerance import NonFiniteLoss, RequeueOnSignal, RunIdentity
from lightning_seq.callbacks.gradients import GradientClipping
from lightning_seq.callbacks.images import ImagePredictions
from lightning_seq.callbacks.perplexity import Perplexity, TokenNLL
from lightning_seq.callbacks.samples import SampleGeneration

__all__ = [
    "GradientClipping",
    "ImagePredictions",
    "NonFiniteLoss",
    "Perplexity",
    "RequeueOnSignal",
    "RunIdentity",
    "SampleGeneration",
    "TokenNLL",
]

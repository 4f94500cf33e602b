"""Callbacks shared by every family: gradient clipping/monitoring, perplexity, sample generation,
captions with their attention maps, labelled image grids, generative image samples and their quality
(FID, KID, conditional accuracy), fault tolerance (NaN/Inf guard, requeue on Slurm's signal, W&B run
id), a ``last.ckpt`` of the last step, a progress bar that counts steps when ``max_steps`` ends the run
and a model summary without uncounted FLOPs."""

from lightning_seq.callbacks.captions import AttentionMaps
from lightning_seq.callbacks.checkpoints import ModelCheckpoint
from lightning_seq.callbacks.elbo import ELBOLogging
from lightning_seq.callbacks.fault_tolerance import NonFiniteLoss, RequeueOnSignal, RunIdentity
from lightning_seq.callbacks.gradients import GradientClipping
from lightning_seq.callbacks.images import ImagePredictions, ImageSamples
from lightning_seq.callbacks.perplexity import Perplexity, TokenNLL
from lightning_seq.callbacks.progress import LineProgress, NetSummary, StepProgressBar
from lightning_seq.callbacks.quality import FeatureNetTraining, SampleQuality
from lightning_seq.callbacks.samples import SampleGeneration

__all__ = [
    "AttentionMaps",
    "ELBOLogging",
    "FeatureNetTraining",
    "GradientClipping",
    "ImagePredictions",
    "ImageSamples",
    "LineProgress",
    "ModelCheckpoint",
    "NetSummary",
    "NonFiniteLoss",
    "Perplexity",
    "RequeueOnSignal",
    "RunIdentity",
    "SampleGeneration",
    "SampleQuality",
    "StepProgressBar",
    "TokenNLL",
]

"""Callbacks shared by every family: gradient clipping/monitoring, perplexity, sample generation,
labelled image grids."""

from lightning_seq.callbacks.gradients import GradientClipping
from lightning_seq.callbacks.images import ImagePredictions
from lightning_seq.callbacks.perplexity import Perplexity, TokenNLL
from lightning_seq.callbacks.samples import SampleGeneration

__all__ = ["GradientClipping", "ImagePredictions", "Perplexity", "SampleGeneration", "TokenNLL"]

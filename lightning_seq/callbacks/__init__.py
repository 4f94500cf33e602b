"""Callbacks shared by every family: gradient clipping/monitoring, perplexity, sample generation."""

from lightning_seq.callbacks.gradients import GradientClipping
from lightning_seq.callbacks.perplexity import Perplexity, TokenNLL
from lightning_seq.callbacks.samples import SampleGeneration

__all__ = ["GradientClipping", "Perplexity", "SampleGeneration", "TokenNLL"]

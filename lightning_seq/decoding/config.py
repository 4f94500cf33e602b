"""`GenerationConfig`, the user-facing decoding options, and `generate`, which dispatches on them."""

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_seq.decoding.beam import beam_search
from lightning_seq.decoding.state import State, StepFn
from lightning_seq.decoding.strategies import greedy, sample
from lightning_seq.errors import InputError

Strategy = Literal["greedy", "sample", "beam"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class GenerationConfig:
    """How to decode: the strategy and its knobs.

    Attributes:
        strategy: ``"greedy"`` (argmax), ``"sample"`` (ancestral sampling with temperature,
            top-k and top-p) or ``"beam"`` (beam search).
        max_new_tokens: Upper bound on generated tokens.
        temperature: Softmax temperature for sampling, > 0.
        top_k: Sample among the ``k`` most likely tokens only; ``None`` for all.
        top_p: Nucleus mass for sampling in (0, 1]; ``None`` for no nucleus filter.
        num_beams: Beams per prompt for beam search.
        length_penalty: Beam scores are ``log p / length**length_penalty``.
        seed: Seed of the sampling generator, for reproducible samples; ``None`` uses the global RNG.
    """

    strategy: Strategy = "sample"
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = 0.95
    num_beams: int = 4
    length_penalty: float = 1.0
    seed: int | None = None

    @classmethod
    def of(cls, value: "GenerationConfig | dict | None", **defaults) -> "GenerationConfig":
        """``value`` as a config: itself, built from a dict (a checkpoint's hyperparameters), or, for
        None, the defaults with ``defaults`` overriding them."""
        if isinstance(value, dict):
            return cls(**value)
        return value if value is not None else cls(**defaults)

    def __post_init__(self) -> None:
        strategies = get_args(Strategy)
        checks = {  # field: (valid, what is expected)
            "strategy": (self.strategy in strategies, f"one of {', '.join(strategies)}"),
            "max_new_tokens": (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "an integer >= 1"),
            "temperature": (
                _is_real(self.temperature) and self.temperature > 0,
                "a finite number > 0 (use strategy='greedy' for deterministic decoding)",
            ),
            "top_k": (
                self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
                "None or an integer >= 1",
            ),
            "top_p": (
                self.top_p is None or (_is_real(self.top_p) and 0 < self.top_p <= 1),
                "None or a number in (0, 1]",
            ),
            "num_beams": (_is_int(self.num_beams) and self.num_beams >= 1, "an integer >= 1"),
            "length_penalty": (_is_real(self.length_penalty), "a finite number"),
            "seed": (self.seed is None or _is_int(self.seed), "None or an integer"),
        }
        for field, (valid, expected) in checks.items():
            if not valid:
                value = getattr(self, field)
                raise InputError(f"GenerationConfig.{field} must be {expected}, got {value!r}.")


def generate(
    step: StepFn, prompt: Tensor, config: GenerationConfig, eos_id: int | None = None, state: State = None
) -> Tensor:
    """Decode from ``prompt`` with the strategy and options in ``config``.

    Args:
        step: The step function (see :mod:`lightning_seq.decoding`).
        prompt: ``(B, T)`` long tensor.
        config: Decoding options; ``config.seed`` seeds a generator on the prompt's device.
        eos_id: End-of-sequence id.
        state: Initial state passed to the first step call.

    Returns:
        ``(B, n)`` the new tokens only, ``n <= config.max_new_tokens``; for beam search the best
        hypothesis per prompt.
    """
    if config.strategy == "greedy":
        return greedy(step, prompt, config.max_new_tokens, eos_id, state)
    if config.strategy == "beam":
        tokens, _ = beam_search(
            step, prompt, config.max_new_tokens, config.num_beams, config.length_penalty, eos_id, state
        )
        return tokens
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=prompt.device).manual_seed(config.seed)
    return sample(
        step,
        prompt,
        config.max_new_tokens,
        config.temperature,
        config.top_k,
        config.top_p,
        eos_id,
        state,
        generator,
    )

"""LanguageModel: next-token prediction with teacher forcing, for any net with the LM contract.

The net maps ``(tokens (B, T), state) -> (logits (B, T, V), state)``; ``state`` is None or a pytree
of batch-first tensors (an RNN's hidden state, a Transformer's KV cache). In stream mode
(``carry_state``, linked from the DataModule) the state at the end of one batch starts the next
one, detached: truncated backpropagation through time. It is reset at the start of every epoch.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_seq.data.tokenizers import EOS
from lightning_seq.decoding import GenerationConfig, State, detach_state, generate, map_state
from lightning_seq.modules._base import NetModule
from lightning_seq.modules._tokenizers import TokenizersInCheckpoints


class LanguageModel(TokenizersInCheckpoints, NetModule):
    """Trains and samples a language model.

    Args:
        net: the network, ``net(tokens, state) -> (logits, state)``, e.g. :class:`~lightning_seq.nets.RNNLM`.
        carry_state: carry the net's state across batches (set from the DataModule's stream mode).
        pad_id: target id that the loss ignores (set from the DataModule).
        generation: default decoding settings for :meth:`generate` and ``lightning predict``.
        **kwargs: optimizer, schedule and ``compile``: see :class:`~lightning_seq.modules.NetModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        carry_state: bool = False,
        pad_id: int | None = None,
        generation: GenerationConfig | None = None,
        **kwargs,
    ):
        super().__init__(net, **kwargs)
        self.carry_state = carry_state
        self.ignore_index = -100 if pad_id is None else pad_id
        self.generation = GenerationConfig.of(generation)
        self._carried: dict[str, State] = {}  # per stage: the state handed to the next batch

    def forward(self, tokens: torch.Tensor, state: State = None) -> tuple[torch.Tensor, State]:
        return self.net(tokens, state)

    # -------------------------------------------------------------------------------- training
    def compute_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token negative log-likelihood and the number of scored tokens.

        Args:
            logits: ``(B, T, V)`` scores.
            targets: ``(B, T)`` next tokens; ``pad_id`` targets are not scored.
        """
        nll_sum = F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=self.ignore_index, reduction="sum"
        )
        return nll_sum, (targets != self.ignore_index).sum()

    def _step(self, batch: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        state = self._carried.get(stage) if self.carry_state else None
        logits, state = self(inputs, state)
        if self.carry_state:
            self._carried[stage] = detach_state(state)
        nll_sum, num_tokens = self.compute_loss(logits, targets)
        loss = nll_sum / num_tokens.clamp(min=1)
        self.log_loss(stage, loss, inputs.size(0))
        return {"loss": loss, "nll_sum": nll_sum.detach(), "num_tokens": num_tokens}

    def on_train_epoch_start(self) -> None:
        self._carried.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._carried.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._carried.pop("test", None)

    # ------------------------------------------------------------------------------ generation
    def decode_step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The decoding library's step: consume new ``tokens (N, t)``, return next-token logits ``(N, V)``."""
        logits, state = self(tokens, state)
        return logits[:, -1], state

    def generate_tokens(self, prompt: torch.Tensor, config: GenerationConfig | None = None) -> torch.Tensor:
        """Continue ``prompt (B, T0)`` token ids; returns the new ids ``(B, n)``, EOS-padded when done."""
        eos = self.tokenizer.token_to_id(EOS) if self.tokenizer is not None else None
        with self.evaluating():
            return generate(self.decode_step, prompt.to(self.device), config or self.generation, eos_id=eos)

    def generate(self, prompts: str | list[str], config: GenerationConfig | None = None) -> list[str]:
        """Continue each prompt; returns prompt + generated text, cut at the end-of-text token.

        Generation starts from the end-of-text token, which separates documents in training, so
        an empty prompt samples the start of a new document.
        """
        self.require_tokenizers("generate")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        eos = self.tokenizer.token_to_id(EOS)
        encoded = [[eos, *self.tokenizer.encode(t, add_special_tokens=False).ids] for t in texts]
        outputs: list[str] = [""] * len(texts)
        for length in sorted({len(ids) for ids in encoded}):  # batch the prompts of equal length
            rows = [i for i, ids in enumerate(encoded) if len(ids) == length]
            prompt = torch.tensor([encoded[i] for i in rows], dtype=torch.long)  # (G, T0)
            new = self.generate_tokens(prompt, config).tolist()  # (G, n)
            for i, ids in zip(rows, new, strict=True):
                ids = ids[: ids.index(eos)] if eos in ids else ids
                outputs[i] = texts[i] + self._continuation(encoded[i], ids)
        return outputs

    def _continuation(self, prompt: list[int], new: list[int]) -> str:
        """The text of ``new`` ids after ``prompt`` ids: what decoding both adds to the prompt's own
        text, so that a tokenizer that joins words with spaces puts one before the first new word."""
        whole, head = self.tokenizer.decode([*prompt, *new]), self.tokenizer.decode(prompt)
        return whole[len(head) :] if whole.startswith(head) else self.tokenizer.decode(new)

    def predict_step(self, batch: list[str], batch_idx: int) -> list[str]:
        return self.generate(batch)

    # ----------------------------------------------------------------------------- checkpoints
    def resume_state(self) -> dict:
        """Also the state carried into the next training batch (stream mode)."""
        return {**super().resume_state(), "carried": self._carried.get("train")}

    def load_resume_state(self, state: dict) -> None:
        super().load_resume_state(state)
        if state.get("carried") is not None:
            self._carried["train"] = map_state(lambda t: t.to(self.device), state["carried"])

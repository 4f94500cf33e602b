"""Image captioning networks: Show, Attend and Tell (Xu et al., 2015), with the Show and Tell baseline
(Vinyals et al., 2015) and SCA-CNN's channel attention (Chen et al., 2017) as options, and a Transformer
captioner whose decoder cross-attends to the image's feature grid.

Contract relied on by the ``Captioner`` module and ``decoding`` (the same for both nets):

- The constructor takes ``vocab_size``, ``image_size`` and ``in_channels`` (linked from the data), the
  net's own sizes and ``preset``. ``encoder`` is any image encoder module; by default the project's
  :class:`~lightning_seq.nets.ResNet` (with SE) built from ``image_size`` / ``in_channels``.
- ``net.encoder``: the image encoder (a module may give it its own learning rate, or freeze it).
- ``encode(images (B, C, H, W)) -> features (B, L, C_f)``: ``L = h * w`` locations in row-major order;
  ``net.grid == (h, w)`` for the net's ``image_size``.
- ``forward(images, tokens (B, T)) -> (logits (B, T, V), attention)``: teacher forcing, ``tokens[:, 0]``
  is BOS and ``logits[:, t]`` scores token ``t + 1``. ``attention`` is ``(B, T, L)``: ``attention[:, t]``
  are the spatial weights the net looked with while predicting token ``t + 1`` (each row sums to 1);
  None for a net without spatial attention.
- ``start(features) -> state``: a dict of batch-first tensors (``None`` and ints pass through), so beam
  search expands and reorders it (:func:`~lightning_seq.decoding.repeat_state`,
  :func:`~lightning_seq.decoding.select_state`).
- ``decode(tokens (N, t), state) -> (logits (N, t, V), state)``: consume ``t`` new tokens (the BOS
  prompt on the first call, then one at a time). The state it returns holds ``"attention"``, the last
  step's spatial weights ``(N, L)`` (absent without spatial attention). ``decode(tokens,
  start(encode(images)))`` equals ``forward(images, tokens)``, in one call or token by token.

A step function for :mod:`lightning_seq.decoding`::

    def step(tokens, state):
        logits, state = net.decode(tokens, state)
        return logits[:, -1], state

    captions = generate(step, bos_column, config, eos_id=eos, state=net.start(net.encode(images)))
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor, nn

from lightning_seq.errors import InputError, check_choice, check_positive
from lightning_seq.layers.additive_attention import AdditiveAttention
from lightning_seq.layers.channel_attention import ConditionalChannelAttention
from lightning_seq.layers.output import OutputLinear
from lightning_seq.layers.positions import LearnedPositions, SinusoidalPositions, sinusoidal_embedding
from lightning_seq.layers.transformer import TransformerDecoder
from lightning_seq.nets._presets import Presets
from lightning_seq.nets.resnet import ResNet

__all__ = ["ShowAttendTell", "TransformerCaptioner", "spatial_features"]

CaptionState = dict[str, Any]
"""What ``start`` returns and ``decode`` carries: tensors batch-first (None and ints passed through)."""

AttentionKind = Literal["spatial", "channel", "both", "none"]


# ------------------------------------------------------------------------------------ image features


def _features_and_grid(encoder: nn.Module, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """:func:`spatial_features` and the grid ``(h, w)`` they come from."""
    if hasattr(encoder, "forward_stages") and isinstance(getattr(encoder, "norm", None), nn.Module):  # Swin
        fmap = encoder.norm(encoder.forward_stages(images)[-1])  # (B, h, w, C), channels last
        b, h, w, c = fmap.shape
        return fmap.reshape(b, h * w, c), (h, w)  # (B, h*w, C)
    if hasattr(encoder, "forward_features"):
        out = encoder.forward_features(images)
        if out.dim() == 4:  # a convolutional map (ResNet)
            b, c, h, w = out.shape
            return out.flatten(2).transpose(1, 2), (h, w)  # (B, C, h*w) -> (B, h*w, C)
        if out.dim() == 3:  # tokens (ViT): class / distillation tokens first, then the patches
            tokens = out[:, int(getattr(encoder, "num_extra", 0)) :]  # (B, N, C)
            return tokens, _token_grid(encoder, images, tokens.shape[1])
    raise InputError(
        f"captioning encoder {type(encoder).__name__} has no known feature method: expected "
        "forward_features(images) returning a (B, C, h, w) map (ResNet) or (B, N, C) patch tokens (ViT), "
        "or forward_stages(images) with a norm layer (Swin). Fix: pass one of those nets as encoder, or "
        "wrap yours in a module with such a forward_features."
    )


def _token_grid(encoder: nn.Module, images: Tensor, n: int) -> tuple[int, int]:
    """The patch grid of ``n`` tokens: from the encoder's patch size, or a square."""
    patch = getattr(getattr(encoder, "patch_embed", None), "patch_size", None)
    if isinstance(patch, int) and (images.shape[-2] // patch) * (images.shape[-1] // patch) == n:
        return images.shape[-2] // patch, images.shape[-1] // patch
    side = math.isqrt(n)
    if side * side != n:
        raise InputError(
            f"captioning encoder {type(encoder).__name__}: its forward_features gives {n} patch tokens, "
            "which form no square grid and no patch_embed.patch_size says how they tile the image. Fix: "
            "give the encoder a patch_embed with a patch_size, or square images."
        )
    return side, side


def spatial_features(encoder: nn.Module, images: Tensor) -> Tensor:
    """The feature vectors an image encoder gives at each location of its last feature grid.

    - a convolutional net with ``forward_features -> (B, C, h, w)`` (:class:`~lightning_seq.nets.ResNet`):
      its map, one vector per pixel;
    - a token net with ``forward_features -> (B, num_extra + N, C)`` (:class:`~lightning_seq.nets.ViT`):
      the ``N`` patch tokens, without the class / distillation tokens (``encoder.num_extra``);
    - a hierarchical net with ``forward_stages`` and ``norm`` (:class:`~lightning_seq.nets.Swin`): the
      last stage's map, layer-normed.

    Args:
        encoder: The image encoder.
        images: ``(B, C, H, W)``.

    Returns:
        ``(B, L, C_f)`` with ``L = h * w`` locations in row-major order.

    Raises:
        InputError: The encoder has none of these methods.
    """
    return _features_and_grid(encoder, images)[0]


def _probe(encoder: nn.Module, image_size: int, in_channels: int) -> tuple[tuple[int, int], int]:
    """The grid ``(h, w)`` and feature width of ``encoder`` on ``image_size`` images: one forward of a
    blank image in evaluation mode, without gradients (every module's mode is restored after)."""
    modes = [(module, module.training) for module in encoder.modules()]
    param = next(encoder.parameters(), None)
    device = None if param is None else param.device
    dtype = param.dtype if param is not None and param.is_floating_point() else None
    encoder.eval()
    try:
        with torch.no_grad():
            blank = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=dtype)
            features, grid = _features_and_grid(encoder, blank)  # (1, L, C_f)
    finally:
        for module, mode in modes:
            module.training = mode
    return grid, int(features.shape[-1])


class _CaptionNet(nn.Module):
    """What both captioners share: the encoder and its grid, ``encode`` and the teacher-forced forward."""

    grid_size: tuple[int, int]
    feature_dim: int

    def _set_encoder(
        self,
        encoder: nn.Module | None,
        image_size: int,
        in_channels: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        stem: str,
        se_reduction: int = 16,
    ) -> None:
        if encoder is None:
            encoder = ResNet(
                image_size, in_channels, 1, tuple(widths), tuple(depths), se=True, se_reduction=se_reduction,
                stem=stem,
            )  # fmt: skip
            encoder.head = nn.Identity()  # unused by a captioner (and DDP wants no unused parameters)
        if not isinstance(encoder, nn.Module):
            raise InputError(f"{type(self).__name__}: encoder={encoder!r} is not an nn.Module.")
        self.image_size, self.in_channels = image_size, in_channels
        self.encoder = encoder
        self.grid_size, self.feature_dim = _probe(encoder, image_size, in_channels)

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)``: the feature grid of an ``image_size`` image; ``L = h * w``."""
        return self.grid_size

    @property
    def num_locations(self) -> int:
        """``L``, the locations attended over."""
        return self.grid_size[0] * self.grid_size[1]

    def encode(self, images: Tensor) -> Tensor:
        """Image features ``(B, C, H, W) -> (B, L, C_f)`` (see :func:`spatial_features`)."""
        return spatial_features(self.encoder, images)

    def forward(self, images: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: logits ``(B, T, V)`` for every position of ``tokens (B, T)`` (BOS first), and
        the spatial attention ``(B, T, L)`` of every step (None without spatial attention)."""
        logits, _, attention = self._run(tokens, self.start(self.encode(images)))
        return logits, attention

    def decode(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState]:
        """Consume ``tokens (N, t)``; returns logits ``(N, t, V)`` and the state after them."""
        logits, state, _ = self._run(tokens, state)
        return logits, state

    def start(self, features: Tensor) -> CaptionState:  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState, Tensor | None]:
        raise NotImplementedError  # pragma: no cover - abstract


# ------------------------------------------------------------------------------- Show, Attend and Tell


class ShowAttendTell(Presets, _CaptionNet):
    """LSTM captioner with soft visual attention (Xu et al., 2015) over an image encoder's feature grid.

    With ``attention="spatial"`` (the paper's soft attention) each step reads:

    .. math::
        h_0 &= \\tanh(W_{h0}\\, \\bar{a} + b), \\quad c_0 = \\tanh(W_{c0}\\, \\bar{a} + b'), \\quad
            \\bar{a} = \\tfrac{1}{L} \\textstyle\\sum_i a_i \\\\
        e_{ti} &= v^\\top \\tanh(W h_{t-1} + U a_i), \\quad
            \\alpha_t = \\mathrm{softmax}_i(e_t), \\quad z_t = \\textstyle\\sum_i \\alpha_{ti} a_i \\\\
        \\beta_t &= \\sigma(f_\\beta(h_{t-1})), \\quad \\hat{z}_t = \\beta_t z_t \\\\
        h_t, c_t &= \\mathrm{LSTM}([E y_{t-1};\\, \\hat{z}_t], (h_{t-1}, c_{t-1})) \\\\
        p(y_t \\mid y_{<t}, a) &= \\mathrm{softmax}(L_o\\, \\mathrm{dropout}(
            \\tanh(E y_{t-1} + L_h h_t + L_z \\hat{z}_t)))

    with :class:`~lightning_seq.layers.AdditiveAttention` for ``e`` (``U a_i`` projected once per image
    in :meth:`start`). ``deep_output=False`` replaces the last line by
    ``softmax(W_o dropout(h_t) + b_o)``; ``gate=False`` drops ``beta_t``.

    ``attention`` chooses the context ``z_t``:

    - ``"spatial"``: the soft attention above;
    - ``"channel"``: SCA-CNN's channel-wise attention alone,
      ``gamma_t = ConditionalChannelAttention(h_{t-1}, a)`` in (0, 1)^C and ``z_t = gamma_t * mean_i a_i``
      (:class:`~lightning_seq.layers.channel_attention.ConditionalChannelAttention`);
    - ``"both"``: channel then spatial (SCA-CNN's C-S order): the spatial attention reads the reweighted
      features ``gamma_t * a_i``, so their keys are projected at every step;
    - ``"none"``: Show and Tell (Vinyals et al., 2015), no context per step: the pooled feature, through a
      linear layer ``W_I`` to the embedding width, is the LSTM's first input from a zero state,
      ``h_0, c_0 = LSTM(W_I mean_i a_i, (0, 0))``, then ``h_t = LSTM(E y_{t-1}, h_{t-1})``.

    ``forward`` returns the spatial weights ``alpha`` of every step, ``(B, T, L)``, for ``spatial`` and
    ``both`` (a module adds the doubly stochastic penalty ``lambda sum_i (1 - sum_t alpha_ti)^2`` from
    them), and None for ``channel`` and ``none``. After :meth:`decode` the state holds the last step's
    ``"attention"`` ``alpha (N, L)`` (spatial, both), ``"gate"`` ``beta (N, 1)`` (with ``gate``) and
    ``"channel_gates"`` ``gamma (N, C_f)`` (channel, both); keys that do not apply are absent.

    Attributes: ``encoder``, ``embedding``, ``spatial_attention`` and ``channel_attention`` (None when
    not used), ``lstm`` (an ``nn.LSTMCell``), ``context_gate`` (``f_beta``), ``init_h`` / ``init_c`` or
    ``image_embed`` (``none``), ``out_h`` / ``out_z`` / ``out``.

    Args:
        vocab_size: Token ids, ``V`` (linked from the data).
        image_size: Side of the square images (linked from the data); sets :attr:`grid`.
        in_channels: Image channels (linked from the data).
        encoder: The image encoder; None builds a :class:`~lightning_seq.nets.ResNet` with SE from the
            ``encoder_*`` arguments (its classification head removed). A ResNet, ViT or Swin (or any net
            :func:`spatial_features` reads) may be given instead; its own head, if any, stays unused.
        encoder_widths: Stage widths of the default ResNet encoder.
        encoder_depths: Blocks per stage of the default ResNet encoder.
        encoder_stem: ``"cifar"`` or ``"imagenet"`` stem of the default ResNet encoder.
        encoder_se_reduction: its squeeze-and-excitation bottleneck reduction (``recipes/resnet_se.yaml``'s
            is 4: set it, and its depths, to start the encoder from that recipe's checkpoint).
        embed_dim: Width of the word embedding ``E`` (and of the deep output layer).
        hidden_size: Width of the LSTM state ``h``.
        attn_dim: Hidden width of the attention MLPs (spatial and channel).
        attention: ``"spatial"``, ``"channel"``, ``"both"`` or ``"none"`` (see above).
        gate: The gating scalar ``beta_t`` on the context.
        deep_output: The deep output layer (else a linear layer of ``h_t``).
        dropout: Before the output layer.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {
            "encoder_widths": (8, 16),
            "encoder_depths": (1, 1),
            "embed_dim": 16,
            "hidden_size": 32,
            "attn_dim": 16,
            "dropout": 0.0,
        },
        # 32 x 32 images: a 3-stage SE-ResNet to an 8 x 8 grid of 64 channels
        "small": {
            "encoder_widths": (16, 32, 64),
            "encoder_depths": (1, 1, 1),
            "embed_dim": 64,
            "hidden_size": 256,
            "attn_dim": 128,
            "dropout": 0.3,
        },
    }

    def __init__(
        self,
        vocab_size: int,
        image_size: int = 32,
        in_channels: int = 3,
        encoder: nn.Module | None = None,
        encoder_widths: tuple[int, ...] = (16, 32, 64),
        encoder_depths: tuple[int, ...] = (1, 1, 1),
        encoder_stem: Literal["cifar", "imagenet"] = "cifar",
        encoder_se_reduction: int = 16,
        embed_dim: int = 64,
        hidden_size: int = 256,
        attn_dim: int = 128,
        attention: AttentionKind = "spatial",
        gate: bool = True,
        deep_output: bool = True,
        dropout: float = 0.3,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        check_positive(
            "ShowAttendTell", vocab_size=vocab_size, image_size=image_size, in_channels=in_channels,
            embed_dim=embed_dim, hidden_size=hidden_size, attn_dim=attn_dim,
        )  # fmt: skip
        check_choice("ShowAttendTell", "attention", attention, get_args(AttentionKind))
        self._set_encoder(
            encoder,
            image_size,
            in_channels,
            encoder_widths,
            encoder_depths,
            encoder_stem,
            encoder_se_reduction,
        )
        self.vocab_size, self.attention, self.hidden_size = vocab_size, attention, hidden_size
        d = self.feature_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        spatial, channel = attention in ("spatial", "both"), attention in ("channel", "both")
        self.spatial_attention = AdditiveAttention(hidden_size, d, attn_dim) if spatial else None
        self.channel_attention = ConditionalChannelAttention(hidden_size, d, attn_dim) if channel else None
        self.has_context = attention != "none"
        if self.has_context:
            self.init_h, self.init_c = nn.Linear(d, hidden_size), nn.Linear(d, hidden_size)
            self.context_gate = nn.Linear(hidden_size, 1) if gate else None  # f_beta
            self.lstm = nn.LSTMCell(embed_dim + d, hidden_size)
        else:
            self.image_embed = nn.Linear(d, embed_dim)  # W_I
            self.context_gate = None
            self.lstm = nn.LSTMCell(embed_dim, hidden_size)
        self.deep_output = deep_output
        if deep_output:
            self.out_h = nn.Linear(hidden_size, embed_dim)  # L_h
            self.out_z = nn.Linear(d, embed_dim, bias=False) if self.has_context else None  # L_z
            self.out = OutputLinear(embed_dim, vocab_size)  # L_o
        else:
            self.out = OutputLinear(hidden_size, vocab_size)
        self.drop = nn.Dropout(dropout)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.zeros_(self.out.bias)

    def start(self, features: Tensor) -> CaptionState:
        """The decoding state before the first token.

        Args:
            features: ``encode(images)``, ``(N, L, C_f)``.

        Returns:
            ``{"h", "c"}`` ``(N, hidden_size)`` each, and as the attention kind needs them:
            ``"features"`` ``(N, L, C_f)`` (spatial, both), ``"keys"`` ``U a`` ``(N, L, attn_dim)`` (spatial),
            ``"attention"`` zeros ``(N, L)`` (spatial, both), ``"channel_keys"`` ``W_a mean_i a_i + b_1``
            ``(N, attn_dim)`` (channel, both) and ``"pooled"`` ``(N, C_f)`` (channel).
        """
        pooled = features.mean(dim=1)  # (N, C_f)
        if not self.has_context:  # Show and Tell: the image is the first input
            h, c = self.lstm(self.image_embed(pooled))  # (N, H) each, from a zero state
            return {"h": h, "c": c}
        state: CaptionState = {
            "h": torch.tanh(self.init_h(pooled)),  # (N, H)
            "c": torch.tanh(self.init_c(pooled)),  # (N, H)
        }
        if self.spatial_attention is not None:
            state["features"] = features
            if self.channel_attention is None:  # the keys of reweighted features change every step
                state["keys"] = self.spatial_attention.project_keys(features)  # (N, L, A), once per image
            state["attention"] = features.new_zeros(features.shape[:2])  # (N, L)
        if self.channel_attention is not None:
            state["channel_keys"] = self.channel_attention.project_features(features)  # (N, A)
            if self.spatial_attention is None:
                state["pooled"] = pooled  # z_t = gamma_t * mean_i a_i
        return state

    def _context(self, h: Tensor, state: CaptionState) -> tuple[Tensor, dict[str, Tensor]]:
        """``hat z_t`` ``(N, C_f)`` from ``h_{t-1}``, and what the step looked at (attention, gates)."""
        seen: dict[str, Tensor] = {}
        features = state.get("features")  # (N, L, C_f), for spatial attention
        if self.channel_attention is not None:
            gamma = self.channel_attention.gates(h, projected=state["channel_keys"])  # (N, C_f)
            seen["channel_gates"] = gamma
            if self.spatial_attention is None:
                context = gamma * state["pooled"]  # (N, C_f)
            else:
                features = features * gamma[:, None]  # (N, L, C_f)
        if self.spatial_attention is not None:
            context, seen["attention"] = self.spatial_attention(
                h, features, projected_keys=state.get("keys")
            )  # (N, C_f), (N, L)
        if self.context_gate is not None:
            seen["gate"] = torch.sigmoid(self.context_gate(h))  # (N, 1)
            context = seen["gate"] * context
        return context, seen

    def _run(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState, Tensor | None]:
        embedded = self.embedding(tokens)  # (N, t, E)
        h, c = state["h"], state["c"]
        hs, contexts, attention = [], [], []
        seen: dict[str, Tensor] = {}
        for i in range(tokens.size(1)):
            if self.has_context:
                context, seen = self._context(h, state)  # (N, C_f)
                step_input = torch.cat([embedded[:, i], context], dim=-1)  # (N, E + C_f)
                contexts.append(context)
                if "attention" in seen:
                    attention.append(seen["attention"])
            else:
                step_input = embedded[:, i]  # (N, E)
            h, c = self.lstm(step_input, (h, c))  # (N, H) each
            hs.append(h)
        hidden = torch.stack(hs, dim=1)  # (N, t, H)
        if self.deep_output:
            pre = embedded + self.out_h(hidden)  # (N, t, E)
            if self.out_z is not None:
                pre = pre + self.out_z(torch.stack(contexts, dim=1))  # (N, t, C_f) -> (N, t, E)
            logits = self.out(self.drop(torch.tanh(pre)))  # (N, t, V)
        else:
            logits = self.out(self.drop(hidden))  # (N, t, V)
        new_state = {**state, "h": h, "c": c, **seen}
        return logits, new_state, torch.stack(attention, dim=1) if attention else None  # (N, t, L)


# ------------------------------------------------------------------------------------ Transformer


def grid_positions(h: int, w: int, dim: int) -> Tensor:
    """Fixed 2-D sinusoidal positions of an ``h x w`` grid, row-major, ``(h * w, dim)``.

    .. math:: P_{(r, c)} = [PE_r;\\, PE_c]

    with :func:`~lightning_seq.layers.sinusoidal_embedding` of the row (``dim // 2`` columns) and of the
    column (the other ``dim - dim // 2``).
    """
    rows = sinusoidal_embedding(torch.arange(h), dim // 2)  # (h, dim/2)
    cols = sinusoidal_embedding(torch.arange(w), dim - dim // 2)  # (w, dim - dim/2)
    grid = torch.cat([rows[:, None].expand(h, w, -1), cols[None].expand(h, w, -1)], dim=-1)  # (h, w, dim)
    return grid.reshape(h * w, dim)  # (L, dim)


class TransformerCaptioner(Presets, _CaptionNet):
    """Transformer decoder (Vaswani et al., 2017) over an image encoder's feature grid.

    .. math::
        m &= \\mathrm{dropout}(\\mathrm{LN}(W_m a_i + b_m + P_i)), \\quad i = 1 \\dots L \\\\
        x &= \\mathrm{dropout}(\\sqrt{d}\\, E[y_{0..t-1}] + PE_{0..t-1}), \\quad
            h = \\mathrm{Decoder}(x, m) \\text{ (causal self-attention, cross-attention to } m) \\\\
        p(y_t \\mid y_{<t}, a) &= \\mathrm{softmax}(h_t W^\\top), \\quad W = E \\text{ when tied}

    with the features ``a_i`` of the encoder, ``P`` learned 2-D positions (one vector per location) or
    fixed ones (:func:`grid_positions`), and the decoder stack
    :class:`~lightning_seq.layers.TransformerDecoder`.

    Decoding is incremental: :meth:`decode` runs only the new tokens, with every block's self-attention
    keys/values and cross-attention keys/values of ``m`` (computed on the first call) in the state's
    ``cache`` (a KV cache, not a recomputation from the token history).

    The attention returned is the LAST block's cross-attention averaged over heads,
    ``mean_heads softmax(q k^T / sqrt(d_head))``, ``(B, T, L)``: the block's queries are read from its
    query projection during the pass (a forward hook) and its keys from the cache, so the cost is one
    extra ``(T, L)`` score product per head; the weights are those before attention dropout.

    Attributes: ``encoder``, ``memory_proj``, ``memory_norm``, ``embedding``, ``positions``,
    ``decoder``, ``head``.

    Args:
        vocab_size: Token ids, ``V`` (linked from the data).
        image_size: Side of the square images (linked from the data); sets :attr:`grid`.
        in_channels: Image channels (linked from the data).
        encoder: The image encoder; None builds a :class:`~lightning_seq.nets.ResNet` with SE from the
            ``encoder_*`` arguments (as :class:`ShowAttendTell`).
        encoder_widths: Stage widths of the default ResNet encoder.
        encoder_depths: Blocks per stage of the default ResNet encoder.
        encoder_stem: ``"cifar"`` or ``"imagenet"`` stem of the default ResNet encoder.
        encoder_se_reduction: its squeeze-and-excitation bottleneck reduction (``recipes/resnet_se.yaml``'s
            is 4: set it, and its depths, to start the encoder from that recipe's checkpoint).
        dim: Model width ``d``.
        depth: Decoder blocks.
        heads: Attention heads.
        mlp_ratio: FFN inner width as a multiple of ``dim``.
        dropout: On embeddings, the memory, attention outputs and inside the FFNs.
        attn_dropout: On attention weights.
        norm_first: Pre-norm blocks with a final layer norm; False is post-norm.
        positions: Token positions, ``"sinusoidal"`` or ``"learned"``.
        image_positions: Grid positions, ``"learned"`` or ``"sinusoidal"`` (2-D).
        max_len: Longest token sequence (BOS and generated tokens included).
        tie_weights: Output layer = token embedding matrix.
        preset: a named size from ``PRESETS`` (``nano`` is the tests' size); the arguments given win.
    """

    no_weight_decay = ("image_positions",)  # read by the optimizer set-up, like every position embedding

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "nano": {
            "encoder_widths": (8, 16),
            "encoder_depths": (1, 1),
            "dim": 32,
            "depth": 1,
            "heads": 2,
            "mlp_ratio": 2.0,
            "dropout": 0.0,
        },
        "small": {
            "encoder_widths": (16, 32, 64),
            "encoder_depths": (1, 1, 1),
            "dim": 128,
            "depth": 2,
            "heads": 4,
            "mlp_ratio": 4.0,
            "dropout": 0.1,
        },
    }

    def __init__(
        self,
        vocab_size: int,
        image_size: int = 32,
        in_channels: int = 3,
        encoder: nn.Module | None = None,
        encoder_widths: tuple[int, ...] = (16, 32, 64),
        encoder_depths: tuple[int, ...] = (1, 1, 1),
        encoder_stem: Literal["cifar", "imagenet"] = "cifar",
        encoder_se_reduction: int = 16,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        norm_first: bool = True,
        positions: Literal["sinusoidal", "learned"] = "sinusoidal",
        image_positions: Literal["learned", "sinusoidal"] = "learned",
        max_len: int = 128,
        tie_weights: bool = True,
        preset: str | None = None,
    ) -> None:
        super().__init__()
        check_positive(
            "TransformerCaptioner", vocab_size=vocab_size, image_size=image_size, in_channels=in_channels,
            dim=dim, depth=depth, heads=heads, max_len=max_len,
        )  # fmt: skip
        check_choice("TransformerCaptioner", "positions", positions, ("sinusoidal", "learned"))
        check_choice("TransformerCaptioner", "image_positions", image_positions, ("learned", "sinusoidal"))
        self._set_encoder(
            encoder,
            image_size,
            in_channels,
            encoder_widths,
            encoder_depths,
            encoder_stem,
            encoder_se_reduction,
        )
        self.vocab_size, self.dim, self.scale = vocab_size, dim, dim**0.5
        self.memory_proj = nn.Linear(self.feature_dim, dim)  # W_m
        if image_positions == "learned":
            self.image_positions = nn.Parameter(torch.zeros(1, self.num_locations, dim))
            nn.init.trunc_normal_(self.image_positions, std=0.02, a=-0.04, b=0.04)
        else:
            self.register_buffer("image_positions", grid_positions(*self.grid, dim)[None], persistent=False)
        self.memory_norm = nn.LayerNorm(dim)
        self.embedding = nn.Embedding(vocab_size, dim)
        self.positions = (
            SinusoidalPositions(dim, max_len) if positions == "sinusoidal" else LearnedPositions(max_len, dim)
        )
        self.drop = nn.Dropout(dropout)
        self.decoder = TransformerDecoder(
            dim, depth, heads, mlp_ratio=mlp_ratio, dropout=dropout, attn_dropout=attn_dropout,
            norm_first=norm_first,
        )  # fmt: skip
        self.head = OutputLinear(dim, vocab_size, bias=False)
        self._init_weights()
        if tie_weights:
            self.head.weight = self.embedding.weight

    def _init_weights(self) -> None:
        """Xavier-uniform projections with zero biases; embeddings ``N(0, 1/d)`` (unit variance once
        scaled by ``sqrt(d)``)."""
        for module in [self.memory_proj, *self.decoder.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.embedding.weight, std=self.dim**-0.5)
        nn.init.normal_(self.head.weight, std=self.dim**-0.5)

    def start(self, features: Tensor) -> CaptionState:
        """The decoding state before the first token.

        Args:
            features: ``encode(images)``, ``(N, L, C_f)``.

        Returns:
            ``{"memory": m (N, L, dim), "offset": 0, "cache": [], "attention": zeros (N, L)}``; after the
            first :meth:`decode` the memory lives on as cross-attention keys/values in the cache (and
            ``memory`` is None).
        """
        memory = self.memory_norm(self.memory_proj(features) + self.image_positions)  # (N, L, dim)
        return {
            "memory": self.drop(memory),
            "offset": 0,
            "cache": [],
            "attention": features.new_zeros(features.shape[:2]),  # (N, L)
        }

    def _run(self, tokens: Tensor, state: CaptionState) -> tuple[Tensor, CaptionState, Tensor | None]:
        offset = state["offset"]
        x = self.drop(self.positions(self.embedding(tokens) * self.scale, offset=offset))  # (N, t, dim)
        last = self.decoder.blocks[-1].cross_attn
        queries: list[Tensor] = []
        hook = last.q_proj.register_forward_hook(lambda _module, _args, out: queries.append(out))
        try:
            out, cache = self.decoder(x, state["memory"], cache=state["cache"], use_cache=True)  # (N, t, dim)
        finally:
            hook.remove()
        n, t, _ = queries[-1].shape
        q = queries[-1].view(n, t, last.heads, last.head_dim).transpose(1, 2)  # (N, heads, t, head_dim)
        keys = cache[-1]["cross"][0]  # (N, heads, L, head_dim)
        attention = ((q @ keys.transpose(-1, -2)) * last.scale).softmax(dim=-1).mean(dim=1)  # (N, t, L)
        new_state = {"memory": None, "offset": offset + t, "cache": cache, "attention": attention[:, -1]}
        return self.head(out), new_state, attention

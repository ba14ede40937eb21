"""The Dual Cross-Attention Layer (DCAL): pooled visual tokens (V2V) and text tokens (T2V) read
the full-resolution "original" visual tokens of their video through gated GQA cross-attention.

A DCAL lives inside an existing decoder layer of the LLM, after its self-attention and before its
MLP: :class:`CrossAttentionDecoderLayer` is mixed into the Hugging Face layer's own class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from .kv_compression import apply, cat, restore


class TanhGate(nn.Module):
    """Scales its input by tanh(a), with a initialised to 0: the gate starts closed."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.tanh().to(x.dtype)


class CrossAttention(nn.Module):
    """Gated GQA cross-attention with the LLM's own head layout and no RoPE.

    Queries and memory are RMS-normalised first; the output passes through a zero-initialised
    :class:`TanhGate`, so a fresh module adds exactly zero to the residual stream.
    """

    def __init__(self, text_config):
        super().__init__()
        width = text_config.hidden_size
        self.num_heads = text_config.num_attention_heads
        self.num_kv_heads = getattr(text_config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(text_config, "head_dim", None) or width // self.num_heads
        bias = getattr(text_config, "attention_bias", True)  # Qwen2 has q/k/v biases and no such field
        eps = getattr(text_config, "rms_norm_eps", 1e-6)
        self.query_norm = nn.RMSNorm(width, eps=eps)
        self.memory_norm = nn.RMSNorm(width, eps=eps)
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, width, bias=False)
        self.gate = TanhGate()

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (G, M, D) -> keys, values (G, kv_heads, M, head_dim)."""
        groups, length, _ = memory.shape
        memory = self.memory_norm(memory)
        key = self.k_proj(memory).view(groups, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(memory).view(groups, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return key, value

    def forward(
        self,
        hidden: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden (G, Q, D), key/value (G, kv_heads, M, hd), memory_mask (G, M) bool -> gated (G, Q, D)."""
        groups, length, width = hidden.shape
        share = self.num_heads // self.num_kv_heads  # query heads per key/value head
        query = self.q_proj(self.query_norm(hidden))
        # GQA without repeating keys/values: with no causal mask, the query heads that share a
        # key/value head can be stacked along the query axis: (G, kvh, share·Q, hd)
        query = query.view(groups, length, self.num_kv_heads, share, self.head_dim).permute(0, 2, 3, 1, 4)
        query = query.reshape(groups, self.num_kv_heads, share * length, self.head_dim)
        mask = None if memory_mask is None else memory_mask[:, None, None, :]  # (G, 1, 1, M)
        out = F.scaled_dot_product_attention(query, key.to(query.dtype), value.to(query.dtype), attn_mask=mask)
        out = out.view(groups, self.num_kv_heads, share, length, self.head_dim).permute(0, 3, 1, 2, 4)
        out = out.reshape(groups, length, self.num_heads * self.head_dim)  # heads in q_proj's order
        return self.gate(self.o_proj(out)).to(hidden.dtype)


@dataclass
class VisualMemory:
    """The visual tokens of a batch of videos, built once per video and reused across decode steps.

    ``originals`` are the projected full-resolution tokens (keys/values of both cross-attentions),
    ``pooled`` the g² tokens per frame that enter the LLM. Frames of all samples are concatenated:
    sample b owns ``num_frames[b]`` consecutive frames. With ``cache_kv`` the T2V keys/values of
    every DCAL layer are computed at the first forward (prefill) and reused afterwards.

    A memory made for answering (:meth:`CrossLMMForConditionalGeneration.encode_video_chunks`) holds
    no originals: every layer's T2V keys/values and V2V keys/values (``v2v_kv``, per frame: (F, kvh,
    N, hd)) were computed chunk by chunk as the frames were encoded, and ``memory_tokens`` says N.
    """

    pooled: torch.Tensor  # (F, g², D)
    originals: torch.Tensor | None  # (F, N, D); None once projected
    num_frames: torch.Tensor  # (B,) long
    cache_kv: bool = False
    t2v_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    v2v_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    memory_tokens: int = 0  # N when there are no originals to read it from
    _per_video: torch.Tensor | None = field(default=None, repr=False)
    _mask: tuple[torch.Tensor | None] | None = field(default=None, repr=False)  # (mask or None,) once worked out

    @property
    def batch_size(self) -> int:
        return self.num_frames.numel()

    @property
    def tokens(self) -> int:
        """N, the original tokens of a frame."""
        return self.originals.shape[1] if self.originals is not None else self.memory_tokens

    def nbytes(self) -> int:
        tensors = [self.pooled, *([self.originals] if self.originals is not None else [])]
        tensors += [t for pair in (*self.t2v_kv.values(), *self.v2v_kv.values()) for t in pair]
        return sum(t.nbytes for t in tensors)

    def repeat_interleave(self, times: int) -> "VisualMemory":
        """Each sample's video ``times`` times in a row, as generation repeats rows for beams and
        for several answers per prompt (cached keys/values are recomputed, not repeated, where the
        originals are there to recompute them from)."""
        frames = torch.arange(self.pooled.shape[0], device=self.pooled.device)
        order = torch.cat([run for run in frames.split(self.num_frames.tolist()) for _ in range(times)])
        if self.originals is not None:
            return VisualMemory(pooled=self.pooled[order], originals=self.originals[order],
                                num_frames=self.num_frames.repeat_interleave(times), cache_kv=self.cache_kv)
        return VisualMemory(
            pooled=self.pooled[order], originals=None, num_frames=self.num_frames.repeat_interleave(times), cache_kv=True,
            t2v_kv={layer: tuple(apply(t, lambda x: x.repeat_interleave(times, dim=0)) for t in pair)
                    for layer, pair in self.t2v_kv.items()},
            v2v_kv={layer: tuple(apply(t, lambda x: x[order]) for t in pair) for layer, pair in self.v2v_kv.items()},
            memory_tokens=self.memory_tokens)

    @classmethod
    def stack(cls, memories: list["VisualMemory | None"]) -> "VisualMemory":
        """One batch memory from single-sample ones (None: a sample without video), in order, their
        cached T2V keys/values padded to the longest video along the memory axis and stacked; padding
        is masked by :meth:`memory_mask`. Every sample reads only its own video."""
        present = [memory for memory in memories if memory is not None]
        first = present[0]
        projected = any(m.originals is None for m in present)
        empty = {"pooled": first.pooled[:0], "originals": None if projected else first.originals[:0],
                 "memory_tokens": first.tokens}
        parts = [memory or VisualMemory(**empty, num_frames=first.num_frames.new_zeros(1)) for memory in memories]
        layers = set(first.t2v_kv) if all(set(m.t2v_kv) == set(first.t2v_kv) for m in present) else set()
        longest = max(int(m.num_frames.sum()) for m in parts) * first.tokens
        # per-frame V2V keys/values line up with the frames concatenated (a memory without video has none)
        v2v_layers = set(first.v2v_kv) if all(set(m.v2v_kv) == set(first.v2v_kv) for m in present) else set()
        v2v_kv = {layer: tuple(cat(list(tensors)) for tensors in zip(*[m.v2v_kv[layer] for m in present]))
                  for layer in v2v_layers}
        t2v_kv = {}
        for layer in layers:
            key, _ = first.t2v_kv[layer]
            blank = apply(key, lambda t: t[:1, :, :0])  # a sample without video: no memory tokens
            pairs = [m.t2v_kv.get(layer, (blank, blank)) for m in parts]
            t2v_kv[layer] = tuple(cat([apply(t, lambda x, t=t: F.pad(x, (0, 0, 0, longest - t.shape[2]))) for t in tensors])
                                  for tensors in zip(*pairs))
        if projected and set(layers) != set(first.t2v_kv):
            raise ValueError("memories without originals stack only with the same layers' T2V keys/values")
        originals = None if projected else torch.cat([m.originals for m in parts])
        return cls(pooled=torch.cat([m.pooled for m in parts]), originals=originals,
                   num_frames=torch.cat([m.num_frames for m in parts]), cache_kv=True, t2v_kv=t2v_kv, v2v_kv=v2v_kv,
                   memory_tokens=first.tokens)

    def hand_t2v_kv_to(self, members: list["VisualMemory | None"]) -> None:
        """Give each single-sample memory this batch memory was stacked from (see :meth:`stack`)
        its own rows of the T2V keys/values computed here, unpadded, where it has none."""
        tokens = self.tokens
        for row, member in enumerate(members):
            if member is None or not member.cache_kv:
                continue
            length = int(member.num_frames.sum()) * tokens
            for layer, (key, value) in self.t2v_kv.items():
                if layer not in member.t2v_kv:
                    member.t2v_kv[layer] = tuple(apply(t, lambda x: x[row:row + 1, :, :length].clone()) for t in (key, value))

    def __post_init__(self):
        # made here, where the memory is made, not at a layer's first use: inside a checkpointed
        # decoder layer, the recomputation would find it made and save fewer tensors than the forward.
        # A memory built with its T2V keys/values (a decoding batch, see stack) needs the mask only.
        if not self.t2v_kv and self.originals is not None:
            self.per_video()

    def _frame_mask(self) -> torch.Tensor | None:
        """(B, T) bool: each sample's real frames, padded to the longest video (None when every
        sample has the same number of frames)."""
        counts = self.num_frames.tolist()
        if len(set(counts)) == 1:
            return None
        return torch.arange(max(counts), device=self.num_frames.device)[None] < self.num_frames[:, None]

    def memory_mask(self) -> torch.Tensor | None:
        """(B, M) bool: which of the padded per-sample memory positions are real tokens (None when
        every sample has the same number of frames)."""
        if self._mask is None:
            frame_mask = self._frame_mask()
            if frame_mask is not None:
                tokens = self.tokens
                mask = frame_mask[:, :, None].expand(-1, -1, tokens).reshape(frame_mask.shape[0], -1)
                # a sample without frames would attend to nothing (NaN); let it see one zero token,
                # its text mask keeps the result out of the residual stream
                mask[self.num_frames == 0, 0] = True
            else:
                mask = None
            self._mask = (mask,)
        return self._mask[0]

    def per_video(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All original tokens of each sample: (B, M, D) padded to the longest video, and
        :meth:`memory_mask`."""
        if self._per_video is None:
            frames, tokens, width = self.originals.shape
            frame_mask = self._frame_mask()
            if frame_mask is None:
                self._per_video = self.originals.reshape(self.batch_size, -1, width)
            else:
                padded = self.originals.new_zeros(*frame_mask.shape, tokens, width)
                padded[frame_mask] = self.originals
                self._per_video = padded.view(self.batch_size, -1, width)
        return self._per_video, self.memory_mask()


@dataclass
class CrossAttentionInputs:
    """What the DCALs need for one forward call: the memory and which positions query it."""

    memory: VisualMemory
    text_mask: torch.Tensor  # (B, L) bool: positions whose T2V output is added
    pooled_positions: torch.Tensor | None  # (F, g²) flat indices into (B·L) of each frame's pooled tokens

    def __post_init__(self):
        # worked out once per forward, not once per DCAL layer (each check is a device sync)
        self.any_text = bool(self.text_mask.any())
        self.all_text = bool(self.text_mask.all())
        # each sample's text positions in order, padded to the longest: (B, Lt) indices and validity
        counts = self.text_mask.sum(dim=1)
        longest = int(counts.max())
        order = torch.sort(self.text_mask.to(torch.int8), dim=1, descending=True, stable=True).indices
        self.text_index = order[:, :longest]
        self.text_valid = torch.arange(longest, device=counts.device)[None] < counts[:, None]

    def with_originals(self, originals: torch.Tensor) -> "CrossAttentionInputs":
        """The same inputs reading ``originals`` (a tensor standing in for the memory's own)."""
        return replace(self, memory=replace(self.memory, originals=originals, t2v_kv={}, _per_video=None, _mask=None))


class DualCrossAttention(nn.Module):
    """V2V and T2V cross-attention of one decoder layer (separate weights, same shape).

    The last decoder layer has no V2V: what it would write to the visual positions reaches no later
    layer (only the position-wise MLP and the head follow) and the head's logits there are neither
    scored nor sampled, so it would be weights without a gradient and FLOPs without an effect. Its
    T2V stays: the text positions it updates are the ones the head reads."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        last = layer_idx == config.text_config.num_hidden_layers - 1
        self.v2v = None if last else CrossAttention(config.text_config)
        self.t2v = CrossAttention(config.text_config)
        self.use_v2v = config.v2v
        self.use_t2v = config.t2v
        self.v2v_scope = config.v2v_scope

    def forward(self, hidden: torch.Tensor, inputs: CrossAttentionInputs) -> torch.Tensor:
        """hidden (B, L, D) -> the update to add to it (B, L, D); zero where nothing attends."""
        batch, length, width = hidden.shape
        update = hidden.new_zeros(batch * length, width)
        if self.use_v2v and self.v2v is not None and inputs.pooled_positions is not None and inputs.pooled_positions.numel():
            update = self._v2v(hidden.reshape(batch * length, width), update, inputs)
        update = update.view(batch, length, width)
        if self.use_t2v and inputs.any_text:
            update = update + self._t2v(hidden, inputs) * inputs.text_mask[..., None].to(hidden)
        return update

    def _v2v(self, flat_hidden: torch.Tensor, update: torch.Tensor, inputs: CrossAttentionInputs) -> torch.Tensor:
        memory, positions = inputs.memory, inputs.pooled_positions.to(update.device)  # (F, g²)
        if self.v2v_scope == "frame":
            # each frame's pooled tokens read that frame's originals: F independent attentions
            if self.layer_idx in memory.v2v_kv:  # projected when the frames were encoded
                key, value = (restore(t, flat_hidden.dtype) for t in memory.v2v_kv[self.layer_idx])
            else:
                key, value = self.v2v.project_memory(memory.originals)  # (F, kvh, N, hd)
            out = self.v2v(flat_hidden[positions], key, value)  # (F, g², D)
            return update.index_copy(0, positions.flatten(), out.flatten(0, 1))
        # "video": every pooled token of a sample reads all originals of that sample
        videos, mask = memory.per_video()  # (B, M, D), (B, M)
        key, value = self.v2v.project_memory(videos)
        per_sample = positions.new_full((memory.batch_size, int(memory.num_frames.max()) * positions.shape[1]), -1)
        valid = torch.arange(per_sample.shape[1], device=positions.device)[None] < (
            memory.num_frames[:, None] * positions.shape[1]
        )
        per_sample[valid] = positions.flatten()
        queries = flat_hidden[per_sample.clamp(min=0)]  # (B, Qmax, D)
        out = self.v2v(queries, key, value, mask)  # (B, Qmax, D)
        return update.index_copy(0, per_sample[valid], out[valid])

    def _t2v(self, hidden: torch.Tensor, inputs: CrossAttentionInputs) -> torch.Tensor:
        """The T2V update (B, L, D): only text positions query the memory (at prefill most
        positions are visual; while decoding every position is text)."""
        memory = inputs.memory
        mask = memory.memory_mask()
        if memory.cache_kv and self.layer_idx in memory.t2v_kv:
            key, value = (restore(t, hidden.dtype) for t in memory.t2v_kv[self.layer_idx])
        else:
            key, value = self.t2v.project_memory(memory.per_video()[0])  # (B, kvh, M, hd)
            if memory.cache_kv:
                memory.t2v_kv[self.layer_idx] = (key, value)
        if inputs.all_text:
            return self.t2v(hidden, key, value, mask)  # (B, L, D)
        batch, length, width = hidden.shape
        index = inputs.text_index.to(hidden.device)[..., None].expand(-1, -1, width)  # (B, Lt, D)
        out = self.t2v(hidden.gather(1, index), key, value, mask)  # (B, Lt, D)
        out = out * inputs.text_valid.to(hidden)[..., None]  # padding rows add nothing
        return hidden.new_zeros(batch, length, width).scatter_add(1, index, out)


class CrossAttentionDecoderLayer(nn.Module):
    """A Llama-family decoder layer with a DCAL between its self-attention and its MLP.

    Mixed into the LLM's own layer class (see :func:`insert_cross_attention`): the layer keeps its
    weights, names and attention implementation, stays an instance of its class (so transformers
    records its hidden states and FSDP wraps it), and gains ``cross_attn``. Only the order of its
    parts is re-stated here so the DCAL can sit in the middle.
    """

    cross_attn: DualCrossAttention

    def __call__(self, hidden_states: torch.Tensor, *args, **kwargs):
        cross_attention = kwargs.get("cross_attention")
        if cross_attention is not None and not args:
            # reentrant gradient checkpointing carries gradients only through positional tensors:
            # the original visual tokens (which the projector and the vision tower learn through) go as one
            return super().__call__(hidden_states, cross_attention.memory.originals, **kwargs)
        return super().__call__(hidden_states, *args, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        originals: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_attention: CrossAttentionInputs | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        hidden_states = residual + hidden_states  # (B, L, D)
        if cross_attention is not None:
            if originals is not None and originals is not cross_attention.memory.originals:
                cross_attention = cross_attention.with_originals(originals)  # a reentrant checkpoint's copy
            hidden_states = hidden_states + self.cross_attn(hidden_states, cross_attention)
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


_LAYER_CLASSES: dict[type, type] = {}


def with_cross_attention(layer_class: type) -> type:
    """``layer_class`` with :class:`CrossAttentionDecoderLayer` mixed in (one class per layer class)."""
    if layer_class not in _LAYER_CLASSES:
        name = f"{layer_class.__name__}WithCrossAttention"
        _LAYER_CLASSES[layer_class] = type(name, (CrossAttentionDecoderLayer, layer_class), {"__module__": __name__})
    return _LAYER_CLASSES[layer_class]


def insert_cross_attention(language_model: nn.Module, config) -> None:
    """Give every K-th decoder layer of ``language_model`` (a ``*ForCausalLM``) a DCAL, in place:
    its parameter names stay those of the plain LLM, plus ``cross_attn.*``."""
    layers = language_model.model.layers
    for index in config.cross_attn_layers:
        layer = layers[index]
        layer.__class__ = with_cross_attention(type(layer))
        layer.cross_attn = DualCrossAttention(config, index)

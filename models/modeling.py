"""CrossLMM: vision tower -> projector -> per-frame pooling -> an LLM whose every K-th decoder layer
carries a dual cross-attention (V2V, T2V) over the projected full-resolution frame tokens."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration import CrossLMMConfig
from .cross_attention import (
    CrossAttention,
    CrossAttentionDecoderLayer,
    CrossAttentionInputs,
    TanhGate,
    VisualMemory,
    insert_cross_attention,
)
from .kv_compression import KV_CACHE_DTYPES, cat, compress
from .memory_position import MemoryPosition
from .pooling import MultiModalProjector, pool_frames


class CrossLMMPreTrainedModel(PreTrainedModel):
    config_class = CrossLMMConfig
    base_model_prefix = "crosslmm"
    supports_gradient_checkpointing = True
    # by class name: the LLM layers, the same layers with a DCAL mixed in (cross_attention.with_cross_attention
    # names them), the vision tower's
    _no_split_modules = ["Qwen2DecoderLayer", "LlamaDecoderLayer", "Qwen2DecoderLayerWithCrossAttention",
                         "LlamaDecoderLayerWithCrossAttention", "SiglipEncoderLayer"]
    # checkpoints written before the last decoder layer lost its V2V (see DualCrossAttention) hold its
    # weights; they are dropped unread (any other layer's V2V is expected, so only that one is ever unexpected)
    _keys_to_ignore_on_load_unexpected = [r"\.cross_attn\.v2v\."]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # only CrossLMM's own modules; the backbones initialise themselves when built from config
        std = self.config.initializer_range
        if isinstance(module, TanhGate):
            module.scale.zero_()
        elif isinstance(module, CrossAttention):
            for linear in (module.q_proj, module.k_proj, module.v_proj, module.o_proj):
                linear.weight.normal_(0.0, std)
                if linear.bias is not None:
                    linear.bias.zero_()
            module.query_norm.weight.fill_(1.0)
            module.memory_norm.weight.fill_(1.0)
        elif isinstance(module, MultiModalProjector):
            for linear in (module.linear_1, module.linear_2):
                linear.weight.normal_(0.0, std)
                if linear.bias is not None:
                    linear.bias.zero_()
        elif isinstance(module, MemoryPosition):
            module.patch.zero_()
            module.frame.zero_()
        elif isinstance(module, VideoSeparator):
            module.weight.normal_(0.0, 1.0 / math.sqrt(module.weight.numel()))


class VideoSeparator(nn.Module):
    """LLaVA-OneVision's "image_newline": the learned embedding (D,) placed between frames. A module
    of its own (weight ``video_separator.weight``), so that ``device_map`` places it like any other."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size))

    def forward(self) -> torch.Tensor:
        """The separator (D,): read through a call, so that accelerate's offload hooks bring it in."""
        return self.weight


# checkpoints written before the separator was a module keep it under its parameter's old name
LEGACY_NAMES = {"video_separator": "video_separator.weight"}


def renamed_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the old names of :data:`LEGACY_NAMES` replaced by today's."""
    return {LEGACY_NAMES.get(name, name): tensor for name, tensor in state.items()}


class CrossLMMForConditionalGeneration(CrossLMMPreTrainedModel, GenerationMixin):
    """The CrossLMM model. Submodule names follow Hugging Face LLaVA models (``vision_tower``,
    ``multi_modal_projector``, ``language_model``) so PEFT targets and ``device_map`` understand them.
    ``generate()`` is transformers' own, with the encoded video carried to every step."""

    def __init__(self, config: CrossLMMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = MultiModalProjector(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        insert_cross_attention(self.language_model, config)
        # registered last, so that it is initialised last, as it was when it was the model's own parameter:
        # a seed gives the random weights it always gave
        self.video_separator = VideoSeparator(config.text_config.hidden_size)
        self.memory_position = MemoryPosition(config.vision_grid, config.text_config.hidden_size) \
            if config.memory_position else None
        self.post_init()
        if self.generation_config is not None:
            self.generation_config.suppress_tokens = [config.video_token_id]  # the placeholder is never an answer

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        legacy = {f"^{re.escape(old)}$": new for old, new in LEGACY_NAMES.items()}  # old checkpoints load too
        kwargs["key_mapping"] = {**legacy, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(*args, **kwargs)  # the model, or (model, loading info)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # transformers keeps the renamings a load used and reverts them when saving: saves use today's names
        model._weight_conversions = [conversion for conversion in getattr(model, "_weight_conversions", None) or []
                                     if not set(conversion.source_patterns) <= set(legacy)] or None
        keep_4bit_weights_as_saved(model)
        return loaded

    # ---- plumbing expected by transformers / peft ---------------------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def cross_attention_layers(self) -> list[CrossAttentionDecoderLayer]:
        return [layer for layer in self.language_model.model.layers if isinstance(layer, CrossAttentionDecoderLayer)]

    def set_cross_attention(self, v2v: bool | None = None, t2v: bool | None = None) -> None:
        """Switch V2V / T2V on or off in every DCAL (and in the config, so it is saved)."""
        for layer in self.cross_attention_layers():
            if v2v is not None:
                layer.cross_attn.use_v2v = v2v
            if t2v is not None:
                layer.cross_attn.use_t2v = t2v
        if v2v is not None:
            self.config.v2v = v2v
        if t2v is not None:
            self.config.t2v = t2v

    def add_memory_position(self) -> None:
        """Give the model a :class:`MemoryPosition` (zero: its outputs do not change) and say so in its
        config, so that it is saved and loaded with it."""
        if self.memory_position is None:
            reference = self.multi_modal_projector.linear_2.weight
            self.memory_position = MemoryPosition(self.config.vision_grid, self.config.text_config.hidden_size).to(
                device=reference.device, dtype=reference.dtype if reference.is_floating_point() else torch.float32)
            self.config.memory_position = True

    def checkpoint_activations(self, use_reentrant: bool = False) -> None:
        """Recompute activations in backward (gradient checkpointing), by the name the installed
        transformers gives it: ``activation_checkpointing_enable`` from 5.23, the old name before."""
        if hasattr(self, "activation_checkpointing_enable"):
            self.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
        else:
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})

    # ---- vision ---------------------------------------------------------------------------------
    def encode_frames(self, frames: torch.Tensor, frames_per_batch: int = 32) -> torch.Tensor:
        """frames (F, 3, H, W) -> projected original tokens (F, N, D), encoded in micro-batches."""
        layer = self.config.vision_feature_layer
        dtype = self.multi_modal_projector.linear_1.weight.dtype
        chunks = []
        for chunk in frames.split(frames_per_batch):
            # capture only the selected layer's hidden states, not all of them
            outputs = self.vision_tower(pixel_values=chunk.to(dtype), output_hidden_states=layer)
            features = outputs.hidden_states[layer]  # (f, N(+1), Dv)
            if self.config.vision_feature_select_strategy == "default":
                features = features[:, 1:]
            chunks.append(self.multi_modal_projector(features))  # (f, N, D)
        return torch.cat(chunks) if len(chunks) > 1 else chunks[0]

    @torch.no_grad()
    def encode_video_chunks(self, chunks: Iterable[torch.Tensor], num_frames: int, kv_cache: str = "auto") -> VisualMemory:
        """One video, for answering, at the memory a question needs: ``chunks`` of its pixels ((f, 3, H,
        W) each, ``num_frames`` in all; a generator may make each as it is asked for) are encoded one at
        a time, and from each chunk's original tokens every cross-attention layer's keys/values (T2V,
        and V2V per frame) are projected at once, stored as ``kv_cache`` says
        (:mod:`crosslmm.kv_compression`); the originals are then dropped. So the peak is the keys/values
        plus one chunk, not the originals, pixels and keys/values of the whole video. Uncompressed, the
        logits equal :meth:`encode_video`'s with ``cache_kv`` (tests/models)."""
        if kv_cache not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache must be one of {KV_CACHE_DTYPES}, got {kv_cache!r}")
        if self.config.v2v_scope != "frame":
            pixels = torch.cat(list(chunks))[None]
            return self.encode_video(pixels, cache_kv=True)
        t2v_parts: dict[int, list] = {}
        v2v_parts: dict[int, list] = {}
        pooled, first, tokens = [], 0, 0
        for chunk in chunks:
            originals = self.encode_frames(chunk, len(chunk))  # (f, N, D)
            count, tokens = originals.shape[:2]
            pooled.append(pool_frames(originals, self.config.vision_grid, self.config.pooled_grid, self.config.pool_mode))
            if self.memory_position is not None:
                originals = self.memory_position(originals, originals.new_tensor([count], dtype=torch.long), first)
            for layer in self.cross_attention_layers():
                dcal, index = layer.cross_attn, layer.cross_attn.layer_idx
                if dcal.use_t2v:  # (1, kvh, f·N, hd): the chunk's place along the video's memory axis
                    pair = dcal.t2v.project_memory(originals.reshape(1, count * tokens, -1))
                    t2v_parts.setdefault(index, []).append(tuple(compress(t, kv_cache) for t in pair))
                if dcal.use_v2v and dcal.v2v is not None:  # (f, kvh, N, hd)
                    pair = dcal.v2v.project_memory(originals)
                    v2v_parts.setdefault(index, []).append(tuple(compress(t, kv_cache) for t in pair))
            first += count
            del originals
        if first != num_frames:
            raise ValueError(f"the chunks hold {first} frames, not the {num_frames} announced")
        # joined a layer at a time, each layer's parts let go as soon as they are joined
        t2v_kv = {index: tuple(cat(list(side), dim=2) for side in zip(*t2v_parts.pop(index))) for index in list(t2v_parts)}
        v2v_kv = {index: tuple(cat(list(side)) for side in zip(*v2v_parts.pop(index))) for index in list(v2v_parts)}
        device = pooled[0].device
        return VisualMemory(pooled=torch.cat(pooled), originals=None, num_frames=torch.tensor([num_frames], device=device),
                            cache_kv=True, t2v_kv=t2v_kv, v2v_kv=v2v_kv, memory_tokens=tokens)

    def encode_video(
        self,
        pixel_values_videos: torch.Tensor,
        num_frames: torch.Tensor | None = None,
        frames_per_batch: int = 32,
        cache_kv: bool = False,
    ) -> VisualMemory:
        """pixel_values_videos (B, T, 3, H, W) with ``num_frames`` (B,) real frames each (the rest is
        padding and never encoded) -> a :class:`VisualMemory` (pooled (F, g², D), originals (F, N, D))."""
        batch, longest = pixel_values_videos.shape[:2]
        device = pixel_values_videos.device
        if num_frames is None:
            num_frames = torch.full((batch,), longest, dtype=torch.long, device=device)
        num_frames = num_frames.to(device=device, dtype=torch.long)
        frame_mask = torch.arange(longest, device=device)[None] < num_frames[:, None]  # (B, T)
        originals = self.encode_frames(pixel_values_videos[frame_mask], frames_per_batch)  # (F, N, D)
        pooled = pool_frames(originals, self.config.vision_grid, self.config.pooled_grid, self.config.pool_mode)
        if self.memory_position is not None:  # the cross-attentions' memory only: the LLM's tokens are pooled before
            originals = self.memory_position(originals, num_frames)
        return VisualMemory(pooled=pooled, originals=originals, num_frames=num_frames, cache_kv=cache_kv)

    def video_llm_tokens(self, memory: VisualMemory) -> tuple[torch.Tensor, torch.Tensor]:
        """The embeddings that fill the video placeholders, in sequence order, and the frame each
        belongs to: tokens (P, D), frame (P,) with -1 for separators."""
        pooled = memory.pooled  # (F, g², D)
        frames, per_frame, width = pooled.shape
        separator = self.video_separator().to(device=pooled.device, dtype=pooled.dtype)
        frame_ids = torch.arange(frames, device=pooled.device)
        mode = self.config.frame_separator
        if mode == "frame":
            tokens = torch.cat([pooled, separator.expand(frames, 1, width)], dim=1).flatten(0, 1)
            ids = torch.cat([frame_ids[:, None].expand(-1, per_frame), frame_ids.new_full((frames, 1), -1)], 1)
            return tokens, ids.flatten()
        ids = frame_ids.repeat_interleave(per_frame)
        if mode == "none":
            return pooled.flatten(0, 1), ids
        # "video": one separator after the last frame of each sample
        pieces, id_pieces = [], []
        for tokens_b, ids_b in zip(pooled.split(memory.num_frames.tolist()), ids.split((memory.num_frames * per_frame).tolist())):
            if len(tokens_b):  # a sample without frames (text only) has no separator either
                pieces += [tokens_b.flatten(0, 1), separator[None]]
                id_pieces += [ids_b, ids_b.new_full((1,), -1)]
        return torch.cat(pieces), torch.cat(id_pieces)

    # ---- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        generation_config=None,
        *,
        pixel_values_videos: torch.Tensor | None = None,
        num_frames: torch.Tensor | None = None,
        visual_memory: VisualMemory | None = None,
        **kwargs,
    ):
        """transformers' ``generate`` with the video encoded once (or ``visual_memory``, from
        :meth:`encode_video`, reused): the memory reaches every decoding step, so T2V acts on every
        new token, with its keys/values computed at prefill and kept (``cache_kv``)."""
        if visual_memory is None and pixel_values_videos is not None:
            visual_memory = self.encode_video(pixel_values_videos.to(self.device), num_frames)
        if visual_memory is not None:
            visual_memory.cache_kv = True
            kwargs["visual_memory"] = visual_memory
        return super().generate(inputs, generation_config, **kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # beams and several answers per prompt: each sample's video is repeated with its rows
        memory = model_kwargs.pop("visual_memory", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if memory is not None:
            model_kwargs["visual_memory"] = memory.repeat_interleave(expand_size) if expand_size > 1 else memory
        return input_ids, model_kwargs

    # ---- forward --------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        num_frames: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        visual_memory: VisualMemory | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, L) with the video placeholder repeated ``config.video_positions(T_b)`` times
        per sample; pixel_values_videos (B, T, 3, H, W); num_frames (B,) when frame counts differ.
        Pass ``visual_memory`` instead of pixels to reuse an encoded video (generation, chat).
        ``inputs_embeds`` (B, L, D), when given (peft's prompt-learning methods do), replace the
        embedding lookup of ``input_ids``; the video still goes where ``input_ids`` hold its placeholder."""
        if input_ids is None:
            raise ValueError("CrossLMM needs input_ids (they say where each video goes), with or without inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, L, D)
        if visual_memory is None and pixel_values_videos is not None:
            visual_memory = self.encode_video(pixel_values_videos, num_frames)

        cross_attention = None
        if visual_memory is not None:
            video_positions = input_ids == self.config.video_token_id  # (B, L)
            pooled_positions = None
            if video_positions.any():
                inputs_embeds, pooled_positions = self._fill_video_positions(
                    inputs_embeds, video_positions, visual_memory
                )
            text_mask = ~video_positions & (visual_memory.num_frames > 0)[:, None]
            if attention_mask is not None:
                text_mask &= attention_mask[:, -input_ids.shape[1]:].bool()
            cross_attention = CrossAttentionInputs(visual_memory, text_mask, pooled_positions)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            labels=labels,
            logits_to_keep=logits_to_keep,
            cross_attention=cross_attention,
            **kwargs,
        )
        return outputs

    def _fill_video_positions(
        self, inputs_embeds: torch.Tensor, video_positions: torch.Tensor, memory: VisualMemory
    ) -> tuple[torch.Tensor, torch.Tensor]:
        expected = [self.config.video_positions(int(t)) for t in memory.num_frames]
        found = video_positions.sum(dim=1).tolist()
        if found != expected:
            raise ValueError(
                f"video placeholder count per sample {found} does not match the video features {expected} "
                f"(tokens_per_frame={self.config.tokens_per_frame}, frame_separator={self.config.frame_separator})"
            )
        tokens, frame_ids = self.video_llm_tokens(memory)  # (P, D), (P,)
        inputs_embeds = inputs_embeds.masked_scatter(video_positions[..., None], tokens.to(inputs_embeds.dtype))
        flat_positions = video_positions.flatten().nonzero().squeeze(1)  # (P,) row-major, same order as tokens
        pooled_positions = flat_positions[frame_ids >= 0].view(-1, self.config.tokens_per_frame)  # (F, g²)
        return inputs_embeds, pooled_positions


def keep_4bit_weights_as_saved(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit layers in the layout they were loaded in. On CPUs with AVX512-BF16,
    bitsandbytes 0.50 repacks a layer's weights on its first inference forward, turning the
    double-quantised block scales into bfloat16 (lossy), and re-quantises them when saving: the
    model's outputs move by ~6e-3 after its first forward, and so does every save made after it."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes.nn.Linear4bit
            module.support_avx512bf16_for_cpu = False

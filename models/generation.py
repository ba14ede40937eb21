"""Streaming generation: prefill once, then decode with the LLM's KV cache and the T2V keys/values
of the original tokens, which are computed at prefill and reused on every step."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from .cross_attention import VisualMemory
from .modeling import CrossLMMForConditionalGeneration


@dataclass
class SamplingSettings:
    max_new_tokens: int = 256  # stop after this many new tokens
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0  # nucleus sampling mass (only with temperature > 0)
    seed: int | None = None  # seeds the sampling generator for reproducible answers

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:  # also refuses nan
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def next_tokens(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,): argmax when greedy, else temperature + top-p sampling."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the first token always stays)
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= settings.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate_tokens(
    model: CrossLMMForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    memory: VisualMemory | None,
    settings: SamplingSettings,
    eos_token_ids: set[int],
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) step by step. ``memory`` (from ``model.encode_video``) may be
    reused across calls; its T2V keys/values are cached on first use. Finished rows repeat EOS.

    input_ids / attention_mask (B, L), left-padded for batches."""
    if memory is not None:
        memory.cache_kv = True
    device = model.get_input_embeddings().weight.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    cache = DynamicCache(config=model.config.text_config)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L), left padding aware
    eos = torch.tensor(sorted(eos_token_ids), dtype=torch.long, device=device)
    filler = eos[0] if len(eos) else torch.tensor(0, device=device)  # what finished rows repeat
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=device)
    step_ids = input_ids
    for _ in range(settings.max_new_tokens):
        logits = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            visual_memory=memory,
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V)
        logits[:, model.config.video_token_id] = -torch.inf  # the placeholder is never an answer
        token = next_tokens(logits, settings, generator)
        token = torch.where(done, filler, token)
        yield token
        done |= torch.isin(token, eos)
        if done.all():
            return
        step_ids = token[:, None]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1


class TextStream:
    """Incremental detokenisation: feed token ids, get the new text (holds back half a UTF-8 char)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def stop_token_ids(tokenizer, config) -> set[int]:
    """The ids that end an answer: the tokenizer's EOS, ChatML's <|im_end|>, the LLM's own EOS."""
    ids = set()
    for value in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"), config.text_config.eos_token_id):
        if isinstance(value, int) and value != tokenizer.unk_token_id:
            ids.add(value)
        elif isinstance(value, list):
            ids.update(value)
    return ids


class AnswerStream:
    """The answer to one conversation (batch of 1) as text pieces, yielded as they are produced;
    ``token_ids`` holds the generated ids (EOS excluded) once iteration ends."""

    def __init__(
        self,
        model: CrossLMMForConditionalGeneration,
        processor,
        inputs: dict[str, torch.Tensor],
        memory: VisualMemory | None,
        settings: SamplingSettings,
    ):
        self.model, self.processor, self.inputs, self.memory, self.settings = model, processor, inputs, memory, settings
        self.token_ids: list[int] = []

    def __iter__(self) -> Iterator[str]:
        stream = TextStream(self.processor.tokenizer)
        eos = stop_token_ids(self.processor.tokenizer, self.model.config)
        tokens = generate_tokens(
            self.model, self.inputs["input_ids"], self.inputs["attention_mask"], self.memory, self.settings, eos
        )
        for token in tokens:
            token_id = int(token[0])
            if token_id in eos:
                return
            self.token_ids.append(token_id)
            piece = stream.push(token_id)
            if piece:
                yield piece


def stream_answer(model, processor, inputs, memory, settings) -> Iterator[str]:
    """Shorthand for iterating an :class:`AnswerStream`."""
    return iter(AnswerStream(model, processor, inputs, memory, settings))

"""Turn (frames, chat messages) into model inputs, with the LLM's own chat template."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .configuration import CrossLMMConfig

VIDEO_TOKEN = "<video>"
SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2's chat template (ChatML), the one LLaVA-OneVision and Qwen2.5 use for plain-text turns
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + ChatML specials + ``<video>``) built offline, for ``tiny``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", VIDEO_TOKEN]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def ensure_video_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add ``<video>`` as a special token if the tokenizer lacks it; return its id."""
    if VIDEO_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)


class CrossLMMProcessor:
    """Frames -> normalised pixels; messages -> chat-templated ids with the video placeholder
    expanded to the LLM positions the video takes (T·g² plus separators), as LLaVA-OneVision's
    processor does."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: CrossLMMConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.image_size = config.vision_config.image_size
        self.mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(config.image_std).view(1, 3, 1, 1)
        if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) != config.video_token_id:
            raise ValueError(
                f"tokenizer maps {VIDEO_TOKEN} to {tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)}, "
                f"config says {config.video_token_id}"
            )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, config: CrossLMMConfig | None = None) -> "CrossLMMProcessor":
        config = config or CrossLMMConfig.from_pretrained(path)
        return cls(AutoTokenizer.from_pretrained(path), config)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        self.tokenizer.save_pretrained(path)
        with open(os.path.join(path, "processor_config.json"), "w") as f:
            json.dump({"processor_class": type(self).__name__, "image_size": self.image_size}, f, indent=2)

    # ---- pixels ---------------------------------------------------------------------------------
    def preprocess_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """frames (T, H, W, 3) uint8 RGB -> (T, 3, S, S) float32, resized (bicubic, antialiased) and
        normalised with the vision tower's mean/std."""
        pixels = torch.as_tensor(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic", antialias=True)
        pixels = pixels.clamp(0, 255) / 255.0
        return (pixels - self.mean) / self.std

    # ---- text -----------------------------------------------------------------------------------
    def render_messages(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """Chat messages -> prompt text. A content may be a string or a list of parts
        (``{"type": "video"}`` / ``{"type": "text", "text": ...}``); a video part becomes ``<video>\\n``."""
        flat = []
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = "".join(
                    VIDEO_TOKEN + "\n" if part["type"] == "video" else part["text"] for part in content
                )
            flat.append({"role": message["role"], "content": content})
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def expand_video_placeholder(self, prompt: str, num_frames: int) -> str:
        """Repeat the single ``<video>`` of ``prompt`` once per LLM position of the video."""
        if prompt.count(VIDEO_TOKEN) != 1:
            raise ValueError(f"the prompt must hold exactly one {VIDEO_TOKEN}, found {prompt.count(VIDEO_TOKEN)}")
        return prompt.replace(VIDEO_TOKEN, VIDEO_TOKEN * self.config.video_positions(num_frames))

    def __call__(
        self,
        conversations: Sequence[Sequence[dict]] | Sequence[dict],
        videos: Sequence[np.ndarray | torch.Tensor],
        add_generation_prompt: bool = True,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        """One conversation (a list of messages) or a batch of them, and one video (T, H, W, 3) per
        conversation -> input_ids, attention_mask (B, L), pixel_values_videos (B, T_max, 3, S, S)
        zero-padded, num_frames (B,)."""
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if len(conversations) != len(videos):
            raise ValueError(f"{len(conversations)} conversations but {len(videos)} videos")
        prompts = [
            self.expand_video_placeholder(self.render_messages(messages, add_generation_prompt), len(video))
            for messages, video in zip(conversations, videos)
        ]
        self.tokenizer.padding_side = padding_side
        text = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        pixels = [self.preprocess_frames(video) for video in videos]
        num_frames = torch.tensor([len(p) for p in pixels], dtype=torch.long)
        batch = pixels[0].new_zeros(len(pixels), int(num_frames.max()), *pixels[0].shape[1:])
        for row, video in zip(batch, pixels):
            row[: len(video)] = video
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values_videos": batch,
            "num_frames": num_frames,
        }

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

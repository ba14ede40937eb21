"""Turn (frames, chat messages) into model inputs, with the LLM's own chat template: a transformers
processor (``AutoProcessor``) holding the tokenizer and a :class:`CrossLMMVideoProcessor`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import AutoTokenizer, BatchEncoding, PreTrainedTokenizerBase, PreTrainedTokenizerFast, ProcessorMixin
from transformers.feature_extraction_utils import BatchFeature

from .configuration import CrossLMMConfig, video_positions
from .video_processing import CrossLMMVideoProcessor

VIDEO_TOKEN = "<video>"
VISUAL_PARTS = ("video", "image")  # chat content parts that stand for the sample's visual input
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


Conversation = Sequence[dict]


class CrossLMMProcessor(ProcessorMixin):
    """Frames -> normalised pixels (the video processor); prompts -> ids with each video's single
    ``<video>`` repeated once per LLM position the video takes (T·g² plus separators), as
    LLaVA-OneVision's processor does. ``tokens_per_frame`` and ``frame_separator`` must be the
    model's (:meth:`for_model` takes them from its config)."""

    def __init__(
        self,
        video_processor: CrossLMMVideoProcessor | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        tokens_per_frame: int = 9,
        frame_separator: str = "video",
        **kwargs,
    ):
        self.tokens_per_frame = tokens_per_frame
        self.frame_separator = frame_separator
        super().__init__(video_processor, tokenizer, chat_template=chat_template)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, config: CrossLMMConfig) -> "CrossLMMProcessor":
        """The processor of a model with ``config``, around ``tokenizer`` (which must know ``<video>``
        by the id the config gives it)."""
        if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) != config.video_token_id:
            raise ValueError(
                f"tokenizer maps {VIDEO_TOKEN} to {tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)}, "
                f"config says {config.video_token_id}"
            )
        video_processor = CrossLMMVideoProcessor(config.vision_config.image_size, config.image_mean, config.image_std)
        return cls(video_processor, tokenizer, tokens_per_frame=config.tokens_per_frame,
                   frame_separator=config.frame_separator)

    # transformers checks a sub-processor's class against its top-level names, which without torchvision
    # are placeholders for every video processor; this one needs no torchvision, so its class is named here
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor":
            if not isinstance(argument, CrossLMMVideoProcessor):
                raise TypeError(f"video_processor must be a CrossLMMVideoProcessor, got {type(argument).__name__}")
            return CrossLMMVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @property
    def image_size(self) -> int:
        return self.video_processor.size

    def preprocess_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One video (T, H, W, 3) uint8 RGB -> (T, 3, S, S) float32 (see the video processor)."""
        return self.video_processor.frames_to_pixels(frames)

    # ---- text -----------------------------------------------------------------------------------
    def render_messages(self, messages: Conversation, add_generation_prompt: bool = True) -> str:
        """Chat messages -> prompt text with the tokenizer's chat template. A content may be a string
        or a list of parts (``{"type": "video"}`` / ``{"type": "image"}`` / ``{"type": "text", "text": ...}``);
        a video or image part becomes ``<video>\\n`` (an image is a one-frame video)."""
        flat = []
        for message in messages:
            content = message["content"]
            if not isinstance(content, str):
                content = "".join(
                    VIDEO_TOKEN + "\n" if part["type"] in VISUAL_PARTS else part["text"] for part in content
                )
            flat.append({"role": message["role"], "content": content})
        return self.tokenizer.apply_chat_template(flat, tokenize=False, add_generation_prompt=add_generation_prompt)

    def apply_chat_template(self, conversation: Conversation | Sequence[Conversation], chat_template=None,
                            add_generation_prompt: bool = False, tokenize: bool = False, return_dict: bool = False,
                            return_tensors: str | None = "pt", num_frames: int = 32, fps: float | None = None,
                            start: float | None = None, end: float | None = None, **kwargs):
        """transformers' entry point: messages whose content parts may be videos or images -> the prompt
        text(s), one ``<video>`` per visual part. With ``tokenize=True`` each conversation's video or
        image part (``"path"``, ``"video"``/``"image"`` or a ``file://`` ``"url"``; or frames already
        decoded) is read by crosslmm's own decoder as ``crosslmm ask`` reads it (``num_frames``, ``fps``,
        ``start``, ``end`` sample a video) and the model inputs come back (``return_dict``: all of them;
        else the ids)."""
        if chat_template is not None:
            raise ValueError("CrossLMMProcessor.apply_chat_template uses the tokenizer's own chat template")
        single = bool(conversation) and isinstance(conversation[0], dict)
        conversations = [conversation] if single else list(conversation)
        prompts = [self.render_messages(messages, add_generation_prompt) for messages in conversations]
        if not tokenize:
            return prompts[0] if single else prompts
        sampling = {"num_frames": num_frames, "fps": fps, "start": start, "end": end}
        visuals = [load_visual_part(messages, sampling) for messages in conversations]
        inputs = self(text=prompts, videos=visuals, return_tensors=return_tensors)
        return inputs if return_dict else inputs["input_ids"]

    def expand_video_placeholder(self, prompt: str, num_frames: int) -> str:
        """Repeat the single ``<video>`` of ``prompt`` once per LLM position of the video."""
        if prompt.count(VIDEO_TOKEN) != 1:
            raise ValueError(f"the prompt must hold exactly one {VIDEO_TOKEN}, found {prompt.count(VIDEO_TOKEN)}")
        positions = video_positions(num_frames, self.tokens_per_frame, self.frame_separator)
        return prompt.replace(VIDEO_TOKEN, VIDEO_TOKEN * positions)

    def chat_inputs(self, messages: Conversation, num_frames: int | None = None) -> BatchEncoding:
        """One conversation, ready for its answer -> input_ids, attention_mask (1, L); its video part,
        if any, expanded for ``num_frames`` frames (pixels are the caller's: see :meth:`preprocess_frames`)."""
        prompt = self.render_messages(messages, add_generation_prompt=True)
        if num_frames is not None:
            prompt = self.expand_video_placeholder(prompt, num_frames)
        return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)

    def __call__(
        self,
        text: str | Sequence[str] | Conversation | Sequence[Conversation] | None = None,
        videos=None,
        images=None,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Prompts (strings holding one ``<video>`` each, or chat conversations, rendered with the
        chat template) and one visual input per prompt -> input_ids, attention_mask (B, L),
        pixel_values_videos (B, T_max, 3, S, S) zero-padded, num_frames (B,).

        ``videos``: one video ((T, H, W, 3) or (T, 3, H, W) frames) or a list, one per prompt.
        ``images``: an image (PIL or (H, W, 3)) is a one-frame video; a list of images with one prompt
        is a multi-image sample (the images are its frames); with several prompts, one entry (an image
        or a list of images) per prompt."""
        if text is None or (videos is None) == (images is None):
            raise ValueError("CrossLMMProcessor needs text (prompts or conversations) and either videos or images, "
                             "one visual input per prompt")
        if isinstance(text, str) or (text and isinstance(text[0], dict)):
            text = [text]
        prompts = [item if isinstance(item, str) else self.render_messages(item, add_generation_prompt) for item in text]
        samples = videos if images is None else _images_per_prompt(images, len(prompts))
        pixels = self.video_processor(samples, return_tensors=return_tensors)  # a bare video is one sample there
        if len(prompts) != len(pixels["num_frames"]):
            raise ValueError(f"{len(prompts)} prompts but {len(pixels['num_frames'])} "
                             f"{'videos' if images is None else 'image inputs'}")
        prompts = [self.expand_video_placeholder(prompt, int(n)) for prompt, n in zip(prompts, pixels["num_frames"])]
        self.tokenizer.padding_side = padding_side
        ids = self.tokenizer(prompts, return_tensors=return_tensors, padding=True, add_special_tokens=False)
        return BatchFeature({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"], **pixels})

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True, **kwargs) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)


def _is_image(value) -> bool:
    return hasattr(value, "convert") or (isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 3)


def _images_per_prompt(images, prompts: int) -> list[list]:
    """``images`` as one list of images per prompt (see ``CrossLMMProcessor.__call__``)."""
    if _is_image(images):
        return [[images]]
    images = list(images)
    if prompts == 1 and all(_is_image(image) for image in images):
        return [images]
    return [[entry] if _is_image(entry) else list(entry) for entry in images]


def load_visual_part(messages: Conversation, sampling: dict):
    """The frames of a conversation's one video or image part, (T, H, W, 3) uint8 RGB: given as
    frames, or read from a local file by crosslmm's decoder (PyAV, frames named by their timestamps;
    an image is a one-frame video), sampled as ``crosslmm ask`` samples."""
    parts = [part for message in messages if not isinstance(message["content"], str)
             for part in message["content"] if part.get("type") in VISUAL_PARTS]
    if len(parts) != 1:
        raise ValueError(f"a conversation needs exactly one video or image part to tokenize, found {len(parts)}")
    part = parts[0]
    source = next((part[key] for key in ("path", part["type"], "url") if part.get(key) is not None), None)
    if source is None:
        raise ValueError(f"the {part['type']} part names no file: give it a 'path' (or '{part['type']}' or a file:// 'url')")
    if not isinstance(source, str):
        return [source] if _is_image(source) else source  # an image, or a video's frames, already decoded
    if "://" in source and not source.startswith("file://"):
        raise ValueError(f"{source}: only local files are read (no download); fetch it first and give its path")
    from crosslmm_cli.video import MAX_SIDE, SamplingRequest, read_frames  # the decoder the CLI uses, lazily

    _, frames = read_frames(source.removeprefix("file://"), SamplingRequest(**sampling, max_side=MAX_SIDE))
    return frames.pixels

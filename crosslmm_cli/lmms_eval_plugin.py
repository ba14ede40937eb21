"""crosslmm as an lmms-eval model, for any of lmms-eval's 100+ video tasks:

    python -m lmms_eval --model crosslmm --model_args pretrained=DIR,frames=32 --tasks videomme

Registered through lmms-eval's entry-point group ``lmms_eval.models`` (pyproject.toml); lmms-eval
stays an optional extra and is imported by lmms-eval's own registry only, never by crosslmm. Videos
are decoded and sampled by crosslmm (the same frames as ``crosslmm eval``), each encoded once for all
the questions about it in a row, and answered by crosslmm's continuous batching (``batch_size``
questions together, as ``crosslmm eval --batch-size``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from crosslmm.batched_generation import ContinuousBatch, Sequence, generate_all
from lmms_eval.api.model import lmms

from .ask import AskSettings, VideoChat, prepare_model
from .errors import UserError
from .evaluation.runner import default_batch_size
from .model_source import pick_device
from .video import read_frames


def manifest():
    """The entry point lmms-eval's model registry loads."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="crosslmm", simple_class_path="crosslmm_cli.lmms_eval_plugin.CrossLMM")


class CrossLMM(lmms):
    """``--model_args`` pretrained (preset, checkpoint directory or hub id), frames, tokens_per_frame,
    quantize, device, as ``crosslmm eval`` takes them; lmms-eval's ``--batch_size`` (default: as
    ``crosslmm eval``'s)."""

    def __init__(self, pretrained: str = "crosslmm-ov-0.5b", frames: int = 32, tokens_per_frame: int | None = None,
                 quantize: str | None = None, device: str | None = None, batch_size: int | str | None = None,
                 **unused) -> None:
        super().__init__()
        self.settings = AskSettings(model=str(pretrained), frames=int(frames), quantize=quantize, device=device,
                                    tokens_per_frame=int(tokens_per_frame) if tokens_per_frame else None)
        self.batch_size = int(batch_size) if batch_size else default_batch_size(pick_device(device))
        self.model, self.processor, self.quantize = prepare_model(self.settings)
        self.chat: VideoChat | None = None  # the video encoded last, with its path

    def generate_until(self, requests) -> list[str]:
        """The answers, in the order of ``requests``, generated ``batch_size`` at a time."""
        answers = [""] * len(requests)  # lmms-eval scores every request: a missing video answers nothing

        def sequences():
            for number, request in enumerate(requests):
                context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
                visuals = doc_to_visual(self.task_dict[task][split][doc_id])
                video = visuals[0] if isinstance(visuals, list) else visuals
                settings = dataclasses.replace(self.settings, max_new_tokens=int(gen_kwargs.get("max_new_tokens", 16)),
                                               temperature=float(gen_kwargs.get("temperature", 0.0) or 0.0))
                try:
                    chat = self._chat_about(str(video), settings)
                except UserError as error:
                    self.chat = None
                    print(f"crosslmm: {error}")
                    continue
                inputs = chat.first_question_inputs(context)
                yield Sequence(inputs["input_ids"], chat.memory, settings.sampling, tag=number)

        batch = ContinuousBatch(self.model, self.processor.tokenizer, max_batch_size=self.batch_size)
        for sequence in generate_all(batch, sequences()):
            answers[sequence.tag] = sequence.text
        return answers

    def _chat_about(self, video: str, settings: AskSettings) -> VideoChat:
        """The encoded video for ``video``: the last one when it is the same file, else decoded and encoded."""
        if self.chat is None or self.chat.info.path != str(Path(video)):
            info, frames = read_frames(video, settings.request)
            self.chat = VideoChat(self.model, self.processor, info, frames, settings, self.quantize)
        self.chat.settings = settings
        return self.chat

    def loglikelihood(self, requests):
        raise NotImplementedError("crosslmm answers generation tasks (generate_until); it computes no log-likelihoods")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("crosslmm answers single-round generation tasks")

"""crosslmm as an lmms-eval model, for any of lmms-eval's 100+ video tasks:

    python -m lmms_eval --model crosslmm --model_args pretrained=DIR,frames=32 --tasks videomme

Registered through lmms-eval's entry-point group ``lmms_eval.models`` (pyproject.toml); lmms-eval
stays an optional extra and is imported by lmms-eval's own registry only, never by crosslmm. Videos
are decoded and sampled by crosslmm (the same frames as ``crosslmm eval``), each encoded once for all
the questions about it in a row, and answered by crosslmm's generation.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmms_eval.api.model import lmms

from .ask import AskSettings, VideoChat, prepare_model
from .errors import UserError
from .video import read_frames


def manifest():
    """The entry point lmms-eval's model registry loads."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="crosslmm", simple_class_path="crosslmm_cli.lmms_eval_plugin.CrossLMM")


class CrossLMM(lmms):
    """``--model_args`` pretrained (preset, checkpoint directory or hub id), frames, tokens_per_frame,
    quantize, device, as ``crosslmm eval`` takes them."""

    def __init__(self, pretrained: str = "crosslmm-ov-0.5b", frames: int = 32, tokens_per_frame: int | None = None,
                 quantize: str | None = None, device: str | None = None, batch_size: int = 1, **unused) -> None:
        super().__init__()
        self.settings = AskSettings(model=str(pretrained), frames=int(frames), quantize=quantize, device=device,
                                    tokens_per_frame=int(tokens_per_frame) if tokens_per_frame else None)
        self.model, self.processor, self.quantize = prepare_model(self.settings)
        self.chat: VideoChat | None = None  # the video encoded last, with its path

    def generate_until(self, requests) -> list[str]:
        answers = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [request.args for request in requests]:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            video = visuals[0] if isinstance(visuals, list) else visuals
            settings = dataclasses.replace(self.settings, max_new_tokens=int(gen_kwargs.get("max_new_tokens", 16)),
                                           temperature=float(gen_kwargs.get("temperature", 0.0) or 0.0))
            try:
                chat = self._chat_about(str(video), settings)
            except UserError as error:  # lmms-eval scores every request: a missing video answers nothing
                self.chat = None
                print(f"crosslmm: {error}")
                answers.append("")
                continue
            answers.append(chat.ask_alone(context).text)
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

"""The teacher's targets on disk, under ``OUT/teacher/``: what the teacher pass writes once and the
student's training reads every epoch.

- ``settings.json``: what the targets depend on (the base, the teacher's tokens per frame, frames,
  top-k, temperature, answer length and sampling, the prompts' digest); a resume with other values is
  refused, so targets made two ways never mix;
- ``shard-NNNNN.safetensors``: the prompts ``N * SHARD_PROMPTS`` to ``(N + 1) * SHARD_PROMPTS - 1``,
  written whole under a temporary name and renamed (a pass killed mid-shard leaves only finished
  shards; ``--resume`` computes the rest). Tensors, one row per answer token over the shard's answers
  in order: ``tokens`` (the answer's token ids, its end-of-turn token included), ``ids`` (the
  teacher's top-k token ids there) and ``log_probs`` (their log-probabilities at the temperature, the
  tail's last: crosslmm_cli.distill.loss), with ``offsets`` saying where each answer's rows begin.
  The metadata's ``answers`` (JSON) lists per answer its prompt number, file, kind, prompt and text;
  ``left_out`` the prompts of the shard that got no answer (a file that does not decode, an empty
  answer) and why.

No pickle anywhere: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError

SHARD_PROMPTS = 32  # prompts per shard: the most a killed teacher pass recomputes
SETTINGS_FILE = "settings.json"


class TargetCache:
    """The ``teacher`` folder of a distillation output."""

    def __init__(self, folder: Path, prompts: int):
        self.folder, self.prompts = folder, prompts

    @property
    def shards(self) -> int:
        return -(-self.prompts // SHARD_PROMPTS)

    def shard_path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.safetensors"

    def missing(self) -> list[int]:
        return [shard for shard in range(self.shards) if not self.shard_path(shard).is_file()]

    def prompt_range(self, shard: int) -> range:
        return range(shard * SHARD_PROMPTS, min((shard + 1) * SHARD_PROMPTS, self.prompts))

    def begin(self, settings: dict, resume: bool) -> None:
        """Record ``settings`` for a new pass; on ``resume``, refuse a pass made with other ones."""
        path = self.folder / SETTINGS_FILE
        if path.is_file():
            saved = json.loads(path.read_text())
            if not resume:
                raise UserError(f"{self.folder.parent} already holds a distillation; pass --resume to continue it, or "
                                "choose another --output")
            changed = [name for name in settings if saved.get(name) != settings[name]]
            if changed:
                differences = "; ".join(f"{name} was {saved.get(name)!r}, now {settings[name]!r}" for name in changed)
                raise UserError(f"--resume with other teacher settings than the targets in {self.folder} ({differences}); "
                                "resume with the run's own settings or start a new --output")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".partial")
        temporary.write_text(json.dumps(settings, indent=1))
        temporary.replace(path)

    def write(self, shard: int, answers: list[dict], left_out: list[dict]) -> None:
        """One shard: ``answers`` each {"prompt_number", "media", "kind", "prompt", "text", "tokens" (n,),
        "ids" (n, k), "log_probs" (n, k + 1)}, in prompt order."""
        tokens = [answer["tokens"] for answer in answers]
        lengths = torch.tensor([0] + [len(t) for t in tokens])
        tensors = {
            "offsets": lengths.cumsum(0),
            "tokens": torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.long),
            "ids": torch.cat([a["ids"] for a in answers]).to(torch.int32) if answers else torch.zeros(0, 0, dtype=torch.int32),
            "log_probs": torch.cat([a["log_probs"] for a in answers]).float() if answers else torch.zeros(0, 0),
        }
        described = [{name: answer[name] for name in ("prompt_number", "media", "kind", "prompt", "text")} for answer in answers]
        temporary = self.shard_path(shard).with_suffix(".partial")
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(temporary),
                  metadata={"answers": json.dumps(described), "left_out": json.dumps(left_out)})
        os.replace(temporary, self.shard_path(shard))


def shard_answers(path: Path) -> tuple[list[dict], list[dict]]:
    """The answers a shard describes (its metadata; no tensor is read) and the prompts it left out."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    return json.loads(metadata["answers"]), json.loads(metadata["left_out"])


def answer_targets(path: Path, answer: int) -> dict[str, torch.Tensor]:
    """One answer's rows of a shard: tokens (n,), ids (n, k) and log_probs (n, k + 1)."""
    with safe_open(str(path), framework="pt") as f:
        offsets = f.get_tensor("offsets")
        start, end = int(offsets[answer]), int(offsets[answer + 1])
        return {name: f.get_slice(name)[start:end] for name in ("tokens", "ids", "log_probs")}

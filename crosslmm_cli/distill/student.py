"""The student's side: the cached answers as a training source, and the loss that reads the teacher's
top-k log-probabilities beside them.

The source is one shard of every answer of the cache (its size known, an epoch a full shuffle, as a
training folder's); a sample is the prompt and the teacher's answer as a conversation about the
file, read and tokenised by the training data path like any other row, so the student's answer tokens
are the ones the teacher scored (both tokenise the conversation with the same code; the loss checks
it). Its key names the shard and the answer, which is how the loss finds the teacher's targets.
"""

from __future__ import annotations

import numpy as np
import torch

from ..training_data.records import Record
from ..training_data.sources import LRU, Source
from ..training_data.tokens import IGNORE_INDEX
from .cache import TargetCache, answer_targets, shard_answers
from .loss import distillation_loss


class TeacherTargets(Source):
    """The answers of a complete target cache, about the files under ``media_root``."""

    def __init__(self, cache: TargetCache, media_root):
        super().__init__(str(cache.folder), [cache.folder], media_root.resolve())
        self.cache = cache
        self.answers = LRU(8)  # shard -> its answers' descriptions

    def files(self):
        return [self.cache.shard_path(shard) for shard in range(self.cache.shards)]

    def shard_name(self, shard: int) -> str:
        return "teacher"

    def described(self, shard: int) -> list[dict]:
        return self.answers.get_or_make(shard, lambda: shard_answers(self.cache.shard_path(shard))[0])

    def build_index(self, shard: int) -> np.ndarray:
        """(answers, 2): each answer's cache shard and its place there."""
        rows = [(number, place) for number in range(self.cache.shards) for place in range(len(self.described(number)))]
        return np.array(rows, dtype=np.int64).reshape(-1, 2)

    def row_name(self, shard: int, row: int) -> str:
        number, place = self.index(shard)[row]
        return f"{self.cache.shard_path(int(number)).name}/answer {int(place)}"

    def row_key(self, shard: int, row: int) -> str:
        return self.row_name(shard, row)

    def read(self, shard: int, row: int) -> Record:
        number, place = (int(value) for value in self.index(shard)[row])
        answer = self.described(number)[place]
        fields = {"conversations": [{"from": "human", "value": answer["prompt"]}, {"from": "gpt", "value": answer["text"]}]}
        return Record(self.row_name(shard, row), fields, [self.media_file(answer["media"])])


class DistillLoss:
    """α · KL(teacher ‖ student) at τ over the teacher's top-k and tail + (1 − α) · cross-entropy on
    the teacher's tokens, over the answer tokens of a micro-batch; the student's LM head runs over
    the answer positions only."""

    def __init__(self, cache: TargetCache, alpha: float, temperature: float):
        self.cache, self.alpha, self.temperature = cache, alpha, temperature

    def targets(self, name: str) -> dict[str, torch.Tensor]:
        """The cached targets of the sample called ``name`` ("<source>:<shard file>/answer <n>")."""
        file, place = name.split(":", 1)[1].rsplit("/answer ", 1)
        return answer_targets(self.cache.folder / file, int(place))

    def __call__(self, model, batch: dict, samples: list[tuple[int, str]]) -> torch.Tensor:
        labels = batch.pop("labels")
        length = labels.shape[1]
        answer_rows = (labels != IGNORE_INDEX).any(dim=1)
        first = int((labels[answer_rows] != IGNORE_INDEX).float().argmax(dim=1).min())
        keep = length - first + 1  # from the position that predicts the earliest answer token on
        logits = model(**batch, logits_to_keep=keep).logits[:, :-1]
        targets = labels[:, length - keep + 1:]
        predicting = targets != IGNORE_INDEX
        cached = [self.targets(name) for _, name in samples]
        tokens = torch.cat([c["tokens"] for c in cached]).to(labels.device)
        if not torch.equal(tokens, targets[predicting]):
            raise RuntimeError("the student's answer tokens are not the ones the teacher scored; the target cache does not "
                               "belong to this data (start a new --output)")
        return distillation_loss(logits[predicting], tokens, torch.cat([c["ids"] for c in cached]).long().to(labels.device),
                                 torch.cat([c["log_probs"] for c in cached]).to(labels.device), self.alpha, self.temperature)

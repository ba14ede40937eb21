"""The teacher's side of distillation for a batch of answered prompts: its top-k log-probabilities
at each answer token, with the language-model head run over the answers only.

A video prompt is thousands of positions (196 tokens per frame for LLaVA-OneVision) and a
full-vocabulary row is ~600 KB in float32, so the head over a 6 k-token prompt would be ~3.7 GB of
logits of which only the answer's dozens matter. The rows are right-padded, so every row's answer
lies in the last ``L − earliest answer start`` positions: ``logits_to_keep`` asks the model for
those alone, and each row's answer is cut out of them by its own offsets.
"""

from __future__ import annotations

import torch

from .loss import fold_top_k


@torch.no_grad()
def answer_top_k(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, answers: list[tuple[int, int]],
                 top_k: int, temperature: float, **visual) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """input_ids (B, L) right-padded, each row its prompt then its answer; ``answers`` each row's
    answer tokens as [start, end) (its end-of-turn token included, the template's text after it not).
    Returns per row (ids (n, k), log-probabilities (n, k + 1)), n = end − start, for the positions
    that predict the answer's tokens."""
    keep = input_ids.shape[1] - (min(start for start, _ in answers) - 1)  # from where the earliest answer is predicted
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, **visual).logits
    first_kept = input_ids.shape[1] - keep
    out = []
    for row, (start, end) in enumerate(answers):
        # the positions start − 1 … end − 2 predict the answer tokens start … end − 1
        out.append(fold_top_k(logits[row, start - 1 - first_kept:end - 1 - first_kept], top_k, temperature))
    return out

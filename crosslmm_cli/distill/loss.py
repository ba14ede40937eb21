"""The distillation loss on answer tokens: forward KL(teacher ‖ student) at temperature τ over the
teacher's top-k tokens plus one tail bucket holding the rest of the mass, mixed with cross-entropy on
the teacher's own answer tokens (EPIC: α = 0.5, τ = 2; LLaVA-MoD: τ = 1).

The teacher's side is what the teacher pass caches per answer position: the ids of its k likeliest
tokens and their log-probabilities at τ, with the tail's log-probability last (k + 1 values), so the
full vocabulary is never stored. The student's distribution is folded the same way: its own
log-probabilities at τ of the teacher's k ids, and the log of the mass left over. Over these k + 1
buckets the KL is exact; with k equal to the vocabulary (an empty tail) it is the full KL. Multiplied
by τ², as Hinton et al. do, so its gradients keep their scale whatever τ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fold_top_k(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's side: logits (N, V) -> ids (N, k) of its k likeliest tokens and log-probabilities
    (N, k + 1) at ``temperature``: those k, then the tail (the rest of the vocabulary's mass)."""
    log_probs = F.log_softmax(logits.float() / temperature, dim=-1)
    top, ids = log_probs.topk(k, dim=-1)
    return ids, torch.cat([top, log_outside(log_probs, ids)], dim=-1)


def log_outside(log_probs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The log-probability (N, 1) of every token but ``ids``: a log-sum-exp over the others, not
    log(1 − Σ), which would cancel what little is left (−inf when nothing is)."""
    return log_probs.scatter(-1, ids, float("-inf")).logsumexp(dim=-1, keepdim=True)


def folded_kl(student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_log_probs: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) (N,) per answer position over the teacher's k ids and the tail, times τ²."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    student_folded = torch.cat([student.gather(-1, teacher_ids), log_outside(student, teacher_ids)], dim=-1)
    teacher_probs = teacher_log_probs.exp()
    # a bucket the teacher gives no mass contributes nothing (0 · log 0 = 0), whatever the student gives
    # it; masked before the product, so that no −inf reaches the gradient
    held = teacher_probs > 0
    difference = torch.where(held, teacher_log_probs, 0.0) - torch.where(held, student_folded, 0.0)
    return (teacher_probs * difference).sum(dim=-1) * temperature**2


def distillation_loss(student_logits: torch.Tensor, teacher_tokens: torch.Tensor, teacher_ids: torch.Tensor,
                      teacher_log_probs: torch.Tensor, alpha: float = 0.5, temperature: float = 2.0) -> torch.Tensor:
    """α · mean KL + (1 − α) · mean cross-entropy on the teacher's tokens, over N answer positions:
    student_logits (N, V) at the positions that predict teacher_tokens (N,)."""
    kl = folded_kl(student_logits, teacher_ids, teacher_log_probs, temperature).mean()
    cross_entropy = F.cross_entropy(student_logits.float(), teacher_tokens)
    return alpha * kl + (1 - alpha) * cross_entropy

"""The distillation loss against a reference written with whole distributions and torch's kl_div."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crosslmm_cli.distill.loss import distillation_loss, fold_top_k, folded_kl


def reference_kl(student_logits, teacher_logits, k: int, temperature: float) -> torch.Tensor:
    """Both distributions over the whole vocabulary at τ, the teacher's k likeliest tokens kept and
    every other token summed into one bucket (probabilities added, not logs), then kl_div, times τ²."""
    teacher = F.softmax(teacher_logits.double() / temperature, dim=-1)
    student = F.softmax(student_logits.double() / temperature, dim=-1)
    kept = teacher.topk(k, dim=-1).indices
    outside = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, kept, False)

    def fold(p):  # with k = V there is no tail bucket
        return torch.cat([p.gather(-1, kept), (p * outside).sum(-1, keepdim=True)], dim=-1) if k < p.shape[-1] else \
            p.gather(-1, kept)

    kl = F.kl_div(fold(student).log(), fold(teacher), reduction="none").sum(-1)
    return kl * temperature**2


@pytest.mark.parametrize("k", [1, 5, 19, 20])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_the_folded_kl_equals_kl_div_on_the_folded_distributions(k, temperature):
    torch.manual_seed(k)
    teacher_logits, student_logits = torch.randn(7, 20) * 3, torch.randn(7, 20) * 3
    ids, teacher_log_probs = fold_top_k(teacher_logits, k, temperature)
    ours = folded_kl(student_logits, ids, teacher_log_probs, temperature)
    torch.testing.assert_close(ours.double(), reference_kl(student_logits, teacher_logits, k, temperature),
                               rtol=1e-4, atol=1e-6)


def test_with_the_whole_vocabulary_it_is_the_full_kl_and_zero_for_the_teacher_itself():
    torch.manual_seed(0)
    teacher_logits, student_logits = torch.randn(4, 12), torch.randn(4, 12)
    ids, teacher_log_probs = fold_top_k(teacher_logits, 12, 2.0)
    full = F.kl_div(F.log_softmax(student_logits / 2, -1), F.log_softmax(teacher_logits / 2, -1), log_target=True,
                    reduction="none").sum(-1) * 4
    torch.testing.assert_close(folded_kl(student_logits, ids, teacher_log_probs, 2.0), full, rtol=1e-5, atol=1e-6)
    same = folded_kl(teacher_logits, ids, teacher_log_probs, 2.0)
    assert same.abs().max() < 1e-5
    student = student_logits.clone().requires_grad_(True)  # an empty tail gives no NaN gradient
    folded_kl(student, ids, teacher_log_probs, 2.0).sum().backward()
    assert student.grad.isfinite().all()


def test_the_loss_mixes_kl_and_cross_entropy_and_moves_the_student():
    torch.manual_seed(1)
    teacher_logits = torch.randn(6, 30) * 2
    student_logits = torch.randn(6, 30, requires_grad=True)
    tokens = teacher_logits.argmax(-1)
    ids, log_probs = fold_top_k(teacher_logits, 8, 2.0)
    loss = distillation_loss(student_logits, tokens, ids, log_probs, alpha=0.25, temperature=2.0)
    expected = 0.25 * folded_kl(student_logits, ids, log_probs, 2.0).mean() + 0.75 * F.cross_entropy(student_logits, tokens)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student_logits.grad.abs().sum() > 0 and student_logits.grad.isfinite().all()

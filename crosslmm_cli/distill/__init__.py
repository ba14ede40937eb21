"""Label-free self-distillation of a CrossLMM from the full-token model inside its own checkpoint
(``crosslmm distill``): ``prompts`` (what the teacher is asked), ``teacher_pass`` (its answers and
top-k log-probabilities, written by ``cache``), ``student`` (the cached answers as a training source,
and the loss that reads them, from ``loss``), ``run`` (the two passes, the second through finetune's
loop)."""

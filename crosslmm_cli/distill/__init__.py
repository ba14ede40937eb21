"""Label-free self-distillation of a CrossLMM from the full-token model inside its own checkpoint
(issue 35). So far: the loss (``loss``) and the teacher's top-k log-probabilities at answer tokens
with the head run over the answers only (``teacher``); the cached teacher pass and the command come
next."""

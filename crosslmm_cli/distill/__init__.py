"""Label-free self-distillation of a CrossLMM from the full-token model inside its own checkpoint
(issue 35). So far: the loss (``loss``); the teacher pass and the command come next."""

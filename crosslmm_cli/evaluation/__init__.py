"""`crosslmm eval`: benchmark readers, lmms-eval's prompts and scoring, and the resumable runner."""

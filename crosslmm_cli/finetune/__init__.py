"""`crosslmm finetune`: train CrossLMM on a folder of videos and annotations."""

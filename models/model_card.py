"""The README.md (model card) of every checkpoint crosslmm writes: transformers does not know the
``crosslmm`` model type, and without ``import crosslmm`` its Auto classes fail in ways that do not
say so (AutoProcessor returns a bare tokenizer, the model classes ask for a newer transformers).
The card says what to do; its Python block is run by the tests as written."""

from __future__ import annotations

import os

CARD = """---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- crosslmm
- video-text-to-text
---

# CrossLMM checkpoint

A CrossLMM model (`model_type: crosslmm`): a video language model that keeps {tokens} tokens per frame in the
LLM and lets them and the text read each frame's full-resolution tokens through cross-attention.
{state}

transformers does not ship this architecture, and no remote code comes with it: **import `crosslmm`
first** (`pip install` the crosslmm project), which registers it with the Auto classes. Without that
import, `AutoProcessor` returns a bare tokenizer and the Auto model classes ask for a newer
transformers.

```python
import crosslmm  # registers CrossLMM with transformers' Auto classes
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("{path}")
model = AutoModelForImageTextToText.from_pretrained("{path}")
messages = [{{"role": "user", "content": [{{"type": "video", "path": "video.mp4"}},
                                         {{"type": "text", "text": "What happens?"}}]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       num_frames=8)
answer = model.generate(**inputs, max_new_tokens=32)
print(processor.batch_decode(answer[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```

From the command line: `crosslmm ask video.mp4 "What happens?" --model {path}`.
"""

UNTRAINED = ("Its cross-attention and projector are not trained yet (random or closed): train it with "
             "`crosslmm finetune` (Stage I, then Stage II) before its answers mean anything.")


def write_model_card(config, path: str | os.PathLike) -> None:
    """``path``/README.md for a checkpoint of ``config``."""
    state = UNTRAINED if getattr(config, "needs_training", False) else ""
    text = CARD.format(tokens=config.tokens_per_frame, state=state, path=os.path.basename(os.path.normpath(path)))
    with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as card:
        card.write(text)

"""The ``{"video", "question", "options", "answer"}`` row that ``crosslmm eval jsonl`` scores and
``crosslmm finetune`` trains on: how its question is asked and what its answer is, in one place, so
that a row is trained on the prompt it is scored with. Multiple choice: the question, one
"A. option" line per option, then Video-MME's default post-prompt; the answer is the option's letter
(given as the letter or as the option's text). Open questions are asked and answered as they are."""

from __future__ import annotations

import string

# Video-MME's "default" post_prompt in lmms-eval, which the jsonl task borrows
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."


def option_letters(row: dict) -> list[str]:
    return list(string.ascii_uppercase[: len(row.get("options") or [])])


def question_prompt(row: dict) -> str:
    if not row.get("options"):
        return str(row["question"])
    options = "\n".join(f"{letter}. {option}" for letter, option in zip(option_letters(row), row["options"]))
    return f"{row['question']}\n{options}{POST_PROMPT}"


def answer_target(row: dict) -> str:
    answer = str(row["answer"]).strip()
    if row.get("options") and answer not in option_letters(row) and answer in row["options"]:
        return option_letters(row)[row["options"].index(answer)]
    return answer

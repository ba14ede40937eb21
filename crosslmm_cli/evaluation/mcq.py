"""Multiple-choice answer extraction, exactly as lmms-eval does it.

Ported from lmms-eval 0.7.3 (`lmms_eval/tasks/_task_utils/mcq_extract.py`, the parser its Video-MME
task uses today, and `extract_characters_regex` of its older Video-MME task, the official Video-MME
parser, kept with its original quirks: two prefixes lack the comma between them). Scores must agree
with lmms-eval's on the same responses; tests check every change against recorded outputs.
"""

from __future__ import annotations

import re

DEFAULT_CHOICES = ["A", "B", "C", "D", "E", "F", "G", "H"]

ANSWER_PHRASES = [
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
    "옵션", "정답은", "답은", "답:",  # Korean
    "答案是", "答案为", "选",  # Chinese
    "答えは",  # Japanese
]

# higher = more confident that this is the intended answer
FORMAT_PRIORITY = {
    "start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
    "space": 2, "fallback": 0,
}


def extract_mcq_answer(response: str, choices: list[str] | None = None) -> str:
    """The choice letter in ``response`` ("" when none): among all matches of the known formats,
    the highest-priority format wins, and within a format the last occurrence."""
    if not response or not response.strip():
        return ""
    all_choices = choices or DEFAULT_CHOICES
    text = response.strip()
    for char in [",", ".", "!", "?", ";", ":", "'", '"']:
        text = text.strip(char)
    text = " " + text + " "
    candidates: list[tuple[str, int, str]] = []  # (letter, position, format)
    for pattern, name in [("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"),
                          ("{} ", "space")]:
        for ch in all_choices:
            if pattern.format(ch) in text:
                candidates.append((ch, text.rfind(pattern.format(ch)), name))
    text_lower = text.lower()
    for phrase in ANSWER_PHRASES:
        index = text_lower.find(phrase)
        if index != -1:
            after = index + len(phrase)
            for ch in all_choices:
                position = text.find(ch, after)
                if position != -1:
                    candidates.append((ch, position, "phrase"))
    stripped = text.strip()
    for ch in all_choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((ch, 0, "start"))
    for ch in all_choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((ch, len(text) - 1, "end"))
    if not candidates:
        for ch in all_choices:
            if ch in text:
                candidates.append((ch, text.rfind(ch), "fallback"))
    if not candidates:
        return ""
    candidates.sort(key=lambda c: (FORMAT_PRIORITY.get(c[2], 0), c[1]), reverse=True)
    return candidates[0][0]


def official_videomme_parser(response: str) -> str:
    """Video-MME's own parser (lmms-eval's Video-MME task before 0.7): strip answer prefixes, give
    up on long answers without a letter, else the first A-D."""
    s = response.strip()
    answer_prefixes = [
        "The best answer is",
        "The correct answer is",
        "The answer is",
        "The answer",
        "The best option is" "The correct option is",  # sic: the original misses the comma
        "Best answer:" "Best option:",  # sic
    ]
    for answer_prefix in answer_prefixes:
        s = s.replace(answer_prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    matches = re.search(r"[ABCD]", s)
    if matches is None:
        return ""
    return matches[0]

"""Benchmarks: read the official local files, and prompt, parse and score as lmms-eval 0.7.3 does.

A :class:`Task` turns a data folder into :class:`Doc` s (one question each), writes the prompt of a
doc, scores one response (lmms-eval's ``process_results``) and aggregates the scored samples
(lmms-eval's aggregation, same denominators, same scale). Each function names its lmms-eval twin.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..question_rows import POST_PROMPT, answer_target, option_letters, question_prompt
from .mcq import extract_mcq_answer, official_videomme_parser

LMMS_EVAL_VERSION = "0.7.3"


@dataclass
class Doc:
    doc_id: int
    video: Path | None  # None when the benchmark names no video file (recorded as missing)
    data: dict  # the benchmark's own row, JSON-serialisable ("doc" in the samples file)
    task: str  # the (sub)task it belongs to


@dataclass
class Task:
    name: str
    metric: str  # lmms-eval's metric name (the key in results.json is "<metric>,none")
    load: Callable[[Path], list[Doc]]
    prompt: Callable[[Doc], str]
    target: Callable[[Doc], str]
    process: Callable[[Doc, str, str, random.Random], dict]  # (doc, response, parser, rng) -> per-sample dict
    aggregate: Callable[[list[dict]], float]  # lmms-eval's aggregation of the per-sample dicts
    breakdown: Callable[[list[dict]], dict] = lambda processed: {}
    max_new_tokens: int = 16  # the task's generation_kwargs; lmms-eval's LLaVA models default to 1024
    subtasks: list[str] = field(default_factory=list)  # lmms-eval group members, if a group
    parsers: tuple[str, ...] = ("lmms-eval",)
    # for lmms-eval's standard errors: the item its aggregation sees in our per-sample value, whether
    # that aggregation is its plain `mean` (which has a standard error), the clustered SE's key
    item: Callable[[dict], object] = lambda processed: processed
    mean_aggregation: bool = False
    cluster_key: str | None = None


def _read_table(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pandas

        return pandas.read_parquet(path).to_dict(orient="records")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    return json.loads(path.read_text(encoding="utf-8-sig"))


def _plain(value):
    """numpy arrays and scalars from parquet -> JSON-serialisable Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _require(path: Path, pattern: str, what: str) -> list[Path]:
    found = sorted(path.glob(pattern))
    if not found:
        raise UserError(f"{path} holds no {what} ({pattern}); point --data-dir at the benchmark's folder")
    return found


# ---- Video-MME ------------------------------------------------------------------------------------
VIDEOMME_DURATIONS = ["short", "medium", "long"]
VIDEOMME_OPTION_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
VIDEOMME_POST_PROMPT = POST_PROMPT  # its "default" kwargs


def videomme_load(data_dir: Path) -> list[Doc]:
    """Video-MME as lmms-eval/Video-MME ships it: ``videomme/test-*.parquet`` (videoID, question,
    options "A. ...", answer letter, duration, domain, sub_category, task_type, question_id),
    videos in ``data/<videoID>.mp4`` (or .MP4 / .mkv), subtitles in ``subtitle/<videoID>.srt``."""
    rows = [row for table in _require(data_dir, "**/*.parquet", "Video-MME parquet file") for row in _read_table(table)]
    docs = []
    for doc_id, row in enumerate(rows):
        row = {key: _plain(value) for key, value in row.items()}
        video = None
        for suffix in (".mp4", ".MP4", ".mkv"):  # lmms-eval's videomme_doc_to_visual order
            candidate = data_dir / "data" / f"{row['videoID']}{suffix}"
            if candidate.exists():
                video = candidate
                break
        docs.append(Doc(doc_id, video or data_dir / "data" / f"{row['videoID']}.mp4", row, "videomme"))
    return docs


def videomme_prompt(doc: Doc) -> str:
    """videomme_doc_to_text with the default post_prompt."""
    question = doc.data["question"] + "\n" + "\n".join(f"{option}" for option in doc.data["options"])
    return VIDEOMME_OPTION_PROMPT + "\n" + question + "\n" + VIDEOMME_POST_PROMPT


def videomme_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """videomme_process_results (its score field compares case-insensitively, its aggregation not)."""
    row = doc.data
    pred = extract_mcq_answer(response, ["A", "B", "C", "D"]) if parser == "lmms-eval" else official_videomme_parser(response)
    return {
        "question_id": row["question_id"], "duration": row["duration"], "category": row["domain"],
        "sub_category": row["sub_category"], "task_category": row["task_type"], "pred_answer": pred,
        "answer": row["answer"], "score": 1.0 if pred.lower() == row["answer"].lower() else 0.0,
        "videoID": row["videoID"],
    }


def _percent(correct: int, answered: int) -> float:
    return 100 * correct / answered if answered > 0 else 0


def videomme_aggregate(processed: list[dict]) -> float:
    """videomme_aggregate_results: percent of answered questions whose letter equals the answer."""
    return _percent(sum(p["pred_answer"] == p["answer"] for p in processed), len(processed))


def videomme_breakdown(processed: list[dict]) -> dict:
    """The per-duration, domain and task-type percentages lmms-eval logs."""
    result = {}
    for name, key in (("duration", "duration"), ("domain", "category"), ("task_type", "task_category")):
        groups: dict[str, list[dict]] = {}
        for p in processed:
            groups.setdefault(p[key], []).append(p)
        result[name] = {group: round(videomme_aggregate(items), 4) for group, items in sorted(groups.items())}
    return result


# subtitles: videomme_doc_to_text_subtitle with the default frame_num = 32
SUBTITLE_FRAMES = 32
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')


def _srt_time(text: str) -> float:
    hours, minutes, rest = text.split(":")
    seconds, millis = rest.split(",")
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def _load_subtitles(path: Path) -> dict[tuple[float, float], str]:
    subtitles = {}
    for section in path.read_text(encoding="utf-8").split("\n\n"):
        if section.strip():
            lines = section.split("\n")
            if len(lines) >= 3:
                start, end = lines[1].split(" --> ")
                subtitles[(_srt_time(start), _srt_time(end))] = " ".join(line for line in lines[2:])
    return subtitles


def videomme_subtitle_text(video: Path, subtitle: Path) -> str:
    """The subtitle lines shown at 32 uniformly spaced frames (np.linspace over OpenCV's frame count)."""
    import cv2
    import numpy as np

    capture = cv2.VideoCapture(str(video))
    fps, total = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    spans = [(int(start * fps), int(end * fps), text) for (start, end), text in _load_subtitles(subtitle).items()]
    sampled = np.linspace(0, total - 1, SUBTITLE_FRAMES, dtype=int).tolist()
    shown = list({i for frame in sampled for i, span in enumerate(spans) if span[0] <= frame < span[1]})
    lines = []
    for index in shown:
        found = _FONT.findall(spans[index][2])
        if found:
            lines.append(found[0])
    return "\n".join(lines)


def videomme_subtitle_prompt(doc: Doc, timed_on_found_video: bool = False) -> str:
    """videomme_doc_to_text_subtitle with its default kwargs. lmms-eval times the subtitles on
    ``data/<videoID>.mp4`` whatever the video's container, so an ``.mkv`` (or ``.MP4``) video gets an
    empty subtitle block; ``timed_on_found_video`` times them on the video actually found instead."""
    subtitle_path = doc.video.parent.parent / "subtitle" / f"{doc.data['videoID']}.srt"
    timing_video = doc.video if timed_on_found_video else doc.video.parent / f"{doc.data['videoID']}.mp4"
    subtitle = videomme_subtitle_text(timing_video, subtitle_path) if subtitle_path.exists() else "No subtitles available"
    question = doc.data["question"] + "\n" + "\n".join(f"{option}" for option in doc.data["options"])
    return ("This video's subtitles are listed below: \n" + subtitle + "\n" + VIDEOMME_OPTION_PROMPT + "\n"
            + question + "\n" + "The best answer is:")


# ---- MVBench --------------------------------------------------------------------------------------
MVBENCH_FOLDERS = {  # lmms-eval's DATA_LIST
    "object_interaction": "star/Charades_segment", "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment", "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation", "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos", "object_shuffle": "perception/videos", "egocentric_navigation": "vlnqa",
    "moving_direction": "clevrer/video_validation", "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos", "scene_transition": "scene_qa/video",
    "state_change": "perception/videos", "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4", "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation", "object_existence": "clevrer/video_validation",
    "action_count": "perception/videos",
}
MVBENCH_ORDER = [  # lmms-eval's mvbench group
    "action_sequence", "moving_count", "action_prediction", "episodic_reasoning", "action_antonym", "action_count",
    "scene_transition", "object_shuffle", "object_existence", "fine_grained_pose", "unexpected_action",
    "moving_direction", "state_change", "object_interaction", "character_order", "action_localization",
    "counterfactual_inference", "fine_grained_action", "moving_attribute", "egocentric_navigation",
]


def mvbench_load(data_dir: Path) -> list[Doc]:
    """MVBench as OpenGVLab/MVBench ships it: ``json/<task>.json`` (video, question, candidates,
    answer text) and the videos under ``video/<source folder>/`` (or the source folders at the top,
    as lmms-eval's cache has them; clevrer and star also under ``data0613/``)."""
    docs = []
    for task in MVBENCH_ORDER:
        table = next(iter(sorted(data_dir.glob(f"**/{task}.json"))), None)
        if table is None:
            continue
        folder = MVBENCH_FOLDERS[task]
        for row in _read_table(table):
            places = [data_dir / folder, data_dir / "video" / folder, data_dir / "data0613" / folder,
                      data_dir / "video" / "data0613" / folder]
            video = next((p / row["video"] for p in places if (p / row["video"]).exists()), places[0] / row["video"])
            docs.append(Doc(len(docs), video, row, f"mvbench_{task}"))
    if not docs:
        raise UserError(f"{data_dir} holds none of MVBench's json/<task>.json files; point --data-dir at MVBench")
    return docs


def mvbench_prompt(doc: Doc) -> str:
    """mvbench_doc_to_text with the default post_prompt."""
    options = "".join(f"({string.ascii_uppercase[i]}) {option}\n" for i, option in enumerate(doc.data["candidates"]))
    return "Question:" + doc.data["question"] + "\nOption:\n" + options + "Only give the best option.\n"


def _mcq_acc(answer: str | None, pred: str) -> int:
    """lmms-eval's mvbench mcq_acc, verbatim in behaviour."""
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(\d)(\,)(\d)")
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def process_punctuation(in_text):
        out_text = in_text
        for p in punct:
            if (p + " " in in_text or " " + p in in_text) or (re.search(comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        return period_strip.sub("", out_text, re.UNICODE)

    def process(text):
        match = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE).match(text.strip())
        if match:
            return match.group(1).upper()
        text = text.replace("\n", " ").replace("\t", " ").strip()
        text = process_punctuation(text)
        text = text.strip("'").strip('"').strip(")").strip("(").strip().lower()
        letter = re.search(r"\b([A-E])\b", text, re.IGNORECASE)
        return letter.group(1).upper() if letter else text

    return 1 if process(pred) == process(answer) else 0


def mvbench_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """mvbench_process_results."""
    gt = next((string.ascii_uppercase[i] for i, c in enumerate(doc.data["candidates"]) if c == doc.data["answer"]), None)
    return {"pred_answer": response, "gt_answer": gt, "score": _mcq_acc(gt, response)}


def mvbench_aggregate(processed: list[dict]) -> float:
    """mvbench_aggregate_results: empty responses leave the denominator."""
    answered = [p for p in processed if p["pred_answer"] != ""]
    return _percent(sum(p["score"] for p in answered), len(answered))


# ---- our own jsonl --------------------------------------------------------------------------------
QUESTION_FIELDS = {"video", "question", "answer"}


def jsonl_files(data_dir: Path) -> tuple[list[Path], list[Path]]:
    """The question files ``--data-dir`` names (a ``.jsonl`` file, or every one in a folder whose
    rows are all questions), and the other ``.jsonl`` files of the folder (prompts, training rows,
    a training file that mixes questions with other rows). A line that is not JSON does not decide:
    :func:`jsonl_load` names it."""
    if data_dir.is_file():
        return [data_dir], []
    questions, others = [], []
    for table in _require(data_dir, "*.jsonl", "jsonl file"):
        (questions if only_questions(table) else others).append(table)
    if not questions:
        raise UserError(f"{data_dir} holds no file of {{video, question, answer}} rows (.jsonl); point --data-dir at "
                        "the questions file or its folder")
    return questions, others


def only_questions(table: Path) -> bool:
    """Whether every JSON row of ``table`` is a question (at least one); read up to the first that is not."""
    asked = False
    with open(table, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:
                continue
            if row is None:
                continue
            if not (isinstance(row, dict) and QUESTION_FIELDS <= set(row)):
                return False
            asked = True
    return asked


def jsonl_load(data_dir: Path) -> list[Doc]:
    """``*.jsonl`` lines {"video": path relative to the file's folder, "question", "options": [...]
    (optional), "answer": a letter, an option's text, or free text}, from ``data_dir`` if it is such
    a file, else from each file in it whose first row is one."""
    docs = []
    for table in jsonl_files(data_dir)[0]:
        for number, line in enumerate(table.read_text(encoding="utf-8-sig").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{table.name} line {number}: malformed JSON ({error.msg})") from None
            if not isinstance(row, dict) or not QUESTION_FIELDS <= set(row):
                raise UserError(f"{table.name} line {number}: not a {{video, question, answer}} object")
            docs.append(Doc(len(docs), table.parent / row["video"], row, "jsonl"))
    return docs


def jsonl_prompt(doc: Doc) -> str:
    """As :mod:`crosslmm_cli.question_rows` asks it (training asks it the same way)."""
    return question_prompt(doc.data)


def jsonl_target(doc: Doc) -> str:
    return answer_target(doc.data)


def _normalise(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text).strip().lower()


def jsonl_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    target = jsonl_target(doc)
    if doc.data.get("options"):
        pred = extract_mcq_answer(response, option_letters(doc.data))
        correct = pred == target
    else:
        pred = response.strip()
        correct = _normalise(pred) == _normalise(target)
    return {"pred_answer": pred, "answer": target, "score": 1.0 if correct else 0.0}


def jsonl_aggregate(processed: list[dict]) -> float:
    return _percent(sum(p["score"] for p in processed), len(processed))


def _find_tables(data_dir: Path, patterns: list[str], what: str) -> list[dict]:
    for pattern in patterns:
        tables = sorted(data_dir.glob(pattern))
        if tables:
            return [{key: _plain(value) for key, value in row.items()} for table in tables for row in _read_table(table)]
    raise UserError(f"{data_dir} holds no {what} ({' or '.join(patterns)}); point --data-dir at the benchmark's folder")


def _video(folder: Path, name: str, suffixes: tuple[str, ...] = ("",)) -> Path:
    """The first of ``folder/name+suffix`` that exists (lmms-eval's lookup order), else the first."""
    candidates = [folder / f"{name}{suffix}" for suffix in suffixes]
    return next((c for c in candidates if c.exists()), candidates[0])


# ---- MLVU (dev, multiple choice) ------------------------------------------------------------------
MLVU_TASK_TYPES = {"anomaly_reco", "count", "ego", "needle", "order", "plotQA", "topic_reasoning"}


def mlvu_load(data_dir: Path) -> list[Doc]:
    """MLVU dev as sy1998/MLVU_dev ships it: parquet/json rows (video_name, question with its options,
    answer letter, task_type), videos at ``<folder>/<video_name>`` (or under ``video/``)."""
    rows = _find_tables(data_dir, ["**/*.parquet", "**/*.json"], "MLVU dev table")
    return [Doc(i, _video(data_dir, row["video_name"]) if (data_dir / row["video_name"]).exists()
                else _video(data_dir / "video", row["video_name"]), row, "mlvu_dev") for i, row in enumerate(rows)]


def mlvu_prompt(doc: Doc) -> str:
    """mlvu_doc_to_text with the default post_prompt."""
    return doc.data["question"] + "\nOnly give the best option.\nBest option: ("


def mlvu_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """mlvu_process_results."""
    return {"question_id": doc.data["question"], "task_type": doc.data["task_type"],
            "pred_answer": extract_mcq_answer(response, ["A", "B", "C", "D"]), "answer": doc.data["answer"]}


def _mlvu_by_type(processed: list[dict]) -> dict[str, float]:
    counts = {task_type: [0, 0] for task_type in MLVU_TASK_TYPES}
    for p in processed:
        if p["task_type"] not in counts:
            raise UserError(f"MLVU dev has no task type {p['task_type']!r} (lmms-eval knows {sorted(MLVU_TASK_TYPES)})")
        counts[p["task_type"]][0] += p["pred_answer"] == p["answer"]
        counts[p["task_type"]][1] += 1
    return {task_type: _percent(*counts[task_type]) for task_type in sorted(MLVU_TASK_TYPES)}


def mlvu_aggregate(processed: list[dict]) -> float:
    """mlvu_aggregate_results_dev: M-Avg, the mean over all seven task types (absent types count 0)."""
    return sum(_mlvu_by_type(processed).values()) / len(MLVU_TASK_TYPES)


# ---- LongVideoBench (val, video) -------------------------------------------------------------------
def longvideobench_load(data_dir: Path) -> list[Doc]:
    """LongVideoBench as longvideobench/LongVideoBench ships it: ``validation-*.parquet``, what
    lmms-eval reads (video_path, question, option0..4 with "N/A" padding, correct_choice index,
    duration_group, question_category, id), videos in ``videos/``. The download's ``lvb_val.json``
    (options as a ``candidates`` list) is read only where the parquet is absent, padded the same way."""
    rows = _find_tables(data_dir, ["**/*validation*.parquet", "**/lvb_val.json"], "LongVideoBench validation table")
    for row in rows:
        if "option0" not in row and isinstance(row.get("candidates"), list):
            row.update({f"option{i}": (row["candidates"][i] if i < len(row["candidates"]) else "N/A") for i in range(5)})
    return [Doc(i, data_dir / "videos" / row["video_path"], row, "longvideobench_val_v") for i, row in enumerate(rows)]


def _lvb_options(row: dict) -> list[str]:
    return [row.get(f"option{i}") for i in range(5) if row.get(f"option{i}") != "N/A"]


def longvideobench_prompt(doc: Doc) -> str:
    """longvideobench_doc_to_text with the default kwargs."""
    options = "\n".join(". ".join([chr(ord("A") + i), option]) for i, option in enumerate(_lvb_options(doc.data)))
    return f"{doc.data['question']}\n{options}\nAnswer with the option's letter from the given choices directly.\n"


def _lvb_parse(response: str, choices: list[str], rng: random.Random) -> str:
    """parse_multi_choice_response of lmms-eval's LongVideoBench (a random choice when nothing parses)."""
    s = response.strip()
    for prefix in ["The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                   "The correct option is", "Best answer:", "Best option:"]:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return rng.choice(choices)
    matches = re.search(r"[ABCDE]", s)
    return rng.choice(choices) if matches is None else matches[0]


def longvideobench_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """longvideobench_process_results (its choices stop at the first "N/A")."""
    choices = []
    for i in range(5):
        if doc.data.get(f"option{i}") == "N/A":
            break
        choices.append(chr(ord("A") + i))
    row = doc.data
    return {"id": row["id"], "duration_group": row["duration_group"], "question_category": row["question_category"],
            "answer": chr(ord("A") + int(row["correct_choice"])), "parsed_pred": _lvb_parse(response, choices, rng or random.Random(0))}


def longvideobench_aggregate(processed: list[dict]) -> float:
    """longvideobench_aggregate_results: the fraction correct, rounded to 5 decimals (each sample
    counts once in its duration group and once in its category, so the pooled value is the plain one)."""
    subsets: dict = {}
    for p in processed:
        subsets.setdefault(p["duration_group"], []).append(p)
        subsets.setdefault(p["question_category"], []).append(p)
    correct = sum(sum(s["answer"] == s["parsed_pred"] for s in items) for items in subsets.values())
    total = sum(len(items) for items in subsets.values())
    return round(correct / total, 5) if total else 0


def longvideobench_breakdown(processed: list[dict]) -> dict:
    groups: dict[str, dict[str, list]] = {"duration_group": {}, "question_category": {}}
    for p in processed:
        for key in groups:
            groups[key].setdefault(str(p[key]), []).append(p["answer"] == p["parsed_pred"])
    return {key: {name: round(sum(v) / len(v), 5) for name, v in sorted(values.items())} for key, values in groups.items()}


# ---- Perception Test (multiple-choice val) --------------------------------------------------------
def perceptiontest_load(data_dir: Path) -> list[Doc]:
    """Perception Test mc val as lmms-eval/PerceptionTest_Val ships it: mc_question_val parquet/json
    rows (video_name, question, options, answer_id, area, reasoning, tag), ``videos/<video_name>.mp4``."""
    rows = _find_tables(data_dir, ["**/mc_question_val*/*.parquet", "**/mc_question_val*.parquet",
                                   "**/mc_question_val*.json"], "Perception Test mc_question_val table")
    return [Doc(i, _video(data_dir / "videos", row["video_name"], (".mp4", ".MP4")), row, "perceptiontest_val_mc")
            for i, row in enumerate(rows)]


def perceptiontest_prompt(doc: Doc) -> str:
    """perceptiontest_val_doc_to_text."""
    question = doc.data["question"]
    for index, option in enumerate(doc.data["options"]):
        question += "\n" + ("A. " if index == 0 else "B. " if index == 1 else "C. ") + option
    return question + "\nAnswer with the option's letter from the given choices directly."


def perceptiontest_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """perceptiontest_val_process_results_mc."""
    match = re.search(r"\b([A-D])\b", response.strip())
    index = {"A": 0, "B": 1, "C": 2, "D": 3}.get(match.group(1).upper() if match else "", -1)
    return {"video_name": doc.data["video_name"], "question": doc.data["question"], "pred_id": index,
            "answer_id": doc.data["answer_id"], "correct": 1 if index == int(doc.data["answer_id"]) else 0}


def _fraction(processed: list[dict], key: str) -> float:
    return sum(p[key] == 1 for p in processed) / len(processed)


# ---- NExT-QA (multiple choice) ---------------------------------------------------------------------
OPTIONS = ["A", "B", "C", "D", "E"]


def nextqa_load(data_dir: Path) -> list[Doc]:
    """NExT-QA mc as lmms-eval/NExTQA ships it: MC test parquet rows (video, question, a0..a4, answer
    index), videos ``NExTVideo/<video>.mp4``."""
    rows = _find_tables(data_dir, ["**/MC/*.parquet", "**/MC*.parquet", "**/*mc*.json"], "NExT-QA MC table")
    return [Doc(i, _video(data_dir / "NExTVideo", str(row["video"]), (".mp4", ".MP4")), row, "nextqa_mc_test")
            for i, row in enumerate(rows)]


def nextqa_prompt(doc: Doc) -> str:
    """nextqa_doc_to_text_mc (the task sets no pre/post prompt)."""
    lines = [doc.data["question"].strip()] + [f"{OPTIONS[i]}. {doc.data[f'a{i}'].strip()}" for i in range(5)]
    return "\n".join(lines)


def _mmmu_parse(response: str, index2ans: dict[str, str], rng: random.Random, last: bool) -> tuple[str, bool]:
    """MMMU-style parse_multi_choice_response as lmms-eval's NExT-QA (``last``: the latest mention
    wins) and EgoSchema (the earliest wins; every format collected) tasks have it."""
    choices = list(index2ans)
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, with_brackets, candidates = True, False, []
    if last:  # NExT-QA: the first format that matches
        candidates = [c for c in choices if f"({c})" in response]
        with_brackets = bool(candidates)
        candidates = candidates or [c for c in choices if f"{c} " in response] or [c for c in choices if f"{c}." in response]
        marks = {c: (f"({c})" if with_brackets else f" {c} ") for c in candidates}
    else:  # EgoSchema: all formats, as written
        candidates = ([f"({c})" for c in choices if f"({c})" in response] + [f"{c} " for c in choices if f"{c} " in response]
                      + [f"{c}." for c in choices if f"{c}." in response])
        marks = {c: c for c in candidates}
    if not candidates and len(response.split()) > 5:
        candidates = [index for index, answer in index2ans.items() if answer.lower() in response.lower()]
        index_ans = False
    if not candidates:
        return rng.choice(choices), False
    if len(candidates) > 1:
        if index_ans:
            starts = [response.rfind(marks[c]) for c in candidates]
        else:
            starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
        pick = max if last else min
        chosen = candidates[starts.index(pick(starts))]  # numpy's argmax/argmin: the first extreme
    else:
        chosen = candidates[0]
    return chosen.replace("(", "").replace(")", "").replace(".", "").strip(), True


def nextqa_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """nextqa_mc_process_results."""
    index2ans = {OPTIONS[i]: doc.data[f"a{i}"].strip() for i in range(5)}
    parsed, _ = _mmmu_parse(response, index2ans, rng or random.Random(0), last=True)
    return {"exact_match": parsed == OPTIONS[int(doc.data["answer"])]}


def nextqa_aggregate(processed: list[dict]) -> float:
    """lmms-eval's "mean" of exact_match: a fraction."""
    return sum(p["exact_match"] for p in processed) / len(processed)


# ---- EgoSchema (the subset with public answers) ---------------------------------------------------
def egoschema_load(data_dir: Path) -> list[Doc]:
    """EgoSchema's 500-question subset as lmms-eval/egoschema ships it: Subset parquet rows
    (video_idx, question, option[5], answer index), ``videos/<video_idx>.mp4``."""
    rows = _find_tables(data_dir, ["**/Subset/*.parquet", "**/Subset*.parquet", "**/subset*.json"],
                        "EgoSchema Subset table")
    return [Doc(i, _video(data_dir / "videos", row["video_idx"], (".mp4", ".MP4")), row, "egoschema_subset")
            for i, row in enumerate(rows)]


def egoschema_prompt(doc: Doc) -> str:
    """egoschema_doc_to_text."""
    return doc.data["question"] + "".join("\n" + op for op in doc.data["option"]) + (
        "\nAnswer with the option's letter from the given choices directly.")


def egoschema_process(doc: Doc, response: str, parser: str, rng: random.Random | None = None) -> dict:
    """egoschema_process_results_generation (its "score" part)."""
    index2ans = {OPTIONS[i]: doc.data["option"][i].strip() for i in range(5)}
    parsed, _ = _mmmu_parse(response, index2ans, rng or random.Random(0), last=False)
    return {"pred": {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4}.get(parsed, -1), "ground_truth": doc.data["answer"]}


def egoschema_aggregate(processed: list[dict]) -> float:
    """egoschema_aggregate_score: a fraction."""
    return sum(str(p["ground_truth"]) == str(p["pred"]) for p in processed) / len(processed)


TASKS: dict[str, Task] = {
    "videomme": Task("videomme", "videomme_perception_score", videomme_load, videomme_prompt,
                     lambda doc: doc.data["answer"], videomme_process, videomme_aggregate, videomme_breakdown,
                     parsers=("lmms-eval", "official"), cluster_key="videoID"),
    "videomme_w_subtitle": Task("videomme_w_subtitle", "videomme_perception_score", videomme_load,
                                videomme_subtitle_prompt, lambda doc: doc.data["answer"], videomme_process,
                                videomme_aggregate, videomme_breakdown, parsers=("lmms-eval", "official")),
    "mvbench": Task("mvbench", "mvbench_accuracy", mvbench_load, mvbench_prompt, lambda doc: doc.data["answer"],
                    mvbench_process, mvbench_aggregate, subtasks=[f"mvbench_{t}" for t in MVBENCH_ORDER]),
    "mlvu": Task("mlvu_dev", "mlvu_percetion_score", mlvu_load, mlvu_prompt, lambda doc: doc.data["answer"],
                 mlvu_process, mlvu_aggregate, lambda processed: {"task_type": _mlvu_by_type(processed)}),
    "longvideobench": Task("longvideobench_val_v", "lvb_acc", longvideobench_load, longvideobench_prompt,
                           lambda doc: str(doc.data["correct_choice"]), longvideobench_process, longvideobench_aggregate,
                           longvideobench_breakdown, max_new_tokens=32),
    "perceptiontest": Task("perceptiontest_val_mc", "accuracy", perceptiontest_load, perceptiontest_prompt,
                           lambda doc: str(doc.data["answer_id"]), perceptiontest_process,
                           lambda processed: _fraction(processed, "correct"), max_new_tokens=1024),
    "nextqa": Task("nextqa_mc_test", "exact_match", nextqa_load, nextqa_prompt, lambda doc: str(doc.data["answer"]),
                   nextqa_process, nextqa_aggregate, max_new_tokens=1024,
                   item=lambda processed: processed["exact_match"], mean_aggregation=True),
    "egoschema": Task("egoschema_subset", "score", egoschema_load, egoschema_prompt, lambda doc: str(doc.data["answer"]),
                      egoschema_process, egoschema_aggregate),
    "jsonl": Task("jsonl", "accuracy", jsonl_load, jsonl_prompt, jsonl_target, jsonl_process, jsonl_aggregate,
                  max_new_tokens=64),
}

"""The resumable evaluation run, in lmms-eval's output layout.

Samples are appended to ``samples_<task>.jsonl`` as they finish (an interrupt loses at most the
sample in flight; rerunning skips what is there). Questions sharing a video share one decode and one
vision encode. Under ``torchrun`` / ``accelerate launch`` (gloo or nccl), videos are sharded across
ranks, each rank appends to its own file, and rank 0 merges them into the same files a single
process writes.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import json
import random
import statistics
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..jsonl_files import append_row, read_rows, repair_tail
from ..process_group import barrier, distributed
from . import results_file
from .postprocess import DEFAULT_REASONING_TAGS, filtered_response
from .tasks import LMMS_EVAL_VERSION, TASKS, Doc, Task, jsonl_files, videomme_subtitle_prompt


@dataclass
class EvalSettings:
    task: str
    data_dir: Path
    output: Path
    model: str = "crosslmm-ov-0.5b"
    frames: int = 32
    tokens_per_frame: int | None = None
    quantize: str | None = None
    device: str | None = None
    limit: int | None = None  # evaluate only the first N questions
    parser: str = "lmms-eval"  # answer extraction: "lmms-eval" (current) or "official" (Video-MME's own)
    responses: Path | None = None  # score this samples file instead of running a model
    max_new_tokens: int | None = None  # override the task's generation length (lmms-eval's when None)
    # reasoning blocks cut before scoring, lmms-eval's default; None scores the stripped text as it is
    reasoning_tags: list[list[str]] | None = field(default_factory=lambda: DEFAULT_REASONING_TAGS)
    subtitles_on_found_video: bool = False  # videomme_w_subtitle: time subtitles on an .mkv too (lmms-eval does not)
    batch_size: int | None = None  # questions answered together; default_batch_size(device) when None

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"unknown benchmark {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.parser not in TASKS[self.task].parsers:
            raise UserError(f"--parser {self.parser} does not apply to {self.task}; it has {', '.join(TASKS[self.task].parsers)}")
        questions_file = self.task == "jsonl" and self.data_dir.suffix == ".jsonl" and self.data_dir.is_file()
        if not self.data_dir.is_dir() and not questions_file:
            raise UserError(f"--data-dir {self.data_dir} is not a folder; point it at the benchmark's files")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size is not None and self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.responses is not None and not self.responses.exists():
            raise UserError(f"--responses {self.responses}: no such file or folder")


# ---- samples files ----------------------------------------------------------------------------------
def check_generation_settings(settings: EvalSettings, task: Task, has_samples: bool, write: bool) -> None:
    """Samples of one output folder come from one model and one generation setting: a resume with
    other settings is refused before any weight is loaded; the settings are written with the first
    sample."""
    path = settings.output / "generation_settings.json"
    model = str(Path(settings.model).resolve()) if Path(settings.model).exists() else settings.model
    now = {"task": task.name, "model": model, "frames": settings.frames, "tokens_per_frame": settings.tokens_per_frame,
           "quantize": settings.quantize, "max_new_tokens": settings.max_new_tokens or task.max_new_tokens}
    if has_samples and path.exists():
        saved = json.loads(path.read_text())
        changed = [name for name in now if saved.get(name) != now[name]]
        if changed:
            differences = "; ".join(f"--{n.replace('_', '-')} {saved.get(n)!r} then, {now[n]!r} now" for n in changed)
            raise UserError(f"{settings.output} holds samples made with other settings ({differences}); rerun with "
                            "the same settings to resume, or choose another --output")
    if write:
        path.write_text(json.dumps(now, indent=1))


def samples_path(output: Path, task: str, rank: int | None = None) -> Path:
    return output / (f"samples_{task}.jsonl" if rank is None else f"samples_{task}.rank{rank}.jsonl")


# ---- running ------------------------------------------------------------------------------------
def by_video(docs: Iterable[Doc]) -> list[list[Doc]]:
    groups: dict[str, list[Doc]] = {}
    for doc in docs:
        groups.setdefault(str(doc.video), []).append(doc)
    return list(groups.values())


def task_of(task: Task, doc: Doc) -> str:
    """The (sub)task a question is scored under: a group member's name, else the task's own."""
    return doc.task if task.subtasks else task.name


def sample_record(task: Task, doc: Doc, prompt: str, response: str, settings: EvalSettings) -> dict:
    """One line of the samples file, with lmms-eval's fields: the raw generation in ``resps``, the
    text scored (stripped, reasoning cut) in ``filtered_resps``."""
    filtered = filtered_response(response, settings.reasoning_tags)
    return {
        "doc_id": doc.doc_id,
        "task": task_of(task, doc),
        "doc": doc.data,
        "target": task.target(doc),
        "doc_hash": results_file.doc_hash(),
        "input": prompt,
        "resps": [[response]],
        "filtered_resps": [filtered],
        task.metric: task.process(doc, filtered, settings.parser),
    }


def default_batch_size(device: str) -> int:
    """Questions answered together when --batch-size is not given: 8 on the CPU (measured, see
    benchmarks/eval_batching.py), 16 on a GPU."""
    return 16 if device.startswith("cuda") else 8


def run_model(settings: EvalSettings, task: Task, docs: list[Doc], path: Path,
              on_sample: Callable[[], None] = lambda: None) -> dict:
    """Answer ``docs`` (``batch_size`` at a time, continuously batched), appending each sample to
    ``path`` as it finishes; efficiency figures of the run. The next video is decoded while the
    current questions are answered."""
    from crosslmm.batched_generation import ContinuousBatch, Sequence, generate_all

    from ..ask import AskSettings, VideoChat, prepare_model
    from ..model_source import pick_device

    if not docs:
        return {}
    ask_settings = AskSettings(model=settings.model, frames=settings.frames, tokens_per_frame=settings.tokens_per_frame,
                               quantize=settings.quantize, device=settings.device,
                               max_new_tokens=settings.max_new_tokens or task.max_new_tokens)
    batch_size = settings.batch_size or default_batch_size(pick_device(settings.device))
    model, processor, quantize = prepare_model(ask_settings)
    batch = ContinuousBatch(model, processor.tokenizer, max_batch_size=batch_size)
    groups, decode_seconds, prefill_seconds = by_video(docs), [], []

    def questions() -> Iterator[Sequence]:
        """Each question as it is about to join the batch; a video that does not decode is recorded."""
        for group, (info, frames, error) in zip(groups, read_ahead(groups, ask_settings)):
            if error is not None:
                for doc in group:  # recorded, counted, reported; the run goes on
                    append_row(path, {"doc_id": doc.doc_id, "task": doc.task, "doc": doc.data,
                                      "missing_video": str(doc.video), "error": str(error)})
                    on_sample()
                continue
            decode_seconds.append(frames.seconds)
            session = VideoChat(model, processor, info, frames, ask_settings, quantize)
            for doc in group:
                prompt = task.prompt(doc)
                inputs = session.first_question_inputs(prompt)
                yield Sequence(inputs["input_ids"], session.memory, ask_settings.sampling, tag=(doc, prompt))

    for sequence in generate_all(batch, questions()):
        doc, prompt = sequence.tag
        prefill_seconds.append(sequence.first_token_at - sequence.prefill_began_at)
        append_row(path, sample_record(task, doc, prompt, sequence.text, settings))
        on_sample()
    device = model.device
    return {
        "mean_prefill_s": round(statistics.fmean(prefill_seconds), 4) if prefill_seconds else None,
        "mean_decode_video_s": round(statistics.fmean(decode_seconds), 4) if decode_seconds else None,
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "visual_tokens_per_frame": model.config.tokens_per_frame,
        "frames": settings.frames,
        "batch_size": batch_size,
        "quantize": quantize,
    }


def read_ahead(groups: list[list[Doc]], ask_settings) -> Iterator[tuple]:
    """(info, frames, None) or (None, None, the UserError) for each group's video, in order, the
    next one decoded in a background thread while the caller works on this one."""
    from ..video import read_frames

    def read(group: list[Doc]) -> tuple:
        try:
            return (*read_frames(group[0].video, ask_settings.request), None)
        except UserError as error:
            return None, None, error

    with ThreadPoolExecutor(1, thread_name_prefix="crosslmm-decode") as pool:
        coming = pool.submit(read, groups[0]) if groups else None
        for following in groups[1:] + [None]:
            current = coming.result()
            coming = pool.submit(read, following) if following is not None else None
            yield current


# ---- scoring ------------------------------------------------------------------------------------
def raw_response(sample: dict) -> str | None:
    """The generation a sample holds: ``resps`` (ours: [[text]]; lmms-eval's: [text], or absent when
    equal to ``filtered_resps``), else ``filtered_resps``; None when neither holds text."""
    value = sample.get("resps", sample.get("filtered_resps"))
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def score(task: Task, docs: list[Doc], samples: list[dict], parser: str,
          reasoning_tags: list[list[str]] | None = DEFAULT_REASONING_TAGS) -> tuple[dict, list[dict]]:
    """Re-score every answered sample with ``parser`` from its raw generation, post-processed as
    lmms-eval does; lmms-eval's results for the task (and each subtask of a group) and the samples,
    sorted by doc_id."""
    by_id = {doc.doc_id: doc for doc in docs}
    rng = random.Random(0)  # parsers that guess when nothing parses draw from it in document order, as lmms-eval seeds
    scored, missing = [], []
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        if "missing_video" in sample:
            missing.append(sample)
            continue
        doc = by_id.get(sample["doc_id"])
        if doc is None:
            raise UserError(f"the samples name doc_id {sample['doc_id']}, which the benchmark folder does not have")
        raw = raw_response(sample) or ""
        response = filtered_response(raw, reasoning_tags)
        scored.append({**sample, "resps": [[raw]], "filtered_resps": [response], "doc_hash": results_file.doc_hash(),
                       task.metric: task.process(doc, response, parser, rng)})
    results = {}
    names = task.subtasks or [task.name]
    for name in names:
        members = [s[task.metric] for s in scored if s["task"] == name or not task.subtasks]
        if members:
            alias = f" - {name}" if task.subtasks else name  # lmms-eval indents a group's members
            results[name] = {"alias": alias, f"{task.metric},none": task.aggregate(members),
                             **results_file.stderr_entries(task, members), "samples": len(members)}
    if task.subtasks or task.name not in results:  # a group's mean; or no answered question at all
        values = [r[f"{task.metric},none"] for r in results.values()]
        results[task.name] = {"alias": task.name, f"{task.metric},none": statistics.fmean(values) if values else 0.0,
                              **({} if task.subtasks else results_file.stderr_entries(task, [])), "samples": len(scored)}
    results[task.name]["breakdown"] = task.breakdown([s[task.metric] for s in scored])
    results[task.name]["missing_videos"] = len(missing)
    return results, sorted(scored + missing, key=lambda s: s["doc_id"])


def write_results(settings: EvalSettings, task: Task, results: dict, samples: list[dict], efficiency: dict,
                  docs_per_task: dict[str, int]) -> dict:
    settings.output.mkdir(parents=True, exist_ok=True)
    path = samples_path(settings.output, task.name)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    tmp.replace(path)
    report = {
        "results": results,
        "configs": {task.name: {"task": task.name, "data_dir": str(settings.data_dir), "parser": settings.parser,
                                "generation_kwargs": {"max_new_tokens": settings.max_new_tokens or task.max_new_tokens,
                                                      "temperature": 0,
                                                      "do_sample": False}}},
        **results_file.sections(task, docs_per_task, collections.Counter(s["task"] for s in samples)),
        "config": {"model": settings.model, "frames": settings.frames, "tokens_per_frame": settings.tokens_per_frame,
                   "limit": settings.limit, "scored_like": f"lmms-eval {LMMS_EVAL_VERSION}"},
        "lmms_eval_version": LMMS_EVAL_VERSION,
        "efficiency": efficiency,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (settings.output / "results.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def load_docs(task: Task, settings: EvalSettings, notice: Callable[[str], None] = lambda _: None) -> list[Doc]:
    """The benchmark's questions, each checked (prompt, target and scoring of a dummy answer) before
    any weight is loaded: a file in another layout or a row missing a field fails here, in one line.
    ``.jsonl`` files beside jsonl questions that hold no questions are passed over, each in one line."""
    if task.name == "jsonl":
        for other in jsonl_files(settings.data_dir)[1]:
            notice(f"skipped {other.name}: its rows are not {{video, question, answer}} questions")
    try:
        docs = task.load(settings.data_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise UserError(f"{settings.data_dir}: the {task.name} files are not in the layout crosslmm reads "
                        f"({type(error).__name__}: {error}); check them against the README's table") from None
    for doc in docs:
        try:
            task.prompt(doc), task.target(doc), task.process(doc, "A", settings.parser, random.Random(0))
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
            raise UserError(f"{settings.data_dir}: {task.name} question {doc.doc_id} lacks or mangles a field "
                            f"({type(error).__name__}: {error}); the benchmark files look damaged") from None
    return docs


def read_responses(path: Path, task: Task, docs: list[Doc]) -> list[dict]:
    """The samples of ``--responses``: a samples file of ours or of lmms-eval 0.7.3 (``filtered_resps``
    as a string, no ``doc``, no ``task``, doc_ids counted within each subtask), or a folder of them,
    where lmms-eval's ``<date>_samples_<task>.jsonl`` name the (sub)task."""
    names = [task.name, *task.subtasks]
    files = [path] if path.is_file() else [f for f in sorted(path.glob("*.jsonl")) if _named_task(f, names)]
    if not files:
        raise UserError(f"--responses {path} holds no samples file of {task.name} (samples_<task>.jsonl)")
    members = {name: [doc for doc in docs if task_of(task, doc) == name] for name in names}
    samples = []
    for file in files:
        for number, sample in enumerate(read_rows(file), 1):
            where = f"--responses {file} sample {number}"
            if not isinstance(sample, dict) or not isinstance(sample.get("doc_id"), int) or (
                raw_response(sample) is None and "missing_video" not in sample
            ):
                raise UserError(f"{where} is not a samples line of crosslmm or lmms-eval (it needs doc_id and "
                                "filtered_resps); give a samples_<task>.jsonl that `crosslmm eval` or lmms-eval wrote")
            if "doc" in sample and "task" in sample:  # ours: global doc ids
                samples.append(sample)
                continue
            name = sample.get("task") or _named_task(file, names) or (task.name if not task.subtasks else None)
            if name not in members:
                raise UserError(f"{where}: cannot tell which {task.name} task it answers; keep lmms-eval's file name "
                                "(<date>_samples_<task>.jsonl)")
            if not 0 <= sample["doc_id"] < len(members[name]):
                raise UserError(f"{where}: doc_id {sample['doc_id']} is beyond the {len(members[name])} questions of "
                                f"{name} in --data-dir; score it against the benchmark files it was made on")
            doc = members[name][sample["doc_id"]]
            samples.append({"doc_id": doc.doc_id, "task": name, "doc": doc.data, "target": task.target(doc),
                            "resps": [[raw_response(sample)]], "filtered_resps": [raw_response(sample)]})
    if not samples:
        raise UserError(f"--responses {path} holds no samples line (not one complete JSON line); give a "
                        "samples_<task>.jsonl that `crosslmm eval` or lmms-eval wrote")
    return samples


def _named_task(file: Path, names: list[str]) -> str | None:
    """The task a samples file names (``samples_<task>.jsonl``, lmms-eval's with a date before it)."""
    matches = [name for name in names if file.name.endswith(f"samples_{name}.jsonl")]
    return max(matches, key=len) if matches else None


def evaluate(settings: EvalSettings, progress: Callable[[int], Callable[[], None]] | None = None,
             notice: Callable[[str], None] = lambda _: None) -> dict | None:
    """Run (or resume) the evaluation; rank 0 returns the results.json content, other ranks None.
    ``notice`` gets the lines a user should read (files passed over)."""
    task = TASKS[settings.task]
    if settings.subtitles_on_found_video and task.name == "videomme_w_subtitle":
        task = dataclasses.replace(task, prompt=functools.partial(videomme_subtitle_prompt, timed_on_found_video=True))
    all_docs = load_docs(task, settings, notice)
    docs = all_docs[: settings.limit] if settings.limit is not None else all_docs
    settings.output.mkdir(parents=True, exist_ok=True)
    efficiency: dict = {}
    if settings.responses is not None:
        samples = read_responses(settings.responses, task, docs)
        rank, world = 0, 1
    else:
        if docs and not any(doc.video.exists() for doc in docs):
            raise UserError(f"none of the {len({doc.video for doc in docs})} videos of {task.name} is in "
                            f"{settings.data_dir} (the first: {docs[0].video}); point --data-dir at the benchmark's "
                            "folder with its videos")
        rank, world = distributed()
        merged = samples_path(settings.output, task.name)
        files = [merged] + [samples_path(settings.output, task.name, r) for r in range(world)] if world > 1 else [merged]
        own = samples_path(settings.output, task.name, rank if world > 1 else None)
        repair_tail(own)
        finished = [s for path in files for s in read_rows(path)]
        check_generation_settings(settings, task, has_samples=bool(finished), write=rank == 0)
        # what an interrupted run finished; a video missing then and there now is asked about again
        done = {s["doc_id"] for s in finished if not ("missing_video" in s and Path(s["missing_video"]).is_file())}
        groups = by_video(doc for doc in docs if doc.doc_id not in done)
        mine = [doc for i, group in enumerate(groups) if i % world == rank for doc in group]
        tick = progress(len(mine)) if progress and rank == 0 else (lambda: None)
        efficiency = run_model(settings, task, mine, own, tick) or {}
        barrier(world)
        if rank != 0:
            return None
        samples = list({s["doc_id"]: s for path in files for s in read_rows(path)}.values())
    results, scored = score(task, docs, samples, settings.parser, settings.reasoning_tags)
    if scored and all("missing_video" in sample for sample in scored):
        first = scored[0]
        raise UserError(f"no question of {task.name} could be scored: all {len(scored)} videos were missing or unreadable "
                        f"(the first: {first.get('error') or first['missing_video']}); the samples stay in "
                        f"{settings.output}; fix the videos and rerun the same command")
    report = write_results(settings, task, results, scored, efficiency, collections.Counter(task_of(task, d) for d in all_docs))
    if world > 1:
        for other in range(world):
            samples_path(settings.output, task.name, other).unlink(missing_ok=True)
    return report

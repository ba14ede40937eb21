"""``crosslmm run-batch``: a corpus of chat-completion requests in OpenAI's Batch format, answered by
the engine ``crosslmm serve`` runs, without a server.

Each input line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``, the
body exactly what ``serve`` accepts; each output line is ``{"id", "custom_id", "response":
{"status_code", "request_id", "body"}, "error"}``, the body exactly what ``serve`` would answer (an
error response for a request it would refuse). A line that is not a request at all (not JSON, no
``custom_id``, another url or method, a ``custom_id`` seen before) gets ``"response": null`` and an
``error`` saying why and on which line. No bad line ends the run.

Requests are answered grouped by their video (each video decoded and encoded once, its prompt keys
and values reused by the next question about it), at most the engine's queue at a time; output lines
are written as answers finish, keyed by ``custom_id``. A rerun of the same command continues: the
requests with a complete output line are skipped, a half-written last line is cut off.
Under torchrun / accelerate launch the videos are dealt out to the processes, each writes its own
part, and the first merges them into the output.
"""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .jsonl_files import read_rows, repair_tail
from .serve.engine import Engine, Failed, Finished
from .serve.protocol import ApiError, parse_request
from .serve.server import completion_body

CHAT_URL = "/v1/chat/completions"


@dataclass
class BatchLine:
    number: int  # 1-based, as editors count
    custom_id: str | None
    body: dict | None  # None when the line is not a request
    problem: str | None = None  # why it is not

    @property
    def key(self) -> str:
        """What its output line is known by: the custom_id, or the line for a line without one."""
        return self.custom_id if self.custom_id is not None else f"line {self.number}"


def read_batch(path: Path) -> list[BatchLine]:
    """Every non-blank line of the input, parsed as a Batch request or with what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"-i {path}: cannot read it ({error}); give a UTF-8 JSON-lines file of Batch requests") from None
    lines, seen = [], {}
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        lines.append(batch_line(number, raw, seen))
    if not lines:
        raise UserError(f"-i {path} holds no request; write one JSON object per line")
    return lines


def batch_line(number: int, raw: str, seen: dict[str, int]) -> BatchLine:
    try:
        row = json.loads(raw)
    except json.JSONDecodeError as error:
        return BatchLine(number, None, None, f"line {number} is not JSON ({error.msg})")
    if not isinstance(row, dict):
        return BatchLine(number, None, None, f"line {number} is not a JSON object")
    custom_id = row.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return BatchLine(number, None, None, f"line {number} has no custom_id")
    if custom_id in seen:
        return BatchLine(number, None, None, f"line {number}: custom_id {custom_id!r} is on line {seen[custom_id]} already")
    seen[custom_id] = number
    if row.get("method") != "POST" or row.get("url") != CHAT_URL:
        return BatchLine(number, custom_id, None, f"line {number}: only POST {CHAT_URL} is supported, not "
                                                  f"{row.get('method')} {row.get('url')}")
    if not isinstance(row.get("body"), dict):
        return BatchLine(number, custom_id, None, f"line {number}: body must be a JSON object")
    return BatchLine(number, custom_id, row["body"])


def video_of(body: dict) -> str:
    """The url of a request's video or image ("" without one): requests are answered grouped by it."""
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict):
                for kind in ("video_url", "image_url"):
                    url = part.get(kind)
                    url = url.get("url") if isinstance(url, dict) else url
                    if isinstance(url, str):
                        return url
    return ""


def line_key(row: dict) -> str:
    """What an output line is known by: its custom_id, or the line of an input line that had none."""
    return row["custom_id"] if row.get("custom_id") is not None else row["error"]["line"]


def part_files(output: Path) -> list[Path]:
    """The parts processes write beside the output while they run (``OUT.rank<N>``)."""
    return sorted(output.parent.glob(output.name + ".rank*"))


def finished_keys(files: list[Path]) -> set[str]:
    """The keys of the complete lines of ``files`` (a previous run's output and parts)."""
    try:
        return {line_key(row) for path in files for row in read_rows(path)}
    except (KeyError, TypeError):
        raise UserError(f"{files[0]} holds lines that are not this tool's output; choose another -o") from None


def merge_parts(output: Path) -> None:
    """Append the parts' lines the output does not hold yet, then remove the parts (written to a
    temporary file and renamed: a kill leaves the output whole and the parts in place)."""
    parts = part_files(output)
    if not parts:
        return
    rows = {line_key(row): row for path in [output, *parts] for row in read_rows(path)}
    temporary = output.with_name(output.name + ".merging")
    temporary.write_text("".join(json.dumps(row) + "\n" for row in rows.values()), encoding="utf-8")
    temporary.replace(output)
    for part in parts:
        part.unlink()


def output_line(line: BatchLine, status: int | None = None, body: dict | None = None) -> dict:
    """One Batch output line: a response (``status`` and ``body``) or, for a line that is no
    request, the error that says why."""
    row = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": line.custom_id}
    if line.problem is not None:
        return {**row, "response": None, "error": {"code": "invalid_request", "message": line.problem,
                                                  "line": line.key}}
    return {**row, "response": {"status_code": status, "request_id": f"req_{uuid.uuid4().hex}", "body": body},
            "error": None}


def run_batch(engine: Engine, lines: list[BatchLine], output: Path,
              progress: Callable[[int, int], Callable[[], None]] = lambda total, done: lambda: None,
              rank: int = 0, world: int = 1) -> dict:
    """Answer the lines not answered yet (by this run or one before it, on any number of processes);
    counts of what this process wrote. ``progress(total, done)`` gives the function called for each
    line written. With several processes, the videos are dealt out in turn and each process appends
    to its own part of the output; the caller merges them (:func:`merge_parts`) once all are done."""
    own = output.with_name(f"{output.name}.rank{rank}") if world > 1 else output
    repair_tail(own)  # a line cut by a kill
    done = finished_keys([output, *part_files(output)])
    videos = sorted({video_of(line.body or {}) for line in lines})
    mine = {video for number, video in enumerate(videos) if number % world == rank}
    share = [line for line in lines if video_of(line.body or {}) in mine]
    todo = sorted((line for line in share if line.key not in done),
                  key=lambda line: (line.body is None, video_of(line.body or {}), line.number))
    tick = progress(len(share), len(share) - len(todo))
    counts = {"answered": 0, "refused": 0, "invalid": 0, "skipped": sum(line.key in done for line in lines)}
    events: queue.SimpleQueue = queue.SimpleQueue()
    in_flight: dict[int, tuple[BatchLine, object]] = {}

    with open(own, "a", encoding="utf-8") as out:
        def write(row: dict, kind: str) -> None:
            out.write(json.dumps(row) + "\n")
            out.flush()
            counts[kind] += 1
            tick()

        def settle(block: bool) -> None:
            """Write the answers that have finished (waiting for one when ``block``)."""
            while in_flight:
                try:
                    number, event = events.get(block=block)
                except queue.Empty:
                    return
                block = block and not isinstance(event, (Finished, Failed))
                if isinstance(event, Finished):
                    line, job = in_flight.pop(number)
                    write(output_line(line, 200, completion_body(engine, job, event)), "answered")
                elif isinstance(event, Failed):
                    line, _ = in_flight.pop(number)
                    write(output_line(line, event.error.status, event.error.body()), "refused")

        for line in todo:
            if line.body is None:
                write(output_line(line), "invalid")
                continue
            while len(in_flight) >= engine.settings.max_queue:
                settle(block=True)
            try:
                request = parse_request(line.body)
                if request.stream:
                    raise ApiError(400, "a batch request is answered whole: leave stream out", param="stream")
                ticket = engine.admit()
                try:
                    job = engine.plan(request)
                    engine.load(job)  # decoded here, while the scheduler answers the requests before it
                except BaseException:
                    ticket.release()
                    raise
            except ApiError as error:
                write(output_line(line, error.status, error.body()), "refused")
                continue
            in_flight[line.number] = (line, job)
            engine.submit(job, ticket, lambda event, number=line.number: events.put((number, event)))
            settle(block=False)
        while in_flight:
            settle(block=True)
    return counts

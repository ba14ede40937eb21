"""Bad inputs, hostile inputs and damaged files across the commands: each ends in one error line and
exit 1 (no traceback) before slow work, or is reported and skipped where a run can go on."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
import tracemalloc

import pandas
import pytest
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.synthetic_video import index_frames, write_video

runner = CliRunner()


def one_error_line(result, *words: str) -> None:
    """Exit 1, no traceback, and exactly one error line holding ``words``."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and len(errors) == 1, result.output
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    return path


def ask(videos, model, *flags):
    return runner.invoke(app, ["ask", str(videos["mp4"]), "What?", "--model", str(model), "--frames", "2",
                               "--max-new-tokens", "2", *flags])


# ---- flags -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,words", [
    (["--fps", "nan"], ["--fps", "finite"]),
    (["--fps", "inf"], ["--fps", "finite"]),
    (["--start", "nan"], ["--start", "finite"]),
    (["--end", "nan"], ["--end", "finite"]),
    (["--temperature", "nan"], ["--temperature", "finite"]),
])
def test_non_finite_numbers_are_refused(videos, tiny_checkpoint, flags, words):
    one_error_line(ask(videos, tiny_checkpoint, *flags), *words)


def test_a_question_longer_than_the_context_is_refused(videos, tiny_checkpoint):
    result = runner.invoke(app, ["ask", str(videos["mp4"]), "why " * 30_000, "--model", str(tiny_checkpoint),
                                 "--frames", "2"])
    one_error_line(result, "shorten the question")


# ---- videos ----------------------------------------------------------------------------------------
def test_an_overlong_path_name(tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["ask", str(tmp_path / ("v" * 300 + ".mp4")), "What?", "--model", str(tiny_checkpoint)])
    one_error_line(result, "too long")


def test_a_fifo_is_not_a_video(tiny_checkpoint, tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    one_error_line(runner.invoke(app, ["ask", str(fifo), "What?", "--model", str(tiny_checkpoint)]), "not a regular file")


def test_an_unreadable_video_is_one_line_not_a_parser_box(videos, tiny_checkpoint, monkeypatch):
    """Measured as an unprivileged user on a chmod 000 file, before: click's own check, a boxed
    message and exit 2. Here the file is made unreadable to the process by refusing its open()."""
    probe_module = importlib.import_module("crosslmm_cli.video.probe")  # the module, not the function

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # what click's readable check asks
    monkeypatch.setattr(probe_module, "open", refuse, raising=False)
    one_error_line(ask(videos, tiny_checkpoint), "cannot be read (Permission denied)")


# ---- checkpoints -----------------------------------------------------------------------------------
def test_a_truncated_safetensors_file(videos, checkpoint_copy):
    weights = checkpoint_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    one_error_line(ask(videos, checkpoint_copy), "truncated")


def test_an_invalid_config(videos, checkpoint_copy):
    (checkpoint_copy / "config.json").write_text('{"model_type": "crosslmm", ')
    one_error_line(ask(videos, checkpoint_copy), "config.json is not valid JSON")


def test_a_folder_of_pickles_is_refused_unread(videos, checkpoint_copy):
    (checkpoint_copy / "model.safetensors").rename(checkpoint_copy / "pytorch_model.bin")
    one_error_line(ask(videos, checkpoint_copy), "only pickled weights", "only safetensors")


def test_a_config_with_absurd_sizes_is_refused_before_allocating(videos, checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["text_config"].update(vocab_size=10**9, hidden_size=2**16, intermediate_size=10**7)
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    tracemalloc.start()
    began = time.perf_counter()
    result = ask(videos, checkpoint_copy)
    seconds, (_, peak) = time.perf_counter() - began, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    one_error_line(result, "config.json and the weights disagree")
    assert seconds < 5 and peak < 64 * 2**20


def test_a_missing_local_model_folder_is_not_blamed_on_the_hub(videos, tmp_path):
    one_error_line(ask(videos, tmp_path / "no-such-model"), "no such checkpoint folder")


# ---- outputs ---------------------------------------------------------------------------------------
def jsonl_benchmark(root, rows):
    root.mkdir(parents=True, exist_ok=True)
    (root / "questions.jsonl").write_bytes(b"".join(r if isinstance(r, bytes) else (json.dumps(r) + "\n").encode()
                                                    for r in rows))
    return root


def test_outputs_that_cannot_be_written_are_refused_before_the_work(tiny_checkpoint, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    data = jsonl_benchmark(tmp_path / "bench", [{"video": "v.mp4", "question": "q", "answer": "a"}])
    one_error_line(runner.invoke(app, ["eval", "jsonl", "--data-dir", str(data), "--output", str(a_file),
                                       "--model", str(tiny_checkpoint)]), "is a file")
    one_error_line(runner.invoke(app, ["bench", "--preset", "tiny", "--frames", "1", "--json", str(tmp_path)]),
                   "--json", "is a folder")
    one_error_line(runner.invoke(app, ["bench", "--preset", "tiny", "--frames", "1", "--json", str(a_file / "x.json")]),
                   "--json", "is a file")
    one_error_line(runner.invoke(app, ["init", "tiny", str(a_file / "ckpt")]), "is a file")


# ---- eval data -------------------------------------------------------------------------------------
def videomme(root, drop: str):
    (root / "videomme").mkdir(parents=True)
    row = {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "History", "url": "",
           "videoID": "vid1", "question_id": "001-1", "task_type": "Counting Problem", "question": "How many?",
           "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "A"}
    row.pop(drop)
    pandas.DataFrame([row]).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    return root


@pytest.mark.parametrize("drop", ["videoID", "options"])
def test_benchmark_rows_missing_a_field_fail_before_the_model_loads(tmp_path, drop, monkeypatch):
    from crosslmm_cli import ask as ask_module

    monkeypatch.setattr(ask_module, "prepare_model", lambda *a: pytest.fail("the model was loaded"))
    data = videomme(tmp_path / "vmme", drop)
    result = runner.invoke(app, ["eval", "videomme", "--data-dir", str(data), "--output", str(tmp_path / "out")])
    one_error_line(result, drop)


def test_half_a_parquet_file(tmp_path):
    data = videomme(tmp_path / "vmme", "url")
    table = data / "videomme" / "test-00000-of-00001.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    result = runner.invoke(app, ["eval", "videomme", "--data-dir", str(data), "--output", str(tmp_path / "out")])
    one_error_line(result, "not in the layout")


@pytest.mark.parametrize("row", [b'{"video": "v.mp4", "question": "caf\xe9?", "answer": "A"}\n',
                                 b'{"video": 7, "question": "q", "answer": "A"}\n'], ids=["latin-1", "numeric-video"])
def test_damaged_eval_rows(tmp_path, row):
    data = jsonl_benchmark(tmp_path / "bench", [row])
    result = runner.invoke(app, ["eval", "jsonl", "--data-dir", str(data), "--output", str(tmp_path / "out")])
    one_error_line(result, "jsonl")


def test_every_video_missing_is_refused_before_the_model_loads(tiny_checkpoint, tmp_path):
    data = jsonl_benchmark(tmp_path / "bench", [{"video": "gone.mp4", "question": "q", "answer": "a"}] * 2)
    result = runner.invoke(app, ["eval", "jsonl", "--data-dir", str(data), "--output", str(tmp_path / "out"),
                                 "--model", str(tiny_checkpoint), "--frames", "2"])
    one_error_line(result, "none of the 1 videos of jsonl", "gone.mp4", "--data-dir")
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "samples_jsonl.jsonl").exists()


def test_every_video_unreadable_scores_nothing_and_is_refused(tiny_checkpoint, tmp_path):
    data = jsonl_benchmark(tmp_path / "bench", [{"video": f"v{i}.mp4", "question": "q", "answer": "a"} for i in range(2)])
    for i in range(2):
        (data / f"v{i}.mp4").write_text("not a video\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "jsonl", "--data-dir", str(data), "--output", str(out),
                                 "--model", str(tiny_checkpoint), "--frames", "2"])
    one_error_line(result, "no question of jsonl could be scored", "all 2 videos", "not a readable video")
    assert not (out / "results.json").exists()
    samples = [json.loads(line) for line in (out / "samples_jsonl.jsonl").read_text().splitlines()]
    assert [s["missing_video"] for s in samples] == [str(data / "v0.mp4"), str(data / "v1.mp4")]  # recorded, not lost


@pytest.mark.parametrize("content, message", [
    ("", "holds no samples line"), ("\n", "holds no samples line"),
    ('{"doc_id": 0, "filtered_resps": "A"', "holds no samples line"),  # a last line cut short
    ('{"doc_id": 0, "resps": 5}\n', "not a samples line of crosslmm or lmms-eval"),
    ('{"doc_id": "x", "filtered_resps": "A"}\n', "not a samples line of crosslmm or lmms-eval"),
    ("[1, 2]\n", "not a samples line of crosslmm or lmms-eval"),
    ('{"answer": "A"}\n', "not a samples line of crosslmm or lmms-eval"),
])
def test_responses_without_a_usable_line_are_refused(tmp_path, content, message):
    data = jsonl_benchmark(tmp_path / "bench", [{"video": "v.mp4", "question": "q", "answer": "a"}])
    responses = tmp_path / "samples_jsonl.jsonl"
    responses.write_text(content)
    result = runner.invoke(app, ["eval", "jsonl", "--data-dir", str(data), "--output", str(tmp_path / "out"),
                                 "--responses", str(responses)])
    one_error_line(result, "--responses", message)
    assert not (tmp_path / "out" / "results.json").exists()


# ---- finetune annotations --------------------------------------------------------------------------
def test_damaged_annotation_rows_are_reported_and_skipped(tmp_path):
    from crosslmm_cli.training_data.folder import FolderRows
    from crosslmm_cli.training_data.sources import MAX_ROW_BYTES

    folder = tmp_path / "train"
    folder.mkdir()
    write_video(folder / "a.mp4", index_frames(6, 32, 32), (32, 32), 10, "libx264")
    good = json.dumps({"video": "a.mp4", "question": "q", "answer": "a"}).encode()
    lines = [
        b"\xef\xbb\xbf" + good,  # 1: a byte-order mark does not cost the first row
        b'{"video": "a.mp4", "question": "caf\xe9", "answer": "a"}',  # 2: Latin-1, not UTF-8
        json.dumps({"video": 12, "question": "q", "answer": "a"}).encode(),  # 3: a number for a path
        b'{"video": "a.mp4", "question": "' + b"x" * (16 * MAX_ROW_BYTES) + b'", "answer": "a"}',  # 4: 16 MB
        good,  # 5
    ]
    (folder / "annotations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    tracemalloc.start()
    source = FolderRows("train", folder)
    source.survey()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [source.row_name(0, row) for row in range(source.count(0))] == ["line 1", "line 5"]
    assert [problem.split(":")[0] for problem in source.bad_rows] == [f"annotations.jsonl line {n}" for n in (2, 3, 4)]
    assert "not UTF-8" in source.bad_rows[0] and "longer than" in source.bad_rows[2]
    assert "12 is not an image or video file name" in source.bad_rows[1]
    assert source.read(0, 0).fields["question"] == "q"  # the first row, read past its byte-order mark
    assert peak < 8 * MAX_ROW_BYTES  # the long row was never held whole

"""`crosslmm eval` end to end on CPU: miniature benchmarks in their official layouts, a tiny
checkpoint, resumption, missing videos, re-scoring, and a 2-process gloo run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pandas
import pytest
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.synthetic_video import index_frame, index_frames, write_video

runner = CliRunner()


def make_video(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, index_frames(20, 64, 64), (64, 64), 10, "libx264", 5)


@pytest.fixture(scope="module")
def videomme_dir(tmp_path_factory):
    """Video-MME's layout: videomme/test-*.parquet, data/<videoID>.mp4; vid3 is missing."""
    root = tmp_path_factory.mktemp("Video-MME")
    rows = []
    for number, video in enumerate(["vid1", "vid2", "vid3"]):
        if video != "vid3":
            make_video(root / "data" / f"{video}.mp4")
        for question in range(3):
            rows.append({
                "video_id": f"{number:03d}", "duration": ["short", "medium", "long"][number],
                "domain": "Knowledge", "sub_category": "Humanity & History", "url": "", "videoID": video,
                "question_id": f"{number:03d}-{question}", "task_type": "Counting Problem",
                "question": f"Question {question}?", "options": ["A. one", "B. two", "C. three", "D. four"],
                "answer": "ABCD"[question],
            })
    (root / "videomme").mkdir()
    pandas.DataFrame(rows).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def mvbench_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("MVBench")
    (root / "json").mkdir()
    for task, folder in (("action_antonym", "ssv2_video_mp4"), ("moving_count", "clevrer/video_validation")):
        make_video(root / "video" / folder / f"{task}.mp4")
        rows = [{"video": f"{task}.mp4", "question": f"q{i}", "candidates": ["yes", "no", "maybe"], "answer": "no"}
                for i in range(2)]
        (root / "json" / f"{task}.json").write_text(json.dumps(rows))
    # episodic_reasoning ships frame folders (TVQA at 3 fps)
    frames = root / "video" / "tvqa" / "video_fps3_hq_segment" / "clip1"
    frames.mkdir(parents=True)
    for index in range(9):
        cv2.imwrite(str(frames / f"{index:05d}.jpg"), index_frame(index, 64, 64))
    rows = [{"video": "clip1", "question": "q", "candidates": ["yes", "no"], "answer": "yes", "start": 0, "end": 3}]
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps(rows))
    return root


def run_eval(*args, input=None):
    return runner.invoke(app, ["eval", *args], input=input)


def common(tiny_checkpoint, output):
    return ["--model", str(tiny_checkpoint), "--frames", "2", "--output", str(output)]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_videomme_end_to_end(videomme_dir, tiny_checkpoint, tmp_path, monkeypatch, device):
    from crosslmm_cli import video
    from crosslmm import CrossLMMForConditionalGeneration

    decodes, encodes = [], []
    real_read, real_encode = video.read_frames, CrossLMMForConditionalGeneration.encode_frames
    monkeypatch.setattr(video, "read_frames", lambda *a, **k: decodes.append(1) or real_read(*a, **k))
    monkeypatch.setattr(CrossLMMForConditionalGeneration, "encode_frames",
                        lambda self, *a, **k: encodes.append(1) or real_encode(self, *a, **k))
    result = run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, tmp_path), "--device", device)
    assert result.exit_code == 0, result.output
    assert len(decodes) == 3 and len(encodes) == 2  # three questions per video share one decode and one encode
    report = json.loads((tmp_path / "results.json").read_text())
    entry = report["results"]["videomme"]
    assert set(entry) >= {"alias", "videomme_perception_score,none", "samples", "breakdown", "missing_videos"}
    assert entry["samples"] == 6 and entry["missing_videos"] == 3
    assert set(entry["breakdown"]["duration"]) == {"short", "medium"}
    assert report["n-samples"]["videomme"] == {"original": 9, "effective": 9}
    assert report["versions"]["videomme"] == "Yaml" and report["lmms_eval_version"] == "0.7.3"
    assert report["efficiency"]["visual_tokens_per_frame"] == 4
    samples = lines(tmp_path / "samples_videomme.jsonl")
    assert [s["doc_id"] for s in samples] == list(range(9))
    answered = [s for s in samples if "missing_video" not in s]
    for sample in answered:
        assert set(sample) >= {"doc", "target", "input", "resps", "filtered_resps", "videomme_perception_score"}
        assert sample["input"].startswith("Select the best answer")
    assert all("vid3" in s["missing_video"] for s in samples if "missing_video" in s)
    assert "missing videos" in result.output


def interrupt_after_two_answers(monkeypatch, videomme_dir, tiny_checkpoint, output):
    from crosslmm_cli.evaluation import runner

    real_record, calls = runner.sample_record, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_record(*args)

    monkeypatch.setattr(runner, "sample_record", flaky)
    assert run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, output)).exit_code == 130
    monkeypatch.setattr(runner, "sample_record", real_record)  # the run stopped after two answers


def test_interrupted_run_resumes_without_losing_or_repeating(videomme_dir, tiny_checkpoint, tmp_path, monkeypatch):
    interrupt_after_two_answers(monkeypatch, videomme_dir, tiny_checkpoint, tmp_path)
    first = [s for s in lines(tmp_path / "samples_videomme.jsonl") if "missing_video" not in s]
    assert len(first) == 2
    resumed = run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, tmp_path))
    assert resumed.exit_code == 0, resumed.output
    final = lines(tmp_path / "samples_videomme.jsonl")
    assert [s["doc_id"] for s in final] == list(range(9))
    assert all(final[s["doc_id"]] == s for s in first)  # kept as they were, not asked again
    fresh = tmp_path / "fresh"
    assert run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, fresh)).exit_code == 0
    assert lines(fresh / "samples_videomme.jsonl") == final


def test_scores_are_the_same_at_every_batch_size_and_answers_those_of_one_question_at_a_time(
        mvbench_dir, tiny_open_checkpoint, tmp_path):
    """Batch sizes 1, 3 and 8 give the same samples and scores; each answer is the one the
    unbatched route (VideoChat.ask_alone, transformers' generate()) gives its question alone."""
    from crosslmm_cli.ask import AskSettings, VideoChat, prepare_model
    from crosslmm_cli.evaluation.tasks import TASKS
    from crosslmm_cli.video import read_frames

    runs = {}
    for size in (1, 3, 8):
        output = tmp_path / f"bs{size}"
        result = run_eval("mvbench", "--data-dir", str(mvbench_dir), *common(tiny_open_checkpoint, output),
                          "--batch-size", str(size))
        assert result.exit_code == 0, result.output
        report = json.loads((output / "results.json").read_text())
        assert report["efficiency"]["batch_size"] == size
        runs[size] = (report["results"], lines(output / "samples_mvbench.jsonl"))
    assert runs[1] == runs[3] == runs[8]
    settings = AskSettings(model=str(tiny_open_checkpoint), frames=2, max_new_tokens=TASKS["mvbench"].max_new_tokens)
    model, processor, quantize = prepare_model(settings)
    task, answered = TASKS["mvbench"], 0
    docs = {doc.doc_id: doc for doc in task.load(mvbench_dir)}
    for sample in runs[1][1]:
        doc = docs[sample["doc_id"]]
        chat = VideoChat(model, processor, *read_frames(doc.video, settings.request), settings, quantize)
        assert sample["resps"] == [[chat.ask_alone(task.prompt(doc)).text]]
        answered += 1
    assert answered == 5


def test_a_half_written_sample_line_is_recovered(videomme_dir, tiny_checkpoint, tmp_path, monkeypatch):
    interrupt_after_two_answers(monkeypatch, videomme_dir, tiny_checkpoint, tmp_path)
    samples = tmp_path / "samples_videomme.jsonl"
    with open(samples, "a") as f:
        f.write('{"doc_id": 2, "task": "videomme", "doc": {"vid')  # the disk filled up mid-line
    resumed = run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, tmp_path))
    assert resumed.exit_code == 0, resumed.output
    fresh = tmp_path / "fresh"
    assert run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, fresh)).exit_code == 0
    assert lines(samples) == lines(fresh / "samples_videomme.jsonl")  # nothing lost, nothing twice


@pytest.mark.parametrize("flags,message", [(["--frames", "3"], "--frames 2 then, 3 now"),
                                           (["--max-new-tokens", "7"], "--max-new-tokens 16 then, 7 now")])
def test_a_resume_with_other_generation_settings_is_refused(videomme_dir, tiny_checkpoint, tmp_path, monkeypatch,
                                                            flags, message):
    interrupt_after_two_answers(monkeypatch, videomme_dir, tiny_checkpoint, tmp_path)
    before = (tmp_path / "samples_videomme.jsonl").read_text()
    result = run_eval("videomme", "--data-dir", str(videomme_dir), *common(tiny_checkpoint, tmp_path), *flags)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in " ".join(result.output.split()) and "other settings" in result.output
    assert (tmp_path / "samples_videomme.jsonl").read_text() == before


def test_a_video_added_since_is_asked_about_on_resume(videomme_dir, tiny_checkpoint, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(videomme_dir, data)
    output = tmp_path / "run"
    assert run_eval("videomme", "--data-dir", str(data), *common(tiny_checkpoint, output)).exit_code == 0
    assert sum("missing_video" in s for s in lines(output / "samples_videomme.jsonl")) == 3
    make_video(data / "data" / "vid3.mp4")
    assert run_eval("videomme", "--data-dir", str(data), *common(tiny_checkpoint, output)).exit_code == 0
    samples = lines(output / "samples_videomme.jsonl")
    assert [s["doc_id"] for s in samples] == list(range(9)) and not any("missing_video" in s for s in samples)


def test_rescoring_responses_with_the_official_parser(videomme_dir, tmp_path):
    samples = tmp_path / "given.jsonl"
    answers = ["The answer is B", "b", "(C)", "Answer: C", "", "D. four"]
    with open(samples, "w") as f:
        for doc_id, answer in enumerate(answers):
            f.write(json.dumps({"doc_id": doc_id, "task": "videomme", "filtered_resps": [answer]}) + "\n")
    scores = {}
    for parser in ("lmms-eval", "official"):
        out = tmp_path / parser
        result = run_eval("videomme", "--data-dir", str(videomme_dir), "--responses", str(samples),
                          "--parser", parser, "--output", str(out))
        assert result.exit_code == 0, result.output
        scored = lines(out / "samples_videomme.jsonl")
        scores[parser] = [s["videomme_perception_score"]["pred_answer"] for s in scored]
    assert scores["lmms-eval"] == ["B", "", "C", "C", "", "D"]
    assert scores["official"] == ["B", "", "C", "A", "", "D"]  # "Answer: C": the first A-D is the A of "Answer"


def test_mvbench_subtasks_and_average(mvbench_dir, tiny_checkpoint, tmp_path):
    result = run_eval("mvbench", "--data-dir", str(mvbench_dir), *common(tiny_checkpoint, tmp_path))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    tasks = ("mvbench_action_antonym", "mvbench_moving_count", "mvbench_episodic_reasoning")
    assert set(results) == {*tasks, "mvbench"}
    assert results["mvbench"]["missing_videos"] == 0
    parts = [results[t]["mvbench_accuracy,none"] for t in tasks]
    assert results["mvbench"]["mvbench_accuracy,none"] == pytest.approx(sum(parts) / 3)  # mean over tasks


@pytest.fixture(scope="module")
def jsonl_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    for name in ("a", "b", "c", "d"):
        make_video(root / "clips" / f"{name}.mp4")
    rows = [{"video": f"clips/{name}.mp4", "question": f"Which {i}?", "options": ["red", "green"], "answer": "green"}
            for i, name in enumerate("abcdabcd")]
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def test_two_gloo_processes_equal_one(jsonl_dir, tiny_checkpoint, tmp_path):
    single = tmp_path / "single"
    assert run_eval("jsonl", "--data-dir", str(jsonl_dir), *common(tiny_checkpoint, single)).exit_code == 0
    sharded = tmp_path / "sharded"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "-m", "crosslmm_cli.app", "eval", "jsonl", "--data-dir", str(jsonl_dir),
               *common(tiny_checkpoint, sharded)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines(sharded / "samples_jsonl.jsonl") == lines(single / "samples_jsonl.jsonl")
    results = [json.loads((d / "results.json").read_text())["results"] for d in (single, sharded)]
    assert results[0] == results[1]
    assert not list(sharded.glob("*.rank*.jsonl"))


@pytest.mark.parametrize(
    "args,message",
    [
        (["nope", "--data-dir", "."], "unknown benchmark"),
        (["videomme", "--data-dir", "/nonexistent"], "is not a folder"),
        (["mvbench", "--data-dir", ".", "--parser", "official"], "does not apply to mvbench"),
        (["videomme", "--data-dir", ".", "--limit", "0"], "--limit must be >= 1"),
        (["videomme", "--data-dir", ".", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["videomme", "--data-dir", ".", "--responses", "/nonexistent.jsonl"], "no such file"),
    ],
)
def test_bad_eval_flags(args, message):
    result = run_eval(*args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_an_empty_benchmark_folder_is_one_line(tmp_path):
    result = run_eval("videomme", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "holds no Video-MME parquet" in result.output


def test_jsonl_files_beside_the_questions_are_passed_over_in_one_line_or_the_questions_file_is_named(
        jsonl_dir, tiny_checkpoint, tmp_path):
    """A training file or prompts.jsonl beside the questions once failed the run ("prompts.jsonl
    line 1: not a {video, question, answer} object")."""
    folder = tmp_path / "mixed"
    shutil.copytree(jsonl_dir, folder)
    (folder / "prompts.jsonl").write_text(json.dumps({"video": "clips/a.mp4", "prompt": "Describe it."}) + "\n")
    (folder / "train.jsonl").write_text(json.dumps({"video": "clips/a.mp4", "caption": "A clip."}) + "\n")
    (folder / "mixed.jsonl").write_text(  # a training file whose first row is a question, its second not
        json.dumps({"video": "clips/a.mp4", "question": "Q?", "answer": "A."}) + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}) + "\n")
    result = run_eval("jsonl", "--data-dir", str(folder), *common(tiny_checkpoint, tmp_path / "folder"))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("prompts.jsonl", "train.jsonl", "mixed.jsonl"):
        assert f"skipped {name}: its rows are not {{video, question, answer}} questions" in text
    by_name = run_eval("jsonl", "--data-dir", str(folder / "questions.jsonl"), *common(tiny_checkpoint, tmp_path / "file"))
    assert by_name.exit_code == 0 and "skipped" not in by_name.output, by_name.output
    assert lines(tmp_path / "file" / "samples_jsonl.jsonl") == lines(tmp_path / "folder" / "samples_jsonl.jsonl")


def test_a_malformed_jsonl_line_is_named(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"video": "a.mp4", "question": "q", "answer": "x"}\nnot json\n')
    result = run_eval("jsonl", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "q.jsonl line 2" in result.output


def write_table(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pandas.DataFrame(rows).to_parquet(path)
    else:
        path.write_text(json.dumps(rows))


LAYOUTS = {
    # benchmark: (table path, video path, rows for two questions about that video, results key, metric)
    "mlvu": ("mlvu_dev/test.parquet", "1_plotQA/m1.mp4",
             [{"video_name": "1_plotQA/m1.mp4", "question": f"Q{i}?\n(A) x\n(B) y", "answer": "B", "task_type": "plotQA"}
              for i in range(2)], "mlvu_dev", "mlvu_percetion_score,none"),
    "longvideobench": ("lvb_val.json", "videos/v1.mp4",
                       [{"id": f"l{i}", "video_path": "v1.mp4", "question": "Q?", "option0": "x", "option1": "y",
                         "option2": "N/A", "option3": "N/A", "option4": "N/A", "correct_choice": 0,
                         "duration_group": 15, "question_category": "TOS"} for i in range(2)],
                       "longvideobench_val_v", "lvb_acc,none"),
    "perceptiontest": ("mc_question_val/validation.parquet", "videos/video_1.mp4",
                       [{"video_name": "video_1", "question": "Q?", "options": ["x", "y", "z"], "answer_id": 1,
                         "area": "memory", "reasoning": "r", "tag": ["t"], "question_id": f"q{i}"} for i in range(2)],
                       "perceptiontest_val_mc", "accuracy,none"),
    "nextqa": ("MC/test.parquet", "NExTVideo/1234.mp4",
               [{"video": 1234, "question": "why ", "a0": "a", "a1": "b", "a2": "c", "a3": "d", "a4": "e", "answer": 2,
                 "qid": i} for i in range(2)], "nextqa_mc_test", "exact_match,none"),
    "egoschema": ("Subset/test.parquet", "videos/abc.mp4",
                  [{"video_idx": "abc", "question": f"Q{i}?", "option": [f"{l}. o" for l in "ABCDE"], "answer": 1}
                   for i in range(2)], "egoschema_subset", "score,none"),
}


@pytest.mark.parametrize("benchmark", sorted(LAYOUTS))
def test_every_benchmark_reads_its_layout_and_scores(benchmark, tiny_checkpoint, tmp_path):
    table, video, rows, key, metric = LAYOUTS[benchmark]
    data = tmp_path / "data"
    write_table(data / table, rows)
    make_video(data / video)
    result = run_eval(benchmark, "--data-dir", str(data), *common(tiny_checkpoint, tmp_path / "out"),
                      "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert metric in report["results"][key] and report["results"][key]["missing_videos"] == 0
    samples = lines(tmp_path / "out" / f"samples_{key}.jsonl")
    assert len(samples) == 2 and all(s["input"] for s in samples)


# ---- real layouts and lmms-eval's own files --------------------------------------------------------
GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "lmms_eval_golden.json").read_text())
PIPELINE = GOLDEN["pipeline"]


def test_longvideobench_reads_the_parquet_lmms_eval_reads(tmp_path):
    """The download holds lvb_val.json (options as `candidates`) next to the parquet lmms-eval reads."""
    from crosslmm_cli.evaluation.tasks import TASKS

    row = {"id": "l0", "video_path": "v1.mp4", "question": "Q?", "option0": "x", "option1": "y", "option2": "z",
           "option3": "N/A", "option4": "N/A", "correct_choice": 2, "duration_group": 15, "question_category": "TOS"}
    write_table(tmp_path / "validation-00000-of-00001.parquet", [row])
    json_row = {k: v for k, v in row.items() if not k.startswith("option")} | {"candidates": ["x", "y", "z"]}
    write_table(tmp_path / "lvb_val.json", [json_row])
    task = TASKS["longvideobench"]
    (doc,) = task.load(tmp_path)
    assert task.prompt(doc) == "Q?\nA. x\nB. y\nC. z\nAnswer with the option's letter from the given choices directly.\n"
    (tmp_path / "validation-00000-of-00001.parquet").unlink()
    (from_json,) = task.load(tmp_path)  # only the json: its candidates padded as the parquet pads them
    assert task.prompt(from_json) == task.prompt(doc)
    assert task.process(from_json, "D", "lmms-eval")["parsed_pred"] == "D" and len(
        [k for k in from_json.data if k.startswith("option")]) == 5


def lmms_eval_sample(doc_id: int, raw: str, scored: str, target: str) -> dict:
    """A line as lmms-eval 0.7.3's EvaluationTracker.save_results_samples writes it: `filtered_resps`
    flattened to a string, `resps` (the wrapper-stripped generation) only where it differs, no `doc`,
    no `task`."""
    line = {"doc_id": doc_id, "target": target, "filtered_resps": scored, "doc_hash": "0" * 64, "input": "..."}
    if raw.strip() != scored:
        line["resps"] = [raw.strip()]
    return line


def test_lmms_eval_samples_files_rescore_to_lmms_eval_scores(tmp_path):
    data = tmp_path / "Video-MME"
    rows = [{**GOLDEN["videomme_doc"], "question_id": f"q{i}", "video_id": f"{i:03d}", "url": ""}
            for i in range(len(PIPELINE["responses"]))]
    (data / "videomme").mkdir(parents=True)
    pandas.DataFrame(rows).to_parquet(data / "videomme" / "test-00000-of-00001.parquet")
    runs = tmp_path / "lmms-eval-run"
    runs.mkdir()
    (runs / "20261122_101500_samples_videomme.jsonl").write_text("".join(
        json.dumps(lmms_eval_sample(i, raw, scored, "B")) + "\n"
        for i, (raw, scored) in enumerate(zip(PIPELINE["responses"], PIPELINE["scored_text"]))))
    for responses in (runs, runs / "20261122_101500_samples_videomme.jsonl"):  # the folder, or the file
        result = run_eval("videomme", "--data-dir", str(data), "--responses", str(responses), "--output", str(tmp_path / "out"))
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / "out" / "results.json").read_text())
        assert report["results"]["videomme"]["videomme_perception_score,none"] == pytest.approx(
            PIPELINE["videomme"]["aggregate"])


def test_lmms_eval_mvbench_files_count_doc_ids_within_each_subtask(tmp_path):
    data = tmp_path / "MVBench"
    responses = PIPELINE["responses"]
    for subtask in ("action_antonym", "action_count"):
        write_table(data / "json" / f"{subtask}.json", [GOLDEN["mvbench_doc"]] * len(responses))
    runs = tmp_path / "lmms-eval-run"
    runs.mkdir()
    for subtask in ("action_antonym", "action_count"):
        (runs / f"20261122_samples_mvbench_{subtask}.jsonl").write_text("".join(
            json.dumps(lmms_eval_sample(i, raw, scored, GOLDEN["mvbench_doc"]["answer"])) + "\n"
            for i, (raw, scored) in enumerate(zip(responses, PIPELINE["scored_text"]))))
    result = run_eval("mvbench", "--data-dir", str(data), "--responses", str(runs), "--output", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    for subtask in ("mvbench_action_antonym", "mvbench_action_count"):
        assert results[subtask]["mvbench_accuracy,none"] == pytest.approx(PIPELINE["mvbench"]["aggregate"])


def test_subtitles_as_lmms_eval_shows_them_and_on_any_container_behind_a_flag(tmp_path):
    """lmms-eval times the subtitles on data/<id>.mp4 only: an .mkv video's question gets an empty
    subtitle block. That is the default (score-identical); --subtitles-on-found-video shows them."""
    import dataclasses
    import functools

    from crosslmm_cli.evaluation.tasks import TASKS, videomme_subtitle_prompt

    golden = GOLDEN["subtitles"]
    width, height = golden["video"]["size"]
    count = golden["video"]["seconds"] * golden["video"]["fps"]
    rows = []
    (tmp_path / "data").mkdir()
    for video_id, suffix in (("sub_mp4", ".mp4"), ("sub_mkv", ".mkv")):
        write_video(tmp_path / "data" / f"{video_id}{suffix}", index_frames(count, height, width), (width, height),
                    golden["video"]["fps"], "libx264", 10)
        (tmp_path / "subtitle").mkdir(exist_ok=True)
        (tmp_path / "subtitle" / f"{video_id}.srt").write_text(golden["srt"], encoding="utf-8")
        rows.append({**GOLDEN["videomme_doc"], "videoID": video_id, "url": "", "video_id": video_id})
    write_table(tmp_path / "videomme" / "test-00000-of-00001.parquet", rows)
    task = TASKS["videomme_w_subtitle"]
    mp4, mkv = task.load(tmp_path)
    assert mkv.video.suffix == ".mkv"  # the model still watches the .mkv
    assert task.prompt(mp4) == golden["prompts"][".mp4"]
    assert task.prompt(mkv) == golden["prompts"][".mkv"]
    on_found = dataclasses.replace(task, prompt=functools.partial(videomme_subtitle_prompt, timed_on_found_video=True))
    assert on_found.prompt(mkv) == golden["prompts"][".mp4"]  # the same subtitles, now shown

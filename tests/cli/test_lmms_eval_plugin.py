"""lmms-eval's own evaluator, run by its own CLI on a local copy of its Video-MME task, with crosslmm
as the model (the entry-point plugin): the generations, per-sample scores and results equal
`crosslmm eval` on the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lmms_eval  # installed by the README's test command (pip install --no-deps lmms-eval==0.7.3)
import pandas
import pytest
from typer.testing import CliRunner

from crosslmm_cli.app import app
from crosslmm_cli.synthetic_video import index_frames, write_video

QUESTIONS = [("vid1", "How many?"), ("vid1", "Which colour?"), ("vid2", "Where?"), ("vid2", "When?")]


@pytest.fixture(scope="module")
def videomme_cache(tmp_path_factory):
    """Video-MME as lmms-eval caches it ($HF_HOME/videomme/data/<id>.mp4) and as crosslmm reads it."""
    home = tmp_path_factory.mktemp("hf_home")
    root = home / "videomme"
    (root / "data").mkdir(parents=True)
    for video in ("vid1", "vid2"):
        write_video(root / "data" / f"{video}.mp4", index_frames(20, 64, 64), (64, 64), 10, "libx264", 5)
    rows = [{"video_id": f"{i:03d}", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History", "url": "",
             "videoID": video, "question_id": f"{i:03d}-1", "task_type": "Counting Problem", "question": question,
             "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "ABCD"[i]}
            for i, (video, question) in enumerate(QUESTIONS)]
    (root / "videomme").mkdir()
    pandas.DataFrame(rows).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    return home


def local_task(folder: Path, parquet: Path) -> Path:
    """lmms-eval's own videomme.yaml, reading the local parquet instead of the hub dataset; its
    functions come from lmms-eval's own videomme utils."""
    source = Path(lmms_eval.__file__).parent / "tasks" / "videomme"
    config = (source / "videomme.yaml").read_text()
    head, rest = config.split("task: videomme\n", 1)
    assert head.startswith("dataset_path: lmms-eval/Video-MME")
    folder.mkdir()
    (folder / "videomme_local.yaml").write_text(
        f"dataset_path: parquet\ndataset_kwargs:\n  data_files:\n    test: {parquet}\ntask: videomme_local\n" + rest)
    (folder / "utils.py").write_text("from lmms_eval.tasks.videomme.utils import *  # noqa: F401,F403\n")
    return folder


def run_lmms_eval(videomme_cache: Path, work: Path, model: str, model_args: str,
                  batch_size: int = 1) -> tuple[dict, list[dict], Path]:
    """``python -m lmms_eval`` on the local Video-MME task: its results.json, samples and samples file."""
    parquet = videomme_cache / "videomme" / "videomme" / "test-00000-of-00001.parquet"
    tasks = work / "tasks"
    if not tasks.exists():
        local_task(tasks, parquet)
    env = {**os.environ, "HF_HOME": str(videomme_cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    output = work / f"lmms-{model}"
    command = [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks",
               "videomme_local", "--include_path", str(tasks), "--output_path", str(output), "--log_samples",
               "--batch_size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=work)
    results = list(output.glob("**/*_results.json"))
    assert done.returncode == 0 and results, (done.stdout + done.stderr)[-4000:]  # it can exit 0 having failed
    (samples_file,) = output.glob("**/*_samples_videomme_local.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(results[0].read_text()), samples, samples_file


def same_entries(ours: dict, theirs: dict) -> None:
    """Every field lmms-eval writes for a task, with its value, in crosslmm's entry (which may hold more)."""
    for key, value in theirs.items():
        if key != "alias":
            assert our_value_equal(ours[key], value), (key, ours[key], value)


def our_value_equal(ours, theirs) -> bool:
    return ours == pytest.approx(theirs, abs=1e-12) if isinstance(theirs, float) else ours == theirs


@pytest.mark.parametrize("batch_size", [1, 3])
def test_lmms_eval_runs_crosslmm_and_scores_as_crosslmm_eval(videomme_cache, tiny_open_checkpoint, tmp_path, batch_size):
    """At lmms-eval's --batch_size 1 and 3 (its questions then generated together, as crosslmm
    eval's default of 8 does), the same generations and scores as crosslmm eval."""
    tiny_checkpoint = tiny_open_checkpoint
    theirs, their_samples, _ = run_lmms_eval(videomme_cache, tmp_path, "crosslmm", f"pretrained={tiny_checkpoint},frames=2",
                                             batch_size)

    ours_dir = tmp_path / "ours"
    result = CliRunner().invoke(app, ["eval", "videomme", "--data-dir", str(videomme_cache / "videomme"), "--model",
                                      str(tiny_checkpoint), "--frames", "2", "--output", str(ours_dir)])
    assert result.exit_code == 0, result.output
    ours = json.loads((ours_dir / "results.json").read_text())
    our_samples = [json.loads(line) for line in (ours_dir / "samples_videomme.jsonl").read_text().splitlines()]

    assert len(their_samples) == len(our_samples) == len(QUESTIONS)
    for their, our in zip(their_samples, our_samples):  # the same generation, scored the same way
        assert their["filtered_resps"] == our["filtered_resps"][0]
        assert their["videomme_perception_score"] == our["videomme_perception_score"]
        assert their["doc_hash"] == our["doc_hash"]
    same_entries(ours["results"]["videomme"], theirs["results"]["videomme_local"])
    for section in ("n-shot", "higher_is_better", "versions", "n-samples", "group_subtasks"):
        assert ours[section]["videomme"] == theirs[section]["videomme_local"], section


def test_standard_errors_equal_lmms_eval_on_mixed_answers(videomme_cache, tmp_path):
    """lmms-eval's dummy model answers "A" everywhere: one question in four is right, so every
    standard error is non-zero. Re-scoring lmms-eval's samples file gives lmms-eval's fields."""
    theirs, their_samples, samples_file = run_lmms_eval(videomme_cache, tmp_path, "dummy", "response=A")
    assert 0 < theirs["results"]["videomme_local"]["videomme_perception_score,none"] < 100
    renamed = tmp_path / "20261122_samples_videomme.jsonl"  # lmms-eval's name, for our task's name
    renamed.write_text(samples_file.read_text())
    result = CliRunner().invoke(app, ["eval", "videomme", "--data-dir", str(videomme_cache / "videomme"),
                                      "--responses", str(renamed), "--output", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())
    their_entry = theirs["results"]["videomme_local"]
    assert all(isinstance(their_entry[k], float) and their_entry[k] > 0 for k in their_entry if "stderr_c" in k)
    same_entries(ours["results"]["videomme"], their_entry)


MVBENCH_SUBTASKS = ("action_antonym", "action_count")


def local_mvbench(folder: Path, data: Path) -> None:
    """lmms-eval's own MVBench template and subtask configs as a two-member group reading local json;
    names get a `_local` infix so they do not clash with lmms-eval's registered mvbench tasks."""
    source = Path(lmms_eval.__file__).parent / "tasks" / "mvbench"
    template = (source / "_default_template_yaml").read_text()
    head, rest = template.split("generation_kwargs:", 1)
    assert head.startswith("dataset_path: OpenGVLab/MVBench")
    folder.mkdir()
    for subtask in MVBENCH_SUBTASKS:
        own = (source / f"mvbench_{subtask}.yaml").read_text()
        own = "\n".join(line for line in own.splitlines() if not line.startswith(("include:", "dataset_name:", "task:")))
        (folder / f"mvbench_local_{subtask}.yaml").write_text(
            f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {data / 'json' / f'{subtask}.json'}\n"
            f"task: mvbench_local_{subtask}\ngeneration_kwargs:{rest}\n{own}\n")
    (folder / "mvbench_local.yaml").write_text("group: mvbench_local\ntask:\n" + "".join(
        f"  - mvbench_local_{subtask}\n" for subtask in MVBENCH_SUBTASKS))
    (folder / "utils.py").write_text("from lmms_eval.tasks.mvbench.utils import *  # noqa: F401,F403\n")


def test_a_group_is_written_as_lmms_eval_writes_it(tmp_path):
    """MVBench through lmms-eval (its dummy model answering "A"), re-scored by crosslmm from the
    samples files lmms-eval wrote: subtask entries, aliases, group listing, versions and counts."""
    data = tmp_path / "MVBench"
    (data / "json").mkdir(parents=True)
    for subtask in MVBENCH_SUBTASKS:
        rows = [{"video": f"{subtask}_{i}.mp4", "question": f"What happens {i}?",
                 "candidates": ["Opens the fridge", "Closes the door", "Sits down"], "answer": answer}
                for i, answer in enumerate(["Opens the fridge", "Closes the door", "Sits down", "Opens the fridge"])]
        (data / "json" / f"{subtask}.json").write_text(json.dumps(rows))
    local_mvbench(tmp_path / "tasks", data)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "dummy", "--model_args", "response=A", "--tasks",
                           "mvbench_local", "--include_path", str(tmp_path / "tasks"), "--output_path",
                           str(tmp_path / "lmms"), "--log_samples"], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    results = list((tmp_path / "lmms").glob("**/*_results.json"))
    assert done.returncode == 0 and results, (done.stdout + done.stderr)[-4000:]
    theirs = json.loads(results[0].read_text().replace("mvbench_local", "mvbench"))  # the names we compare under
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for samples in (tmp_path / "lmms").glob("**/*_samples_*.jsonl"):
        (renamed / samples.name.replace("mvbench_local", "mvbench")).write_text(samples.read_text())
    result = CliRunner().invoke(app, ["eval", "mvbench", "--data-dir", str(data), "--responses", str(renamed),
                                      "--output", str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "ours" / "results.json").read_text())
    for subtask in (f"mvbench_{name}" for name in MVBENCH_SUBTASKS):
        assert ours["results"][subtask]["alias"] == theirs["results"][subtask]["alias"] == f" - {subtask}"
        assert 0 < theirs["results"][subtask]["mvbench_accuracy,none"] < 100
        same_entries(ours["results"][subtask], theirs["results"][subtask])
    for section in ("group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples"):
        assert ours[section] == theirs[section], section

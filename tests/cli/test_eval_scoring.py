"""Our prompts, answer extraction and aggregates agree with lmms-eval 0.7.3's own task functions,
recorded on tricky responses by tests/data/make_lmms_eval_golden.py (lmms-eval itself needs its
whole harness to import)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosslmm_cli.evaluation.mcq import extract_mcq_answer, official_videomme_parser
from crosslmm_cli.evaluation.tasks import TASKS, Doc

GOLDEN = json.loads((Path(__file__).parents[1] / "data" / "lmms_eval_golden.json").read_text())
RESPONSES = GOLDEN["responses"]


def test_the_golden_file_is_from_the_version_we_name():
    from crosslmm_cli.evaluation.tasks import LMMS_EVAL_VERSION

    assert GOLDEN["lmms_eval_version"] == LMMS_EVAL_VERSION
    assert len(RESPONSES) >= 30 and "" in RESPONSES


@pytest.mark.parametrize("index", range(len(RESPONSES)))
def test_current_parser(index):
    assert extract_mcq_answer(RESPONSES[index], ["A", "B", "C", "D"]) == GOLDEN["extract_mcq_answer_abcd"][index]


@pytest.mark.parametrize("index", range(len(RESPONSES)))
def test_official_videomme_parser(index):
    assert official_videomme_parser(RESPONSES[index]) == GOLDEN["official_videomme_parser"][index]


def videomme_doc() -> Doc:
    return Doc(0, None, GOLDEN["videomme_doc"], "videomme")


def test_videomme_prompt_and_per_sample_results():
    task = TASKS["videomme"]
    assert task.prompt(videomme_doc()) == GOLDEN["videomme_prompt"]
    ours = [task.process(videomme_doc(), response, "lmms-eval") for response in RESPONSES]
    assert ours == [p["videomme_perception_score"] for p in GOLDEN["videomme_process_results"]]
    assert task.aggregate(ours) == GOLDEN["videomme_aggregate"]


def test_mvbench_prompt_per_sample_results_and_denominator():
    task = TASKS["mvbench"]
    doc = Doc(0, None, GOLDEN["mvbench_doc"], "mvbench_action_antonym")
    assert task.prompt(doc) == GOLDEN["mvbench_prompt"]
    ours = [task.process(doc, response, "lmms-eval") for response in RESPONSES]
    assert ours == [p["mvbench_accuracy"] for p in GOLDEN["mvbench_process_results"]]
    assert task.aggregate(ours) == GOLDEN["mvbench_aggregate"]  # empty answers leave the denominator


def test_jsonl_multiple_choice_and_open_answers():
    task = TASKS["jsonl"]
    choice = Doc(0, None, {"video": "v.mp4", "question": "Colour?", "options": ["red", "green"], "answer": "green"}, "jsonl")
    assert task.target(choice) == "B"
    assert task.prompt(choice).splitlines()[1:3] == ["A. red", "B. green"]
    assert task.process(choice, "(B) green", "lmms-eval")["score"] == 1.0
    assert task.process(choice, "A", "lmms-eval")["score"] == 0.0
    open_question = Doc(1, None, {"video": "v.mp4", "question": "Colour?", "answer": "Green"}, "jsonl")
    assert task.process(open_question, "green.", "lmms-eval")["score"] == 1.0
    assert task.aggregate([{"score": 1.0}, {"score": 0.0}, {"score": 1.0}, {"score": 1.0}]) == 75.0


def sequential(task_name: str, doc: Doc) -> list[dict]:
    """Score every response in order with one generator seeded 0, as lmms-eval's run does."""
    import random

    rng = random.Random(0)
    task = TASKS[task_name]
    return [task.process(doc, response, "lmms-eval", rng) for response in RESPONSES]


@pytest.mark.parametrize(
    "name,doc_key,prompt_key,results_key,aggregate_key",
    [
        ("mlvu", "mlvu_doc", "mlvu_prompt", "mlvu_process_results", "mlvu_aggregate"),
        ("longvideobench", "lvb_doc", "lvb_prompt", "lvb_process_results", "lvb_aggregate"),
        ("perceptiontest", "perception_doc", "perception_prompt", "perception_process_results", "perception_aggregate"),
        ("nextqa", "nextqa_doc", "nextqa_prompt", "nextqa_process_results", None),
        ("egoschema", "egoschema_doc", "egoschema_prompt", "egoschema_process_results", "egoschema_aggregate"),
    ],
)
def test_other_benchmarks_match_lmms_eval(name, doc_key, prompt_key, results_key, aggregate_key):
    task = TASKS[name]
    doc = Doc(0, None, GOLDEN[doc_key], task.name)
    assert task.prompt(doc) == GOLDEN[prompt_key]
    ours = sequential(name, doc)
    assert ours == GOLDEN[results_key]
    if aggregate_key is not None:
        assert task.aggregate(ours) == GOLDEN[aggregate_key]


def test_reported_scales_follow_lmms_eval():
    # percent for Video-MME, MVBench and MLVU; fractions for LongVideoBench, Perception Test, NExT-QA, EgoSchema
    assert TASKS["videomme"].aggregate([{"pred_answer": "A", "answer": "A"}]) == 100
    assert TASKS["perceptiontest"].aggregate([{"correct": 1}]) == 1
    assert TASKS["egoschema"].aggregate([{"pred": 1, "ground_truth": 1}]) == 1


# ---- the whole pipeline: post-processing, then scoring, then aggregation --------------------------
PIPELINE = GOLDEN["pipeline"]
PIPELINE_CASES = {  # benchmark: (golden doc, the (sub)task its questions belong to)
    "videomme": ("videomme_doc", "videomme"),
    "mvbench": ("mvbench_doc", "mvbench_action_antonym"),
    "mlvu": ("mlvu_doc", "mlvu_dev"),
    "longvideobench": ("lvb_doc", "longvideobench_val_v"),
    "perceptiontest": ("perception_doc", "perceptiontest_val_mc"),
    "nextqa": ("nextqa_doc", "nextqa_mc_test"),
    "egoschema": ("egoschema_doc", "egoschema_subset"),
}


def test_post_processing_equals_lmms_eval():
    from crosslmm_cli.evaluation.postprocess import filtered_response

    tags = PIPELINE["reasoning_tags"]
    assert [filtered_response(r, tags) for r in PIPELINE["responses"]] == PIPELINE["scored_text"]
    assert [official_videomme_parser(r) for r in PIPELINE["scored_text"]] == PIPELINE["official_videomme_parser"]


@pytest.mark.parametrize("benchmark", sorted(PIPELINE_CASES))
def test_raw_generations_score_as_lmms_eval_reports_them(benchmark):
    """Blank, white-space-wrapped and reasoning-tagged generations, one per question in document
    order: per-sample results and the aggregate equal lmms-eval's whole pipeline."""
    from crosslmm_cli.evaluation.runner import score

    task = TASKS[benchmark]
    doc_key, subtask = PIPELINE_CASES[benchmark]
    docs = [Doc(i, None, GOLDEN[doc_key], subtask) for i in range(len(PIPELINE["responses"]))]
    samples = [{"doc_id": i, "task": subtask, "doc": GOLDEN[doc_key], "resps": [[raw]], "filtered_resps": [raw]}
               for i, raw in enumerate(PIPELINE["responses"])]
    results, scored = score(task, docs, samples, "lmms-eval")
    assert [s[task.metric] for s in scored] == PIPELINE[benchmark]["process_results"]
    assert results[subtask][f"{task.metric},none"] == pytest.approx(PIPELINE[benchmark]["aggregate"], abs=1e-9)
    assert [s["resps"] for s in scored] == [[[raw]] for raw in PIPELINE["responses"]]  # the raw text is kept
    assert [s["filtered_resps"] for s in scored] == [[text] for text in PIPELINE["scored_text"]]

"""Record what lmms-eval's own code returns on tricky responses (run by hand, not by CI): its task
functions, and its whole post-processing (wrapper strip, reasoning tags) before them.

    pip download --no-deps lmms-eval==0.7.3 -d /tmp/lmms && unzip -q /tmp/lmms/lmms_eval-0.7.3-*.whl -d /tmp/lmms/src
    python tests/data/make_lmms_eval_golden.py /tmp/lmms/src

lmms-eval's task modules import its whole harness (datasets, loguru, ...); only the functions used
here are needed, so the harness packages are stubbed and the task files loaded from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import random
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent

RESPONSES = [
    "A", "B", "C", "D", "b", "(B) because the man opens the fridge", "The answer is C.", "The best answer is: D",
    "A person opens the door.", "", "   ", "Answer: C", "B. The man opens the fridge", "I think it's A or B",
    "(D)", "C)", "Option B", "The correct option is A", "E", "a.", "None of the above", "It is B, not C.",
    "The answer is (A). Actually, the answer is D.", "D. because", "BC", "The best option isThe correct option is B",
    "答案是 B", "This long answer mentions nothing useful about the options at all, really nothing whatsoever.",
    "A. Opens the fridge\nB. Closes the door", "c", "(C) The cat", "answer: (b)",
]

# the whole pipeline: what lmms-eval does to a generation before scoring it (wrapper strip, reasoning tags)
PIPELINE_RESPONSES = [
    "", "   ", "\nC\n", "B\n", "D\r\n", "  A  ", "\n\n(B)\n", "<think>It could be A.</think>B",
    "<think>maybe C</think>\nThe answer is D.", "Let me think. A seems wrong.</think>C", "<analysis>B or C</analysis> C",
    "<think>unclosed, A", "<THINK>A</THINK>B", "</think>", "<think>only thinking about A</think>", "\t a.",
    "<think>A</think><think>B</think>C", "The answer is\n\nD", "<analysis>x</analysis><think>y</think>\n B \n",
]
DEFAULT_REASONING_TAGS = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]  # lmms-eval's CLI default

VIDEOMME_DOC = {"question_id": "001-1", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
                "task_type": "Counting Problem", "videoID": "vid001", "question": "How many?",
                "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "B"}
MLVU_DOC = {"video_name": "1_plotQA/movie.mp4", "question": "What happens?\n(A) one\n(B) two\n(C) three\n(D) four",
            "answer": "B", "task_type": "plotQA"}
LVB_DOC = {"id": "lvb-1", "video_path": "x.mp4", "question": "What is shown?", "option0": "A cat", "option1": "A dog",
           "option2": "A bird", "option3": "N/A", "option4": "N/A", "correct_choice": 1, "duration_group": 600,
           "question_category": "TOS"}
PERCEPTION_DOC = {"video_name": "video_1", "question": "What is in the box?", "options": ["a ball", "a cup", "nothing"],
                  "answer_id": 2, "area": "memory", "reasoning": "counting", "tag": ["x"], "question_id": "q1"}
NEXTQA_DOC = {"video": 1234, "question": "why did the boy cry ", "a0": "fell down", "a1": "hungry", "a2": "lost toy",
              "a3": "tired", "a4": "scared", "answer": 2}
EGOSCHEMA_DOC = {"video_idx": "abc", "question": "What is C doing?",
                 "option": ["A. cooking food", "B. washing dishes", "C. reading", "D. sleeping", "E. walking"], "answer": 1}
MVBENCH_DOC = {"video": "x.mp4", "question": "What does the man do?",
               "candidates": ["Opens the fridge", "Closes the door", "Sits down"], "answer": "Closes the door"}


def stub_harness() -> None:
    for name in ("lmms_eval", "lmms_eval.tasks", "lmms_eval.tasks._task_utils"):
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    loguru = types.ModuleType("loguru")
    loguru.logger = logging.getLogger("lmms_eval")
    sys.modules["loguru"] = loguru
    sys.modules["datasets"] = types.ModuleType("datasets")
    sys.modules["datasets"].Dataset = object
    if importlib.util.find_spec("decord") is None:  # imported by the LongVideoBench utils for frame loading only
        sys.modules["decord"] = types.SimpleNamespace(VideoReader=None, cpu=None)


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(source: Path) -> None:
    tasks = source / "lmms_eval" / "tasks"
    stub_harness()
    os.environ.setdefault("HF_HOME", "/tmp/hf_home")
    for helper in ("default_template_yaml", "file_utils", "video_loader"):
        load(f"lmms_eval.tasks._task_utils.{helper}", tasks / "_task_utils" / f"{helper}.py")
    sys.modules["lmms_eval"].utils = types.SimpleNamespace(resolve_cache_dir=lambda name, base_dir: os.path.join(base_dir, name))
    sys.modules["lmms_eval.utils"] = sys.modules["lmms_eval"].utils
    mcq = load("lmms_eval.tasks._task_utils.mcq_extract", tasks / "_task_utils" / "mcq_extract.py")
    videomme = load("lmms_eval_videomme_utils", tasks / "videomme" / "utils.py")
    mvbench = load("lmms_eval_mvbench_utils", tasks / "mvbench" / "utils.py")
    mmworld = load("lmms_eval_mmworld_utils", tasks / "mmworld" / "utils.py")  # the older Video-MME parser
    mlvu = load("lmms_eval_mlvu_utils", tasks / "mlvu" / "utils.py")
    perception = load("lmms_eval_perceptiontest_utils", tasks / "perceptiontest" / "val" / "utils.py")
    egoschema = load("lmms_eval_egoschema_utils", tasks / "egoschema" / "utils.py")
    nextqa = load("lmms_eval_nextqa_utils", tasks / "nextqa" / "utils.py")
    longvideobench = load("lmms_eval_longvideobench_utils", tasks / "longvideobench" / "utils.py")
    golden = {
        "lmms_eval_version": "0.7.3",
        "responses": RESPONSES,
        "extract_mcq_answer_abcd": [mcq.extract_mcq_answer(r, choices=["A", "B", "C", "D"]) for r in RESPONSES],
        "official_videomme_parser": [mmworld.extract_characters_regex(r) for r in RESPONSES],
        "videomme_doc": VIDEOMME_DOC,
        "videomme_process_results": [videomme.videomme_process_results(VIDEOMME_DOC, [r]) for r in RESPONSES],
        "videomme_prompt": videomme.videomme_doc_to_text(
            VIDEOMME_DOC, {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly."}
        ),
        "mvbench_doc": MVBENCH_DOC,
        "mvbench_process_results": [mvbench.mvbench_process_results(MVBENCH_DOC, [r]) for r in RESPONSES],
        "mvbench_prompt": mvbench.mvbench_doc_to_text(MVBENCH_DOC, {"post_prompt": "Only give the best option.\n"}),
    }
    mlvu_results = [mlvu.mlvu_process_results(MLVU_DOC, [r])["mlvu_percetion_score"] for r in RESPONSES]
    golden.update(mlvu_doc=MLVU_DOC, mlvu_prompt=mlvu.mlvu_doc_to_text(MLVU_DOC, {"pre_prompt": "", "post_prompt": "\nOnly give the best option.\nBest option: ("}),
                  mlvu_process_results=mlvu_results, mlvu_aggregate=mlvu.mlvu_aggregate_results_dev(mlvu_results))
    random.seed(0)  # lmms-eval's seed; the parsers below guess randomly when nothing parses
    lvb_results = [longvideobench.longvideobench_process_results(LVB_DOC, [r])["lvb_acc"] for r in RESPONSES]
    golden.update(lvb_doc=LVB_DOC, lvb_prompt=longvideobench.longvideobench_doc_to_text(
        LVB_DOC, {"pre_prompt": "", "post_prompt": "Answer with the option's letter from the given choices directly.\n"}),
        lvb_process_results=lvb_results, lvb_aggregate=longvideobench.longvideobench_aggregate_results(lvb_results))
    perception_results = [perception.perceptiontest_val_process_results_mc(PERCEPTION_DOC, [r])["accuracy"] for r in RESPONSES]
    golden.update(perception_doc=PERCEPTION_DOC, perception_prompt=perception.perceptiontest_val_doc_to_text(
        PERCEPTION_DOC, {"pre_prompt": "", "post_prompt": ""}), perception_process_results=perception_results,
        perception_aggregate=perception.perceptiontest_val_aggregate_accuracy(perception_results, None))
    random.seed(0)
    nextqa_results = [nextqa.nextqa_mc_process_results(NEXTQA_DOC, [r]) for r in RESPONSES]
    golden.update(nextqa_doc=NEXTQA_DOC, nextqa_prompt=nextqa.nextqa_doc_to_text_mc(NEXTQA_DOC, {}),
                  nextqa_process_results=[{"exact_match": bool(p["exact_match"])} for p in nextqa_results])
    random.seed(0)
    ego_results = [egoschema.egoschema_process_results_generation(EGOSCHEMA_DOC, [r])["score"] for r in RESPONSES]
    golden.update(egoschema_doc=EGOSCHEMA_DOC, egoschema_prompt=egoschema.egoschema_doc_to_text(
        EGOSCHEMA_DOC, {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly."}),
        egoschema_process_results=ego_results, egoschema_aggregate=egoschema.egoschema_aggregate_score(ego_results, None))
    golden["videomme_aggregate"] = videomme.videomme_aggregate_results(
        [p["videomme_perception_score"] for p in golden["videomme_process_results"]]
    )
    golden["mvbench_aggregate"] = mvbench.mvbench_aggregate_results(
        [p["mvbench_accuracy"] for p in golden["mvbench_process_results"]]
    )
    golden["pipeline"] = pipeline(source, videomme, mmworld, mvbench, mlvu, longvideobench, perception, nextqa, egoschema)
    golden["subtitles"] = subtitles(videomme)
    (HERE / "lmms_eval_golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


SUBTITLES = """1
00:00:00,000 --> 00:00:03,000
<font color="white" size=".72c">The first line.</font>

2
00:00:03,000 --> 00:00:06,500
<font color="white" size=".72c">The second line.</font>

3
00:00:07,000 --> 00:00:10,000
<font color="white" size=".72c">The third line.</font>
"""
SUBTITLE_VIDEO = {"seconds": 10, "fps": 10, "size": [64, 48]}  # tests/cli/test_eval.py writes the same videos


def subtitles(videomme) -> dict:
    """videomme_doc_to_text_subtitle (default kwargs) for an .mp4 and an .mkv video with the same
    subtitles, in lmms-eval's cache layout (``$HF_HOME/videomme/{data,subtitle}``)."""
    from crosslmm_cli.synthetic_video import index_frames, write_video

    root = Path(videomme.base_cache_dir) / videomme.cache_name
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "subtitle").mkdir(parents=True, exist_ok=True)
    width, height = SUBTITLE_VIDEO["size"]
    count = SUBTITLE_VIDEO["seconds"] * SUBTITLE_VIDEO["fps"]
    prompts = {}
    for video_id, suffix in (("sub_mp4", ".mp4"), ("sub_mkv", ".mkv")):
        write_video(root / "data" / f"{video_id}{suffix}", index_frames(count, height, width), (width, height),
                    SUBTITLE_VIDEO["fps"], "libx264", 10)
        (root / "subtitle" / f"{video_id}.srt").write_text(SUBTITLES, encoding="utf-8")
        doc = {**VIDEOMME_DOC, "videoID": video_id}
        prompts[suffix] = videomme.videomme_doc_to_text_subtitle(doc, {"frame_num": 32, "pre_prompt": "",
                                                                       "post_prompt": ""})
    return {"srt": SUBTITLES, "video": SUBTITLE_VIDEO, "prompts": prompts}


def pipeline(source: Path, videomme, mmworld, mvbench, mlvu, longvideobench, perception, nextqa, egoschema) -> dict:
    """Per benchmark: the scored text, the per-sample results and the aggregate lmms-eval reports for
    PIPELINE_RESPONSES answered to one question each, in document order (random.seed(0) first, as
    lmms-eval seeds): its model wrappers strip the generation, its evaluator cuts reasoning blocks."""
    reasoning = load("lmms_eval_api_reasoning", source / "lmms_eval" / "api" / "reasoning.py")
    scored = [reasoning.strip_reasoning_tags(r.strip(), DEFAULT_REASONING_TAGS) for r in PIPELINE_RESPONSES]
    benchmarks = {
        "videomme": (VIDEOMME_DOC, lambda d, r: videomme.videomme_process_results(d, [r])["videomme_perception_score"],
                     videomme.videomme_aggregate_results),
        "mvbench": (MVBENCH_DOC, lambda d, r: mvbench.mvbench_process_results(d, [r])["mvbench_accuracy"],
                    mvbench.mvbench_aggregate_results),
        "mlvu": (MLVU_DOC, lambda d, r: mlvu.mlvu_process_results(d, [r])["mlvu_percetion_score"],
                 mlvu.mlvu_aggregate_results_dev),
        "longvideobench": (LVB_DOC, lambda d, r: longvideobench.longvideobench_process_results(d, [r])["lvb_acc"],
                           longvideobench.longvideobench_aggregate_results),
        "perceptiontest": (PERCEPTION_DOC, lambda d, r: perception.perceptiontest_val_process_results_mc(d, [r])["accuracy"],
                           lambda results: perception.perceptiontest_val_aggregate_accuracy(results, None)),
        "nextqa": (NEXTQA_DOC, lambda d, r: {"exact_match": bool(nextqa.nextqa_mc_process_results(d, [r])["exact_match"])},
                   lambda results: sum(p["exact_match"] for p in results) / len(results)),  # its yaml: mean
        "egoschema": (EGOSCHEMA_DOC, lambda d, r: egoschema.egoschema_process_results_generation(d, [r])["score"],
                      lambda results: egoschema.egoschema_aggregate_score(results, None)),
    }
    result = {"responses": PIPELINE_RESPONSES, "reasoning_tags": DEFAULT_REASONING_TAGS, "scored_text": scored,
              "official_videomme_parser": [mmworld.extract_characters_regex(r) for r in scored]}
    for name, (doc, process, aggregate) in benchmarks.items():
        random.seed(0)
        per_sample = [process(doc, r) for r in scored]
        result[name] = {"process_results": per_sample, "aggregate": aggregate(per_sample)}
    return result


if __name__ == "__main__":
    main(Path(sys.argv[1]))

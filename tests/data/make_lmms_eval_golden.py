"""Record what lmms-eval's own task functions return on tricky responses (run by hand, not by CI).

    pip download --no-deps lmms-eval==0.7.3 -d /tmp/lmms && unzip -q /tmp/lmms/lmms_eval-0.7.3-*.whl -d /tmp/lmms/src
    python tests/data/make_lmms_eval_golden.py /tmp/lmms/src

lmms-eval's task modules import its whole harness (datasets, loguru, ...); only the functions used
here are needed, so the harness packages are stubbed and the task files loaded from the wheel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
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

VIDEOMME_DOC = {"question_id": "001-1", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
                "task_type": "Counting Problem", "videoID": "vid001", "question": "How many?",
                "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "B"}
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


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(source: Path) -> None:
    tasks = source / "lmms_eval" / "tasks"
    stub_harness()
    mcq = load("lmms_eval.tasks._task_utils.mcq_extract", tasks / "_task_utils" / "mcq_extract.py")
    videomme = load("lmms_eval_videomme_utils", tasks / "videomme" / "utils.py")
    mvbench = load("lmms_eval_mvbench_utils", tasks / "mvbench" / "utils.py")
    mmworld = load("lmms_eval_mmworld_utils", tasks / "mmworld" / "utils.py")  # the older Video-MME parser
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
    golden["videomme_aggregate"] = videomme.videomme_aggregate_results(
        [p["videomme_perception_score"] for p in golden["videomme_process_results"]]
    )
    golden["mvbench_aggregate"] = mvbench.mvbench_aggregate_results(
        [p["mvbench_accuracy"] for p in golden["mvbench_process_results"]]
    )
    (HERE / "lmms_eval_golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

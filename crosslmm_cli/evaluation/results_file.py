"""The fields of lmms-eval 0.7.3's ``results.json`` and samples beside the scores themselves,
computed as lmms-eval computes them (``evaluator_utils.TaskOutput``, ``api/metrics.py``,
``evaluator.evaluate``): standard errors, group/subtask listings, versions, n-shot,
higher_is_better, n-samples and each sample's ``doc_hash``. tests/cli/test_lmms_eval_plugin.py
holds them to a results.json written by lmms-eval itself.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict

import numpy as np

from .tasks import Task

# every lmms-eval task built from a YAML config reports this version
TASK_VERSION = "Yaml"
SCORE_KEY = "score"  # lmms-eval's default score_key for the CLT standard errors


def doc_hash() -> str:
    """lmms-eval 0.7.3's ``doc_hash``: sha256 of its request's document as indented JSON. Its
    requests are built without the document (``# doc=doc,`` in ``api/task.py``), so what it hashes
    is ``null`` and every sample carries the same value; written the same here so that samples files
    are interchangeable (measured: a run of lmms-eval 0.7.3 itself, tests/cli/test_lmms_eval_plugin.py)."""
    return hashlib.sha256(json.dumps(None, indent=2).encode("utf-8")).hexdigest()


def _mean_stderr(values: list) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1)) / math.sqrt(len(values))


def _clustered_stderr(scores: list[float], clusters: list) -> float:
    """Clustered standard error (Miller 2024, eq. 4), as lmms-eval's ``clustered_stderr``."""
    n = len(scores)
    mean = sum(scores) / n
    clt_squared = sum((s - mean) ** 2 for s in scores) / (n - 1) / n
    by_cluster = defaultdict(list)
    for score, cluster in zip(scores, clusters):
        by_cluster[cluster].append(score - mean)
    cross = sum(sum(d) ** 2 - sum(x * x for x in d) for d in by_cluster.values()) / (n * n)
    return math.sqrt(clt_squared + cross)


def stderr_entries(task: Task, processed: list) -> dict:
    """``<metric>_stderr``, ``_stderr_clt`` and ``_stderr_clustered`` of one (sub)task's per-sample
    results: a standard error only for a plain ``mean`` aggregation (none for custom functions);
    the CLT ones over the numeric items, or the ``score`` field of dict items."""
    items = [task.item(p) for p in processed]
    metric = task.metric
    entries = {f"{metric}_stderr,none": _mean_stderr(items) if task.mean_aggregation and len(items) > 1 else "N/A"}
    scores, clusters = [], []
    for item in items:
        if isinstance(item, (int, float)):
            scores.append(item)
            clusters.append(None)
        elif isinstance(item, dict) and SCORE_KEY in item:
            scores.append(item[SCORE_KEY])
            clusters.append(item.get(task.cluster_key) if task.cluster_key else None)
    n = len(scores)
    entries[f"{metric}_stderr_clt,none"] = float(np.std(scores, ddof=1) / np.sqrt(n)) if n > 1 else "N/A"
    named = [c for c in clusters if c is not None]
    entries[f"{metric}_stderr_clustered,none"] = (_clustered_stderr(scores, clusters)
                                                  if named and len(set(named)) > 1 and n > 1 else "N/A")
    return entries


def sections(task: Task, docs_per_task: dict[str, int], samples_per_task: dict[str, int]) -> dict:
    """``group_subtasks``, ``versions``, ``n-shot``, ``higher_is_better`` and ``n-samples`` as lmms-eval
    writes them: a group lists the members that ran (here: that have questions in the data folder)
    and has a ``higher_is_better`` entry of its own, no version, n-shot or sample count."""
    if task.subtasks:
        members = [name for name in task.subtasks if docs_per_task.get(name)]
        group_subtasks = {task.name: members}
    else:
        members, group_subtasks = [task.name], {task.name: []}
    return {
        "group_subtasks": group_subtasks,
        "versions": {name: TASK_VERSION for name in sorted(members)},
        "n-shot": {name: 0 for name in sorted(members)},
        "higher_is_better": {name: {task.metric: True} for name in sorted(set(group_subtasks) | set(members))},
        "n-samples": {name: {"original": docs_per_task.get(name, 0), "effective": samples_per_task.get(name, 0)}
                      for name in members},
    }

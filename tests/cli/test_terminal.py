"""What a user's terminal shows comes from crosslmm. `init`, `ask`, `ask --json`, `eval` and
`finetune`, each run as a user runs them (a fresh process, the installed console entry point's
`main`), print no line the project did not write, open no network connection (an audit hook sees
every connect and name lookup), and leave transformers' attention and bitsandbytes as shipped: the
hub's `kernels` package is never imported unless the user opts in. Ctrl-C, which a terminal sends
to the whole process group (DataLoader workers included), ends a command with exit code 130 and one
line."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from crosslmm_cli.synthetic_video import index_frames, write_video

# Runs the CLI's main() with an audit hook; what it saw goes to $PROBE_OUT as JSON.
PROBE = r"""
import json, os, sys
seen = []
def audit(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple):  # an IP address; local sockets are paths
        seen.append(f"connect {args[1]!r}")
    elif event == "socket.getaddrinfo":
        seen.append(f"getaddrinfo {args[0]!r}")
sys.addaudithook(audit)
from crosslmm_cli.app import main
sys.argv = ["crosslmm", *json.loads(os.environ["PROBE_ARGS"])]
try:
    main()
finally:
    attention = []
    qwen2 = sys.modules.get("transformers.models.qwen2.modeling_qwen2")
    forward = qwen2.Qwen2Attention.forward if qwen2 else None
    while forward is not None:  # every wrapper, down to transformers' own function
        attention.append(forward.__code__.co_filename)
        forward = getattr(forward, "__wrapped__", None)
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump({"network": seen, "kernels": repr(sys.modules.get("kernels", "never imported")),
                   "attention": attention}, f)
"""

# the only lines each command may print on stderr (progress, summaries), as regular expressions
OWN_LINES = {
    "init": [r"saved tiny to \S+; use it with --model \S+"],
    "ask": [],
    "ask --json": [],
    "eval": [r"wrote \S+results\.json"],
    "finetune": [r"\s*(?:[⠀-⣿] )?training [━╸ ]+ \d+/\d+ loss .*", r"trained \d+ steps on \d+ samples \(\d+ skipped\); .* saved .*"],
}


def user_environment(tmp_path) -> dict:
    """The user's environment: the hub reachable as far as crosslmm knows (no offline switch set),
    no opt-in to hub kernels, a wide terminal so that rich does not wrap lines."""
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("CROSSLMM_HUB_KERNELS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PYTEST_CURRENT_TEST")}
    return {**environment, "COLUMNS": "200", "HF_HOME": str(tmp_path / "hf"), "CROSSLMM_HOME": str(tmp_path / "home")}


def run_cli(tmp_path, name: str, *args: str, environment: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / f"probe-{re.sub(r'[^a-z]', '-', name)}.json"
    env = {**(environment or user_environment(tmp_path)), "PROBE_ARGS": json.dumps(list(args)), "PROBE_OUT": str(out)}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)
    return done, json.loads(out.read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("terminal")
    (root / "clips").mkdir()
    write_video(root / "clips" / "a.mp4", index_frames(20, 64, 64), (64, 64), 10, "libx264", 5)
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"video": "clips/a.mp4", "question": "Colour?", "options": ["red", "green"], "answer": "A"},
        {"video": "clips/a.mp4", "question": "Shape?", "options": ["ball", "cube"], "answer": "B"}]))
    (root / "annotations.jsonl").write_text(json.dumps({"video": "clips/a.mp4", "question": "What?", "answer": "A ball."}) + "\n")
    return root


def test_every_command_prints_only_its_own_lines_and_fetches_nothing(work, tmp_path):
    model = str(work / "tiny")
    commands = {
        "init": ["init", "tiny", model],
        "ask": ["ask", str(work / "clips" / "a.mp4"), "What?", "--model", model, "--frames", "2", "--max-new-tokens", "4"],
        "ask --json": ["ask", str(work / "clips" / "a.mp4"), "What?", "--model", model, "--frames", "2",
                       "--max-new-tokens", "4", "--json", "--quantize", "nf4"],
        "eval": ["eval", "jsonl", "--data-dir", str(work), "--output", str(tmp_path / "eval"), "--model", model,
                 "--frames", "2"],
        "finetune": ["finetune", str(work), "--model", model, "--output", str(tmp_path / "trained"), "--max-steps", "2",
                     "--frames", "2", "--quantize", "nf4"],
    }
    for name, args in commands.items():
        done, seen = run_cli(tmp_path, name, *args)
        assert done.returncode == 0, (name, done.stderr[-3000:])
        foreign = [line for line in done.stderr.splitlines()
                   if line.strip() and not any(re.fullmatch(own, line) for own in OWN_LINES[name])]
        assert not foreign, (name, foreign)
        assert seen["network"] == [], (name, seen["network"])
        assert seen["kernels"] == "None", (name, seen["kernels"])  # blocked: transformers and bitsandbytes never load it
        assert seen["attention"] and all("kernels" not in path.split(os.sep) for path in seen["attention"]), seen


def test_hub_kernels_are_the_users_opt_in(work, tmp_path):
    """The check above can fail: opted in, transformers imports `kernels` and wraps the attention."""
    model = work / "opt-in"
    environment = {**user_environment(tmp_path), "CROSSLMM_HUB_KERNELS": "1"}
    done, seen = run_cli(tmp_path, "opt-in", "init", "tiny", str(model), environment=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert seen["kernels"].startswith("<module 'kernels'")
    assert any("kernels" in path.split(os.sep) for path in seen["attention"])


def ctrl_c(command: list[str], after, env: dict, to_group: bool = True) -> subprocess.CompletedProcess:
    """``command`` in a process group of its own, sent SIGINT once ``after()`` is true: as a
    terminal's Ctrl-C is (to the whole group), or as ``kill -INT`` is (to the main process only)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not after() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    (os.killpg if to_group else os.kill)(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def crosslmm(*args: str) -> list[str]:
    return [sys.executable, "-m", "crosslmm_cli.app", *args]


@pytest.mark.parametrize("to_group", [True, False], ids=["process group", "main process"])
def test_ctrl_c_ends_finetune_with_130_and_one_line(work, tmp_path, to_group):
    """At 4 seeded moments after steps 1 to 3, with loader workers. An interrupt that cut a step's
    backward short crashed torch at exit (SIGSEGV, 3 runs in 8 on torch 2.15, 1 in 8 on 2.13)."""
    model = work / "tiny-ctrl-c"
    if not model.exists():
        assert subprocess.run(crosslmm("init", "tiny", str(model)), capture_output=True, timeout=300).returncode == 0
    moments = random.Random(3 + to_group)
    for attempt in range(4):
        out, steps, wait = tmp_path / f"run-{attempt}", moments.randint(1, 3), moments.uniform(0, 0.5)
        metrics = out / "metrics.jsonl"

        def after(metrics=metrics, steps=steps, began=[None]):  # the wait counts from the step's row
            if began[0] is None and metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
                began[0] = time.monotonic()
            return began[0] is not None and time.monotonic() - began[0] >= wait

        done = ctrl_c(crosslmm("finetune", str(work), "--model", str(model), "--output", str(out), "--epochs", "100000",
                               "--frames", "2", "--workers", "2"), after=after, env=user_environment(tmp_path),
                      to_group=to_group)
        assert done.returncode == 130, (attempt, done.returncode, done.stderr[-3000:])
        lines = [line for line in done.stderr.splitlines()
                 if line.strip() and not re.fullmatch(OWN_LINES["finetune"][0], line)]
        assert lines == ["interrupted"], (attempt, done.stderr[-3000:])


def test_ctrl_c_ends_ask_json_with_130_and_one_line(work, tmp_path):
    """Mid-answer: a long greedy answer on a random model runs for tens of seconds."""
    model = work / "tiny-ask"
    assert subprocess.run(crosslmm("init", "tiny", str(model)), capture_output=True, timeout=300).returncode == 0
    began = time.monotonic()
    done = ctrl_c(crosslmm("ask", str(work / "clips" / "a.mp4"), "What?", "--model", str(model), "--frames", "2",
                           "--max-new-tokens", "20000", "--json"),
                  after=lambda: time.monotonic() - began > 8, env=user_environment(tmp_path))
    assert done.returncode == 130, (done.returncode, done.stderr[-3000:])
    assert done.stderr.split() == ["interrupted"] and done.stdout.strip() == ""

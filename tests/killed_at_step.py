"""`crosslmm` killed with SIGKILL, as an out-of-memory kill or a lost node would end it: no handler
runs, nothing is flushed or saved. ``CROSSLMM_TEST_KILL_AT_STEP=N``: right after optimizer step N is
logged; ``CROSSLMM_TEST_KILL_AT_SHARD=N``: right after distillation's teacher pass wrote shard N.
``CROSSLMM_TEST_KILL_AFTER_LINES=N``: when run-batch has written N output lines.
``CROSSLMM_TEST_SHARD_PROMPTS=N`` makes the teacher's shards N prompts long (set it alike on every run
whose targets are compared).

    python -m tests.killed_at_step finetune RECIPE --output OUT ...
    python -m tests.killed_at_step distill FOLDER --output OUT ...
    python -m tests.killed_at_step run-batch -i REQUESTS -o OUT ...
"""

from __future__ import annotations

import os
import signal

from crosslmm_cli import run_batch
from crosslmm_cli.app import main
from crosslmm_cli.distill import cache
from crosslmm_cli.finetune import train

append_row = train.append_row
write_shard = cache.TargetCache.write
make_output_line = run_batch.output_line
lines_made = [0]


def append_then_die(path, row):
    append_row(path, row)
    if path.name == "samples.jsonl" and row["step"] == int(os.environ.get("CROSSLMM_TEST_KILL_AT_STEP", -1)):
        os.kill(os.getpid(), signal.SIGKILL)


def write_then_die(self, shard, answers, left_out):
    write_shard(self, shard, answers, left_out)
    if shard == int(os.environ.get("CROSSLMM_TEST_KILL_AT_SHARD", -1)):
        os.kill(os.getpid(), signal.SIGKILL)


def output_line_or_die(*args, **kwargs):
    """run-batch makes each output line just before writing it: the (N + 1)-th is never made."""
    if lines_made[0] == int(os.environ.get("CROSSLMM_TEST_KILL_AFTER_LINES", -1)):
        os.kill(os.getpid(), signal.SIGKILL)
    lines_made[0] += 1
    return make_output_line(*args, **kwargs)


if __name__ == "__main__":
    train.append_row = append_then_die
    cache.TargetCache.write = write_then_die
    run_batch.output_line = output_line_or_die
    if "CROSSLMM_TEST_SHARD_PROMPTS" in os.environ:
        cache.SHARD_PROMPTS = int(os.environ["CROSSLMM_TEST_SHARD_PROMPTS"])
    main()

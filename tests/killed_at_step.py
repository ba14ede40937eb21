"""`crosslmm` killed with SIGKILL right after optimizer step N is logged (``CROSSLMM_TEST_KILL_AT_STEP=N``),
as an out-of-memory kill or a lost node would end it: no handler runs, nothing is flushed or saved.

    python -m tests.killed_at_step finetune RECIPE --output OUT ...
"""

from __future__ import annotations

import os
import signal

from crosslmm_cli.app import main
from crosslmm_cli.finetune import train

append_row = train.append_row


def append_then_die(path, row):
    append_row(path, row)
    if path.name == "samples.jsonl" and row["step"] == int(os.environ["CROSSLMM_TEST_KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    train.append_row = append_then_die
    main()

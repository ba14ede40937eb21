"""`crosslmm` with accelerate's FSDP switched on for CPU processes: the FSDP tests' launcher module.

accelerate (1.15) turns FSDP on for GPU-like devices only; under ``--cpu`` it prepares DDP instead
(which ``crosslmm finetune`` refuses). torch's ``fully_shard`` itself runs on gloo. This module
changes only accelerate's decision, once its state is built, to what it is on GPUs (distributed
type FSDP, its own FSDP plugin kept), so that a test drives accelerate's FSDP2 preparation, its
sharded ``save_state``/``load_state`` and full-state gathering, and crosslmm's code around them:

    accelerate launch --config_file crosslmm_cli/finetune/fsdp.yaml --cpu --num_processes 2 \\
        -m tests.fsdp_on_cpu finetune DATA --output OUT --full ...

``CROSSLMM_TEST_STOP_AT_STEP=N`` stops the run as Ctrl-C would, right after the checkpoint of step N.
"""

from __future__ import annotations

import os

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from crosslmm_cli.app import main
from crosslmm_cli.finetune import train

accelerator_state_init = AcceleratorState.__init__


def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def stop_after(step_to_stop: int):
    save_state = train.save_state

    def save_then_stop(accelerator, settings, launch, step, *rest):
        save_state(accelerator, settings, launch, step, *rest)
        if step == step_to_stop:
            raise KeyboardInterrupt

    return save_then_stop


if __name__ == "__main__":
    AcceleratorState.__init__ = fsdp_on_cpu
    if "CROSSLMM_TEST_STOP_AT_STEP" in os.environ:
        train.save_state = stop_after(int(os.environ["CROSSLMM_TEST_STOP_AT_STEP"]))
    main()

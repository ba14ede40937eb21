"""Full fine-tuning sharded over GPUs with FSDP2, as accelerate's own configuration asks for it
(``accelerate launch --config_file crosslmm_cli/finetune/fsdp.yaml``): what crosslmm checks before
the slow work, and how the output is written from the shards."""

from __future__ import annotations

import os

import torch

from ..errors import UserError
from ..model_source import open_model

FSDP_CONFIG = os.path.join(os.path.dirname(__file__), "fsdp.yaml")


def check_sharding(accelerator, full: bool) -> bool:
    """Whether this run is sharded (FSDP); :class:`UserError` for a combination that cannot work.
    accelerate (1.15) turns FSDP on for GPUs only: on CPU processes it would quietly train whole
    copies (DDP) instead, so that is refused rather than run under a name it is not."""
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if asked and not sharded:
        raise UserError("the accelerate config asks for FSDP, which accelerate runs on CUDA GPUs only (on CPU it would "
                        "train whole copies, as DDP): launch on GPUs, or with a config without FSDP")
    if sharded and not full:
        raise UserError("FSDP shards full fine-tuning: add --full (a LoRA or QLoRA run fits each GPU whole: launch "
                        "it without FSDP, as DDP)")
    if sharded and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise UserError(f"set fsdp_version: 2 in the accelerate config ({FSDP_CONFIG} is one): crosslmm shards with "
                        "FSDP2 (torch's fully_shard)")
    return sharded


def unsharded_model(state_dict: dict[str, torch.Tensor], settings):
    """The base (on the CPU) with the full weights gathered from the shards
    (``accelerator.get_state_dict``) and the run's cross-attention settings: what is written out."""
    model, _ = open_model(settings.model, device="cpu", quantize="none", dtype=torch.float32,
                          tokens_per_frame=settings.tokens_per_frame)
    model.set_cross_attention(v2v=settings.v2v, t2v=settings.t2v and settings.stage == 2)
    if settings.memory_position:
        model.add_memory_position()
    model.load_state_dict(state_dict)
    return model

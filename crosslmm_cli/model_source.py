"""Turn a ``--model`` value (preset name, local checkpoint directory or hub id) into a loaded model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from crosslmm import PRESETS, CrossLMMConfig, build_preset, build_random_preset, load_checkpoint, save_checkpoint

from .checkpoint_files import check_checkpoint
from .errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def cache_home() -> Path:
    """Where hub presets are materialised once as checkpoints (``$CROSSLMM_HOME`` or ~/.cache/crosslmm)."""
    return Path(os.environ.get("CROSSLMM_HOME", Path.home() / ".cache" / "crosslmm"))


def is_checkpoint_dir(path: str | Path) -> bool:
    return Path(path, "config.json").is_file()


def cuda_available() -> bool:
    return torch.cuda.is_available()


def pick_device(device: str | None) -> str:
    """``--device`` as given, else cuda when present, else cpu; refuse cuda on a machine without it."""
    if device is None:
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise UserError(f"--device {device} asked for, but this machine has no CUDA GPU; use --device cpu")
    return device


def check_hub_reachable(what: str) -> None:
    """Fail fast, in one line, when the hub's host cannot even be resolved (no network), instead of
    letting the hub client retry for a minute. Offline mode (HF_HUB_OFFLINE=1) is left to the client."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise UserError(
            f"could not fetch {what}: the Hugging Face hub ({host}) is unreachable from this machine; "
            "point --model at a local checkpoint directory made by `crosslmm init`"
        ) from None


def create_checkpoint(preset: str, outdir: Path, dtype: torch.dtype | None = None, random_weights: bool = False,
                      max_shard_size: str | None = None, **options) -> None:
    """Build ``preset`` (downloading its parts unless it has random weights, or ``random_weights``
    asks for random weights of its architecture and the offline byte-level tokenizer) and save it to
    ``outdir`` in ``dtype``: by default float32 for random weights and bfloat16 for the others."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; run `crosslmm models` to list the presets")
    random_weights = random_weights or PRESETS[preset].source == "random"
    if dtype is None:
        dtype = torch.float32 if random_weights else torch.bfloat16
    if not random_weights:
        check_hub_reachable(f"the parts of {preset}")
    try:
        if random_weights:
            model, processor = build_random_preset(preset, **options)
            model.to(dtype)
            model.config.needs_training = False  # answers are noise, by choice: for benchmarks and smoke runs
        else:
            model, processor = build_preset(preset, dtype=dtype, **options)
    except OSError as error:  # huggingface_hub raises OSError subclasses when it cannot fetch
        raise UserError(
            f"could not fetch the parts of {preset} from the Hugging Face hub ({type(error).__name__}); "
            "check the network, or point --model at a local checkpoint made by `crosslmm init`"
        ) from error
    except ValueError as error:
        raise UserError(f"cannot build {preset}: {error}") from error
    save_checkpoint(model, processor, outdir, max_shard_size=max_shard_size)


def looks_like_a_path(spec: str) -> bool:
    """A hub id is ``owner/name``; anything else with a path separator, or naming a folder that
    exists, is meant as a local path."""
    return (spec.startswith(("/", "./", "../", "~")) or spec.endswith("/") or spec.count("/") > 1
            or ("/" in spec and Path(spec).parent.is_dir()))


def refuse_untrained(spec: str) -> None:
    """From-parts models answer nothing useful before Stage I/II training: say so instead."""
    untrained = PRESETS[spec].needs_training if spec in PRESETS else (
        is_checkpoint_dir(spec) and CrossLMMConfig.from_pretrained(spec).needs_training
    )
    if untrained:
        raise UserError(
            f"{spec} has an untrained projector and cross-attention (built from parts); train it first: "
            f"crosslmm finetune <folder> --model {spec} --stage 1 --output <dir>, then --model <dir>"
        )


def open_model(
    spec: str,
    device: str,
    quantize: str,
    dtype: torch.dtype | None = None,
    tokens_per_frame: int | None = None,
    require_trained: bool = False,
    read_weights: bool = True,
    pool_mode: str | None = None,
):
    """Load ``spec``: a checkpoint directory, a preset name (built once into the cache) or a hub id.
    With ``require_trained``, refuse (before loading weights) a model whose projector is untrained;
    without ``read_weights``, allocate the weights without reading them (see ``unread_model``)."""
    overrides = {name: value for name, value in (("tokens_per_frame", tokens_per_frame), ("pool_mode", pool_mode))
                 if value is not None}
    if is_checkpoint_dir(spec):
        check_checkpoint(Path(spec))
    if require_trained:
        refuse_untrained(spec)
    path: str | Path = spec
    if not is_checkpoint_dir(spec):
        if Path(spec).exists():
            raise UserError(f"{spec} is not a crosslmm checkpoint (no config.json); make one with `crosslmm init`")
        if looks_like_a_path(spec):
            raise UserError(f"--model {spec}: no such checkpoint folder; check the path (or give a preset name or a hub id)")
        if spec in PRESETS:
            path = cache_home() / spec
            if not is_checkpoint_dir(path):
                # build next to the cache entry and rename: an interrupted build leaves no half checkpoint
                partial = path.with_name(path.name + ".partial")
                shutil.rmtree(partial, ignore_errors=True)
                create_checkpoint(spec, partial)
                partial.rename(path)
        else:
            check_hub_reachable(f"model {spec!r}")
    try:
        return load_checkpoint(path, quantize=quantize, device=device, dtype=dtype, read_weights=read_weights, **overrides)
    except OSError as error:
        raise UserError(
            f"could not load model {spec!r}: not a local checkpoint, and it could not be fetched from the hub "
            f"({type(error).__name__}); point --model at a directory made by `crosslmm init`"
        ) from error
    except ValueError as error:  # a bad override, e.g. tokens_per_frame that is not a square
        raise UserError(f"cannot load model {spec!r}: {error}") from error

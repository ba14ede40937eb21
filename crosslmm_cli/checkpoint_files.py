"""Check a local checkpoint's files before a single weight is allocated: a readable ``config.json``,
safetensors weights (never pickles) that are whole, and shapes that agree with the config.

A config with absurd sizes would otherwise have transformers allocate them (a terabyte) before it
ever looks at the weights; here the model is built on the meta device (shapes only, no memory) and
compared with the safetensors header, which is read without touching the tensor data.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from .errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# a safetensors header lists names, dtypes, shapes and offsets: megabytes even for the largest models
MAX_HEADER_BYTES = 100 << 20


def safetensors_header(path: Path) -> dict:
    """The header of a safetensors file (name -> dtype, shape, data_offsets); :class:`UserError`
    when the file is not whole."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path} is not a safetensors file (it is {size} bytes); copy the checkpoint again")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise UserError(f"{path} is truncated or not a safetensors file; copy the checkpoint again")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path} has a damaged header; copy the checkpoint again") from None
    header.pop("__metadata__", None)
    needed = max((entry["data_offsets"][1] for entry in header.values()), default=0) + 8 + length
    if needed > size:
        raise UserError(f"{path} is truncated ({size:,} of {needed:,} bytes); copy the checkpoint again")
    return header


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a checkpoint folder loads from: one file, a sharded index's shards, or a
    trained-only checkpoint's tensors; :class:`UserError` when there are none (pickles are refused)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(f"{index} is not a valid shard index; copy the checkpoint again") from None
        missing = [name for name in shards if not (folder / name).is_file() or Path(name).name != name]
        if missing:
            raise UserError(f"{folder} lacks the weight shard {missing[0]} its index lists; copy the checkpoint again")
        return [folder / name for name in shards]
    for name in ("model.safetensors", "trained.safetensors"):
        if (folder / name).is_file():
            return [folder / name]
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(f"{folder} holds only pickled weights ({', '.join(pickles[:3])}); crosslmm reads only safetensors, "
                        "which cannot run code: convert them (safetensors' convert script) or use a safetensors checkpoint")
    raise UserError(f"{folder} has a config.json but no model.safetensors; copy the whole checkpoint")


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); copy the checkpoint again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a JSON object; copy the checkpoint again")
    return config


def check_checkpoint(folder: Path) -> None:
    """:class:`UserError` unless ``folder``'s config and safetensors weights are readable and agree."""
    import torch

    from crosslmm import CrossLMMConfig, CrossLMMForConditionalGeneration

    config_values = read_config(folder)
    base = config_values.get("base_checkpoint")
    if isinstance(base, str) and base.startswith(("./", "../", "/")):
        from crosslmm.loading import base_location

        where = Path(base_location(folder, base))
        if not (where / "config.json").is_file():
            raise UserError(f"{folder} holds only trained tensors; the base checkpoint it needs, {where} ({base} from "
                            "it), is missing: put the base back there (move the two together), or train with --merge")
    files = weight_files(folder)
    header = {name: entry for path in files for name, entry in safetensors_header(path).items()}
    try:
        config = CrossLMMConfig.from_pretrained(folder)
        config.validate_crosslmm()
        with torch.device("meta"):  # shapes only: nothing is allocated, whatever sizes the config claims
            expected = {name: list(p.shape) for name, p in CrossLMMForConditionalGeneration(config).state_dict().items()}
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise UserError(f"{folder / 'config.json'} does not describe a CrossLMM model ({error}); copy the checkpoint again") from None
    for name, entry in header.items():
        quantised = entry.get("dtype") == "U8" or not name.endswith(("weight", "bias"))
        if name in expected and not quantised and list(entry["shape"]) != expected[name]:
            raise UserError(f"{folder}: config.json and the weights disagree ({name} is {entry['shape']} in the file, "
                            f"{expected[name]} by the config); the two do not belong together")


def check_training_state(folder: Path) -> None:
    """:class:`UserError` unless each pickled file of a training checkpoint (accelerate's optimizer,
    scheduler, sampler and random states) is in torch's own archive format, a zip, which torch reads
    with its weights-only unpickler (tensors, numpy arrays and plain containers; it runs no code).
    The random states are read here too: accelerate would skip them silently when they do not load,
    and the resumed run would no longer draw what the uninterrupted one does. Nothing else is read."""
    import pickle

    from accelerate.utils import load

    for path in sorted(folder.rglob("*")):
        if path.suffix in PICKLE_SUFFIXES and path.is_file() and not zipfile.is_zipfile(path):
            raise UserError(f"--resume: {path} is not a file crosslmm wrote (not torch's archive format); delete "
                            f"{folder} to resume from the checkpoint before it, or start a new --output")
    for path in sorted(folder.glob("random_states_*.pkl")):
        try:
            load(path, map_location="cpu")  # accelerate's own reader: weights-only, numpy arrays allowed
        except pickle.UnpicklingError as error:
            raise needs_code(path, error) from None
    refuse_older_layout(folder)


def refuse_older_layout(folder: Path) -> None:
    """:class:`UserError` for a training checkpoint written when the video separator was the model's
    own parameter: its optimizer state lists the trained tensors in another order."""
    from safetensors import safe_open

    from crosslmm.modeling import LEGACY_NAMES

    for path in sorted(folder.glob("model*.safetensors")):
        with safe_open(path, "pt") as weights:
            if any(name.removeprefix("module.") in LEGACY_NAMES for name in weights.keys()):
                raise UserError(f"--resume: {folder} was written by an older crosslmm (the separator was "
                                "'video_separator'), whose optimizer state does not line up with this one's; finish "
                                "the run with that version, or start a new --output (finished outputs load as they are)")


def needs_code(path: Path, error: Exception) -> UserError:
    """The error for a checkpoint file that torch's weights-only unpickler refuses (it would run code)."""
    reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"--resume: {path} holds a file that cannot be read without running code ({reason}); it is not "
                     "a checkpoint crosslmm wrote: delete it to resume from the one before, or start a new --output")

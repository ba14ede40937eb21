"""A training recipe: a YAML file whose top-level keys are finetune options (``stage``, ``lr``,
``frames``, ``global_batch``, ...; a flag given on the command line wins) and whose ``sources:`` list
says where the samples come from and in which proportion::

    stage: 1
    global_batch: 512
    max_steps: 39063
    sources:
      - path: capsfusion/{00000..14999}.tar   # relative to the recipe's folder
        weight: 1
      - path: internvid/*.parquet
        weight: 1
      - path: llava_video/annotations.jsonl
        media: llava_video/videos            # where its rows' files lie (default: the file's folder)
        weight: 0.5
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from ..errors import UserError

SOURCE_KEYS = ("path", "weight", "media")
NOT_IN_RECIPES = ("folder", "sources", "resume")  # the data is the recipe itself; --resume is a flag


@dataclass
class Recipe:
    path: Path
    options: dict  # finetune option name -> value, typed as FinetuneSettings declares it
    sources: list[dict]  # {"path", "weight", "media"} with paths as written (relative to the recipe's folder)


def read_recipe(path: Path, settings_class) -> Recipe:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read the recipe ({error})") from None
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        raise UserError(f"{path} is not valid YAML{f' (line {where.line + 1})' if where else ''}: "
                        f"{getattr(error, 'problem', error)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping of finetune options and a sources: list")
    hints = typing.get_type_hints(settings_class)
    types_of = {f.name: hints[f.name] for f in fields(settings_class) if f.name not in NOT_IN_RECIPES}
    options = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "sources":
            continue
        if name not in types_of:
            raise UserError(f"{path}: unknown option {key!r}; a recipe takes sources: and the finetune options "
                            f"({', '.join(sorted(types_of))})")
        options[name] = typed(value, types_of[name], f"{path}: {key}")
    return Recipe(path, options, read_sources(data.get("sources"), path))


def read_sources(entries, path: Path) -> list[dict]:
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: sources: must list at least one source (each with a path: and a weight:)")
    sources = []
    for number, entry in enumerate(entries):
        where = f"{path}: source {number}"
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise UserError(f"{where} needs a path: (a glob of .tar shards or .parquet files, a .jsonl/.json file or a folder)")
        unknown = set(entry) - set(SOURCE_KEYS)
        if unknown:
            raise UserError(f"{where}: unknown key {sorted(unknown)[0]!r}; a source takes {', '.join(SOURCE_KEYS)}")
        weight = typed(entry.get("weight", 1.0), float, f"{where}: weight")
        if not math.isfinite(weight) or weight <= 0:
            raise UserError(f"{where}: weight must be a positive number, got {entry.get('weight')!r}")
        media = entry.get("media")
        if media is not None and not isinstance(media, str):
            raise UserError(f"{where}: media must be a folder path")
        sources.append({"path": entry["path"], "weight": weight, "media": media})
    return sources


def typed(value, annotation, where: str):
    """``value`` as the settings field's type (``int``, ``float | None``, ``bool``, ``str``,
    ``Path``); YAML writes 1e-3 as a string, which is taken as the number it means."""
    kinds = [a for a in typing.get_args(annotation) if a is not type(None)] if isinstance(
        annotation, types.UnionType) else [annotation]
    if value is None and type(None) in typing.get_args(annotation):
        return None
    kind = kinds[0]
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if kind is int and (isinstance(value, bool) or isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be {getattr(kind, '__name__', kind)}, got {value!r}") from None

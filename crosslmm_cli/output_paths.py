"""Outputs are checked before the work that fills them: a folder that is a file, a file that is a
folder, or a place this user cannot write ends in one line, not after an hour of evaluating."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import UserError


def writable_folder(path: Path, flag: str) -> Path:
    """``path`` as a folder this process can write in (made if missing)."""
    for folder in (path, *path.parents):  # the folder itself, or one it would be made in
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{flag} {path}: {folder} is a file, not a folder; choose a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UserError(f"{flag} {path} cannot be written ({error.strerror}); choose a folder you can write to") from None
    return path


def writable_file(path: Path, flag: str) -> Path:
    """``path`` as a file this process can create or replace (its folder made if missing)."""
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    writable_folder(path.parent, flag)
    if path.exists():
        try:
            with open(path, "ab"):
                pass
        except OSError as error:
            raise UserError(f"{flag} {path} cannot be written ({error.strerror}); choose another file") from None
    return path


def refuse_output_over_input(output: Path, source: Path, name: str) -> None:
    """A run writes its checkpoints and weights under ``output``: never where they would overwrite
    ``source`` (the same folder, a folder inside it, or one holding it)."""
    out, inp = output.resolve(), source.resolve()
    if out == inp or out.is_relative_to(inp) or inp.is_relative_to(out):
        where = "is" if out == inp else "sits inside" if out.is_relative_to(inp) else "contains"
        raise UserError(f"--output {output} {where} {name} ({source}); training never writes over its inputs: "
                        "choose an --output outside it")

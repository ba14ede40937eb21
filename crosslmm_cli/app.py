"""The ``crosslmm`` command: a thin Typer layer that parses, validates and calls one module per verb."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import UserError

app = typer.Typer(
    name="crosslmm",
    help="Ask questions about long videos with CrossLMM: few tokens per frame in the LLM, "
    "full-resolution frame tokens read through dual cross-attention.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stderr = Console(stderr=True)


def user_errors(command):
    """Report a :class:`UserError` as one red line and exit non-zero; Ctrl-C exits 130 quietly."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            stderr.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def quiet_transformers() -> None:
    """The library's own progress bars and warnings are noise in a CLI (hub downloads keep theirs)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@app.command()
@user_errors
def models() -> None:
    """List the presets with their parameter counts (counted on the meta device: no download)."""
    from .presets_table import presets_descriptions, presets_table

    console = Console()
    console.print(presets_table())
    console.print(presets_descriptions(), highlight=False)


@app.command()
@user_errors
def init(
    preset: Annotated[str, typer.Argument(help="preset name (see `crosslmm models`)")],
    outdir: Annotated[Path, typer.Argument(help="directory to write the checkpoint to")],
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame (1, 4, 9, 16, ...)")] = None,
    dtype: Annotated[str, typer.Option(help="weights dtype: bf16 | fp16 | fp32 (tiny defaults to fp32)")] = "",
    force: Annotated[bool, typer.Option(help="write into a non-empty directory")] = False,
) -> None:
    """Build a checkpoint from a preset and save it as a local Hugging Face directory
    (config.json, model.safetensors, tokenizer files) that `--model OUTDIR` loads."""
    from .model_source import DTYPES, create_checkpoint

    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not force)):
        raise UserError(f"{outdir} exists and is not an empty directory; choose another path or pass --force")
    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    quiet_transformers()
    options = {} if tokens_per_frame is None else {"tokens_per_frame": tokens_per_frame}
    default_dtype = None if preset == "tiny" else DTYPES["bf16"]
    with stderr.status(f"building {preset}"):
        create_checkpoint(preset, outdir, dtype=DTYPES[dtype] if dtype else default_dtype, **options)
    stderr.print(f"[green]saved[/] {preset} to {outdir}; use it with --model {outdir}")


def main() -> None:
    app(prog_name="crosslmm")


if __name__ == "__main__":
    sys.exit(main())

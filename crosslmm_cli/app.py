"""The ``crosslmm`` command: a thin Typer layer that parses, validates and calls one module per verb."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .errors import UserError
from .output_paths import writable_file, writable_folder

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


# Paths are checked by the commands themselves (one line, exit 1), not by click's parser (a boxed
# message and exit 2): every Path parameter below says readable=False.


def quiet_libraries() -> None:
    """Library progress bars and warnings are noise in a CLI (hub downloads keep theirs); e.g.
    bitsandbytes warns on CPU that an optional kernel package is missing."""
    import logging

    import huggingface_hub
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # this also silences the hub's download bars:
    huggingface_hub.utils.enable_progress_bars()  # a first run's download shows its progress
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


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
    outdir: Annotated[Path, typer.Argument(readable=False, help="directory to write the checkpoint to")],
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame (1, 4, 9, 16, ...)")] = None,
    dtype: Annotated[str, typer.Option(help="weights dtype: bf16 | fp16 | fp32 (random presets default to fp32)")] = "",
    max_shard_size: Annotated[Optional[str], typer.Option(
        help="largest weight file, e.g. 5GB (default: transformers' own, 50GB)")] = None,
    force: Annotated[bool, typer.Option(help="write into a non-empty directory")] = False,
    random: Annotated[bool, typer.Option(help="random weights of the preset's architecture, no download "
                                               "(benchmarks and smoke runs; the answers are noise)")] = False,
) -> None:
    """Build a checkpoint from a preset and save it as a local Hugging Face directory
    (config.json, model.safetensors, tokenizer files) that `--model OUTDIR` loads."""
    from .model_source import DTYPES, create_checkpoint

    if outdir.exists() and (not outdir.is_dir() or (any(outdir.iterdir()) and not force)):
        raise UserError(f"{outdir} exists and is not an empty directory; choose another path or pass --force")
    if dtype and dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if max_shard_size is not None:
        from transformers.utils.hub import convert_file_size_to_int

        try:
            convert_file_size_to_int(max_shard_size)
        except (ValueError, TypeError):
            raise UserError(f"--max-shard-size must be a size such as 5GB or 500MB, got {max_shard_size!r}") from None
    writable_folder(outdir, "OUTDIR")
    quiet_libraries()
    options = {} if tokens_per_frame is None else {"tokens_per_frame": tokens_per_frame}
    with stderr.status(f"building {preset}"):
        create_checkpoint(preset, outdir, dtype=DTYPES[dtype] if dtype else None, random_weights=random,
                          max_shard_size=max_shard_size, **options)
    stderr.print(f"[green]saved[/] {preset} to {outdir}; use it with --model {outdir}")


@app.command()
@user_errors
def ask(
    video: Annotated[Path, typer.Argument(readable=False, help="a local video file")],
    question: Annotated[str, typer.Argument(help="the question (the first one, with --chat)")],
    model: Annotated[str, typer.Option(help="preset name, checkpoint directory (crosslmm init) or hub id")] = "crosslmm-ov-0.5b",
    frames: Annotated[int, typer.Option(help="frames to sample uniformly (segment centres)")] = 32,
    fps: Annotated[Optional[float], typer.Option(help="at most this many sampled frames per second")] = None,
    start: Annotated[Optional[float], typer.Option(help="start of the span to sample, seconds")] = None,
    end: Annotated[Optional[float], typer.Option(help="end of the span to sample, seconds")] = None,
    exact: Annotated[bool, typer.Option(help="exact frames; never the faster nearest-keyframe seeking")] = False,
    seek: Annotated[str, typer.Option(help="auto (keyframes when samples are a keyframe interval apart) | exact | keyframe")] = "auto",
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame (1, 4, 9, 16, ...)")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="nf4 | int8 | none (default: nf4 on CUDA, none on CPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu (default: cuda when present)")] = None,
    kv_cache_dtype: Annotated[str, typer.Option(help="how a video's cross-attention keys/values are kept: auto (the "
                                                     "model's dtype) | bf16 | int8 (a quarter of fp32, a scale per "
                                                     "vector)")] = "auto",
    max_new_tokens: Annotated[int, typer.Option(help="longest answer, in tokens")] = 512,
    temperature: Annotated[float, typer.Option(help="0 for greedy decoding")] = 0.0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (with --temperature > 0)")] = 1.0,
    top_k: Annotated[int, typer.Option(help="sample among the k likeliest tokens, 0 for all (with --temperature > 0)")] = 0,
    repetition_penalty: Annotated[float, typer.Option(help="> 1 discourages repeating tokens")] = 1.0,
    stop: Annotated[Optional[list[str]], typer.Option(help="end the answer at this string (repeatable; not printed)")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed for sampling")] = None,
    system: Annotated[Optional[str], typer.Option(help="system prompt")] = None,
    time_instruction: Annotated[bool, typer.Option(help="tell the model the video length and frame timestamps")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print one JSON object: answer, frames, timings, tokens")] = False,
    stream: Annotated[bool, typer.Option(help="print the answer as it is generated")] = True,
    verbose: Annotated[bool, typer.Option(help="frames used, timings, tokens/s and peak GPU memory on stderr")] = False,
    chat: Annotated[bool, typer.Option(help="keep asking follow-up questions about the same video (encoded once)")] = False,
) -> None:
    """Answer a question about a local video, streaming the answer token by token."""
    from .ask import AskSettings, prepare, read_questions, report, verbose_lines

    if exact and seek not in ("auto", "exact"):
        raise UserError(f"--exact contradicts --seek {seek}; use one of them")
    settings = AskSettings(
        model=model, frames=frames, fps=fps, start=start, end=end, seek="exact" if exact else seek,
        tokens_per_frame=tokens_per_frame, kv_cache_dtype=kv_cache_dtype,
        quantize=quantize, device=device, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        top_k=top_k, repetition_penalty=repetition_penalty, stop=tuple(stop or ()), seed=seed, system=system,
        time_instruction=time_instruction, json_output=json_output, stream=stream,
        verbose=verbose, chat=chat,
    )
    quiet_libraries()
    with stderr.status("starting") as status:
        session = prepare(video, settings, status=lambda text: status.update(text),
                          warn=lambda text: stderr.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True))

    def say(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    streaming = settings.stream and not settings.json_output
    # follow-up questions are read lazily, each after the previous answer
    questions = itertools.chain([question], read_questions("you> ") if chat else [])
    for text in questions:
        try:
            answer = session.ask(text, on_piece=say if streaming else None)
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            if not chat:
                raise
            stderr.print("[yellow]answer stopped[/]")
            continue
        if settings.json_output:
            print(json.dumps(report(session, answer, text), indent=2))
        else:
            say(("" if streaming else answer.text) + "\n")
        if verbose:
            for line in verbose_lines(session, answer):
                stderr.print(line, highlight=False)


@app.command()
@user_errors
def serve(
    media_root: Annotated[Path, typer.Option(readable=False, help="the only folder videos and images are read from")],
    model: Annotated[str, typer.Option(help="preset name, checkpoint directory or hub id")] = "crosslmm-ov-0.5b",
    host: Annotated[str, typer.Option(help="address to listen on (loopback by default; set --api-key before exposing it)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="CROSSLMM_API_KEY", help="require 'Authorization: Bearer KEY'")] = None,
    served_model_name: Annotated[Optional[str], typer.Option(help="the model name clients send (default: --model's last part)")] = None,
    allow_remote_media: Annotated[bool, typer.Option(help="also fetch http(s) video and image URLs")] = False,
    frames: Annotated[int, typer.Option(help="frames sampled per video unless a request says otherwise")] = 32,
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="nf4 | int8 | none (default: nf4 on CUDA, none on CPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu (default: cuda when present)")] = None,
    max_tokens: Annotated[int, typer.Option(help="answer length when a request gives no max_tokens")] = 512,
    max_queue: Annotated[int, typer.Option(help="requests queued or running before 429 Retry-After")] = 32,
    max_batch_size: Annotated[int, typer.Option(help="answers generated together (continuous batching)")] = 16,
    video_cache_mb: Annotated[float, typer.Option(help="memory for encoded videos (least recently used evicted)")] = 4096,
    prefix_cache_mb: Annotated[float, typer.Option(help="memory for reused prompt keys/values")] = 2048,
    max_request_mb: Annotated[float, typer.Option(help="largest request body")] = 32,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="longest prompt, video included (default: the model's context)")] = None,
    max_logprobs: Annotated[int, typer.Option(help="the most top_logprobs a request may ask for")] = 20,
    kv_cache_dtype: Annotated[str, typer.Option(help="how a video's cross-attention keys/values are kept: auto (the "
                                                     "model's dtype) | bf16 | int8 (a quarter of fp32, a scale per "
                                                     "vector)")] = "auto",
) -> None:
    """Serve the model over HTTP with OpenAI's chat-completions API; each video is decoded and
    encoded once, and follow-up questions reuse the conversation's keys/values."""
    from .ask import AskSettings, prepare_model
    from .serve.engine import Engine
    from .serve.server import run
    from .serve.settings import ServeSettings

    settings = ServeSettings(model=model, media_root=media_root, host=host, port=port, api_key=api_key,
                             served_model_name=served_model_name, allow_remote_media=allow_remote_media, frames=frames,
                             tokens_per_frame=tokens_per_frame, quantize=quantize, device=device, max_tokens=max_tokens,
                             max_queue=max_queue, max_batch_size=max_batch_size, video_cache_mb=video_cache_mb, prefix_cache_mb=prefix_cache_mb,
                             max_request_mb=max_request_mb, max_prompt_tokens=max_prompt_tokens,
                             max_logprobs=max_logprobs, kv_cache_dtype=kv_cache_dtype)
    settings.check_port_free()
    if not settings.loopback and settings.api_key is None:
        stderr.print(f"[yellow]warning:[/] listening on {host} without --api-key: anyone who can reach this "
                     "machine can use the model", highlight=False)
    quiet_libraries()
    with stderr.status("starting") as status:
        loading = AskSettings(model=model, tokens_per_frame=tokens_per_frame, quantize=quantize, device=device)
        loaded, processor, _ = prepare_model(loading, status=lambda text: status.update(text))
    engine = Engine(loaded, processor, settings)
    stderr.print(f"[green]serving[/] {settings.served_model_name} on http://{host}:{port}/v1 "
                 f"(media root {settings.media_root})", highlight=False)
    run(engine)


@app.command("run-batch")
@user_errors
def run_batch(
    input_file: Annotated[Path, typer.Option("--input", "-i", readable=False, help="requests in OpenAI's Batch format, "
                                                                                  "one JSON line each")],
    output_file: Annotated[Path, typer.Option("--output", "-o", readable=False, help="where the output lines go "
                                                                                    "(a rerun continues it)")],
    media_root: Annotated[Path, typer.Option(readable=False, help="the only folder videos and images are read from")],
    model: Annotated[str, typer.Option(help="preset name, checkpoint directory or hub id")] = "crosslmm-ov-0.5b",
    served_model_name: Annotated[Optional[str], typer.Option(help="the model name the bodies give (default: --model's "
                                                                  "last part)")] = None,
    frames: Annotated[int, typer.Option(help="frames sampled per video unless a request says otherwise")] = 32,
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="nf4 | int8 | none (default: nf4 on CUDA, none on CPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu (default: cuda when present)")] = None,
    max_tokens: Annotated[int, typer.Option(help="answer length when a request gives no max_tokens")] = 512,
    max_batch_size: Annotated[int, typer.Option(help="answers generated together (continuous batching)")] = 16,
    max_queue: Annotated[int, typer.Option(help="requests decoded and waiting or running at once")] = 32,
    video_cache_mb: Annotated[float, typer.Option(help="memory for encoded videos (least recently used evicted)")] = 4096,
    prefix_cache_mb: Annotated[float, typer.Option(help="memory for reused prompt keys/values")] = 2048,
    max_prompt_tokens: Annotated[Optional[int], typer.Option(help="longest prompt, video included (default: the "
                                                                  "model's context)")] = None,
    max_logprobs: Annotated[int, typer.Option(help="the most top_logprobs a request may ask for")] = 20,
    kv_cache_dtype: Annotated[str, typer.Option(help="how a video's cross-attention keys/values are kept: auto (the "
                                                     "model's dtype) | bf16 | int8 (a quarter of fp32, a scale per "
                                                     "vector)")] = "auto",
) -> None:
    """Answer a file of chat-completion requests (OpenAI's Batch format, as vLLM's run-batch reads it)
    with the engine `serve` runs: requests on one video answered together, output keyed by custom_id,
    resumable by running the same command again."""
    from .ask import AskSettings, prepare_model
    from .process_group import barrier, distributed
    from .run_batch import merge_parts, read_batch, run_batch as answer_all
    from .serve.engine import Engine
    from .serve.settings import ServeSettings

    if output_file.resolve() == input_file.resolve():
        raise UserError(f"-o {output_file} is the input file; the input is never overwritten: choose another -o")
    lines = read_batch(input_file)
    writable_file(output_file, "-o")
    settings = ServeSettings(model=model, media_root=media_root, served_model_name=served_model_name, frames=frames,
                             tokens_per_frame=tokens_per_frame, quantize=quantize, device=device, max_tokens=max_tokens,
                             max_queue=max_queue, max_batch_size=max_batch_size, video_cache_mb=video_cache_mb,
                             prefix_cache_mb=prefix_cache_mb, max_prompt_tokens=max_prompt_tokens,
                             max_logprobs=max_logprobs, kv_cache_dtype=kv_cache_dtype)
    quiet_libraries()
    rank, world = distributed()  # one process, or one of those torchrun / accelerate launch started
    with stderr.status("loading the model"):
        loaded, processor, _ = prepare_model(AskSettings(model=model, tokens_per_frame=tokens_per_frame,
                                                         quantize=quantize, device=device))
    engine = Engine(loaded, processor, settings)
    try:
        with Progress(SpinnerColumn(), TextColumn("requests"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=stderr,
                      disable=rank != 0) as bar:
            def progress(total: int, done: int):
                handle, began, written = bar.add_task("requests", total=total, completed=done, rate=""), time.perf_counter(), [0]

                def tick() -> None:
                    written[0] += 1
                    bar.update(handle, advance=1, rate=f"{written[0] / (time.perf_counter() - began):.2f} requests/s")

                return tick

            counts = answer_all(engine, lines, output_file, progress, rank, world)
    finally:
        engine.close()
    barrier(world)
    if rank != 0:
        return
    merge_parts(output_file)  # the processes' parts, of this run or of one killed before
    stderr.print(f"[green]done[/] {counts['answered']} answered, {counts['refused']} refused, {counts['invalid']} "
                 f"invalid lines{' (this process)' if world > 1 else ''}, {counts['skipped']} already in {output_file}",
                 highlight=False)


@app.command("eval")
@user_errors
def evaluate(
    benchmark: Annotated[str, typer.Argument(help="videomme | videomme_w_subtitle | mvbench | mlvu | longvideobench | "
                                                  "perceptiontest | nextqa | egoschema | jsonl")],
    data_dir: Annotated[Path, typer.Option(readable=False, help="the benchmark's official local files")],
    output: Annotated[Path, typer.Option(readable=False, help="folder for results.json and samples_<task>.jsonl")] = Path("runs"),
    model: Annotated[str, typer.Option(help="preset name, checkpoint directory or hub id")] = "crosslmm-ov-0.5b",
    frames: Annotated[int, typer.Option(help="frames sampled per video")] = 32,
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="nf4 | int8 | none (default: nf4 on CUDA, none on CPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu")] = None,
    limit: Annotated[Optional[int], typer.Option(help="only the first N questions (smoke runs)")] = None,
    parser: Annotated[str, typer.Option(help="answer extraction: lmms-eval (current) | official (Video-MME's own)")] = "lmms-eval",
    responses: Annotated[Optional[Path], typer.Option(readable=False, help="score this samples file (ours or lmms-eval's), or a folder of them, instead of running a model")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="override the benchmark's answer length")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="questions answered together (default: 8 on CPU, 16 on CUDA)")] = None,
    reasoning_tags: Annotated[Optional[str], typer.Option(
        help='reasoning blocks cut before scoring, as lmms-eval\'s --reasoning_tags: a JSON list of [start, end] '
             'pairs, or none (default: [["<think>","</think>"],["<analysis>","</analysis>"]])')] = None,
    subtitles_on_found_video: Annotated[bool, typer.Option(
        help="videomme_w_subtitle: time the subtitles on the video found (.mkv too); lmms-eval looks only for "
             "data/<id>.mp4 and shows other containers' questions an empty subtitle block")] = False,
) -> None:
    """Score a model on a video benchmark from its official local files, as lmms-eval scores it.
    Rerunning the same command resumes; under torchrun / accelerate launch the work is sharded."""
    from .evaluation.postprocess import parse_reasoning_tags
    from .evaluation.report import results_tables
    from .evaluation.runner import EvalSettings, evaluate as run

    settings = EvalSettings(task=benchmark, data_dir=data_dir, output=output, model=model, frames=frames,
                            tokens_per_frame=tokens_per_frame, quantize=quantize, device=device, limit=limit,
                            parser=parser, responses=responses, max_new_tokens=max_new_tokens,
                            reasoning_tags=parse_reasoning_tags(reasoning_tags),
                            subtitles_on_found_video=subtitles_on_found_video, batch_size=batch_size)
    writable_folder(output, "--output")
    quiet_libraries()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=stderr, transient=True) as bar:
        def progress(total: int):
            handle = bar.add_task(f"{benchmark}", total=total)
            return lambda: bar.advance(handle)

        report = run(settings, progress=progress, notice=lambda line: bar.console.print(line, highlight=False))
    if report is None:  # a rank other than 0
        return
    console = Console()
    for table in results_tables(report):
        console.print(table)
    stderr.print(f"wrote {settings.output / 'results.json'}")


@app.command()
@user_errors
def finetune(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(readable=False, help="videos anywhere under it and annotations.jsonl (or "
                                                               ".json), or a recipe .yaml listing the sources")],
    output: Annotated[Path, typer.Option(readable=False, help="checkpoint directory to write (ask/eval load it with --model)")],
    model: Annotated[str, typer.Option(help="base: preset name, checkpoint directory or hub id")] = "crosslmm-ov-0.5b",
    stage: Annotated[int, typer.Option(help="1: projector + V2V, LLM and vision frozen, T2V off; 2: end to end, T2V on")] = 2,
    full: Annotated[bool, typer.Option(help="stage 2: train all LLM weights instead of LoRA adapters")] = False,
    train_vision: Annotated[bool, typer.Option(help="stage 2: train the vision tower too, at --vision-lr")] = False,
    v2v: Annotated[bool, typer.Option(help="use and train the V2V cross-attention")] = True,
    t2v: Annotated[bool, typer.Option(help="stage 2: use and train the T2V cross-attention")] = True,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (default 1e-3 stage 1, 1e-5 stage 2)")] = None,
    vision_lr: Annotated[float, typer.Option(help="vision tower learning rate with --train-vision")] = 2e-6,
    lora: Annotated[bool, typer.Option(help="stage 2 without --full: LoRA adapters on the LLM (--no-lora: the LLM "
                                            "stays frozen)")] = True,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (stage 2 without --full)")] = 16,
    batch_size: Annotated[int, typer.Option(help="samples per device per step")] = 1,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = 1,
    epochs: Annotated[int, typer.Option(help="passes over the data")] = 1,
    max_steps: Annotated[Optional[int], typer.Option(help="optimizer steps (overrides --epochs)")] = None,
    frames: Annotated[int, typer.Option(help="frames sampled per video")] = 8,
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="pooled tokens per frame")] = None,
    seed: Annotated[int, typer.Option(help="seeds initialisation order, data order and dropout")] = 0,
    save_every: Annotated[int, typer.Option(help="optimizer steps between checkpoints")] = 100,
    strict: Annotated[bool, typer.Option(help="a damaged file, bad row or unusable sample stops the run instead of being skipped")] = False,
    merge: Annotated[bool, typer.Option(help="write full weights even where trained-only + base pointer is smaller")] = False,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint in --output")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in backward to save memory")] = True,
    quantize: Annotated[str, typer.Option(help="nf4: QLoRA (4-bit LLM under LoRA adapters) | none")] = "none",
    gate_init: Annotated[Optional[float], typer.Option(help="open the trained gates to tanh(x) first (default: as they are)")] = None,
    memory_position: Annotated[bool, typer.Option(help="add a learned patch and frame-index embedding to the "
                                                       "cross-attention memory (zero at first) and train it")] = False,
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="processes decoding videos ahead of the step (default: one "
                                                        "per core of the training process, at most 8; 0: none)")] = None,
    global_batch: Annotated[Optional[int], typer.Option(help="samples per optimizer step over all processes "
                                                             "(default: batch size x accumulation x processes)")] = None,
) -> None:
    """Train CrossLMM on a folder of videos and annotations, or on the sources of a recipe (the
    paper's Stage I or II); runs unchanged under torchrun / accelerate launch."""
    from .finetune.train import FinetuneSettings, finetune as train

    options = dict(
        output=output, model=model, stage=stage, full=full, train_vision=train_vision, v2v=v2v, t2v=t2v,
        lr=lr, vision_lr=vision_lr, lora=lora, lora_rank=lora_rank, batch_size=batch_size,
        grad_accum=grad_accum, epochs=epochs, max_steps=max_steps, frames=frames, tokens_per_frame=tokens_per_frame,
        seed=seed, save_every=save_every, strict=strict, merge=merge, resume=resume,
        gradient_checkpointing=gradient_checkpointing, quantize=quantize, gate_init=gate_init,
        memory_position=memory_position, device=device,
        workers=workers, global_batch=global_batch,
    )
    sources = None
    if folder.suffix in (".yaml", ".yml") and not folder.is_dir():
        from .training_data.recipe import read_recipe

        recipe = read_recipe(folder, FinetuneSettings)
        # by name: typer 0.29 carries its own copy of click's ParameterSource
        given = {name for name in options if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        options.update({name: value for name, value in recipe.options.items() if name not in given})
        sources = recipe.sources
    options.setdefault("lora_alpha", 2 * options["lora_rank"])
    settings = FinetuneSettings(folder=folder, sources=sources, **options)
    writable_folder(output, "--output")
    quiet_libraries()
    with training_bars() as (_, progress):
        summary = train(settings, report=report_line, progress=progress)
    if summary is not None:  # the main process
        print_trained(summary, output)


def report_line(line: str) -> None:
    stderr.print(f"[yellow]{line}[/]", highlight=False)


def print_trained(summary: dict, output: Path) -> None:
    stderr.print(f"[green]trained[/] {summary['steps']} steps on {summary['samples']} samples "
                 f"({summary['skipped']} skipped); {summary['trained_parameters']:,} trained parameters; "
                 f"saved {summary['saved']} to {output}", highlight=False)


@contextlib.contextmanager
def training_bars():
    """(teacher_progress, progress): bars for a pass over prompts (distillation's teacher) and for
    optimizer steps, each made when its work begins."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=stderr) as bar:
        def teacher_progress(total: int, done: int):
            handle = bar.add_task("teacher", total=total, completed=done, stats="prompts answered")
            return lambda count: bar.update(handle, advance=count)

        def progress(total: int, done: int):
            handle = bar.add_task("training", total=total, completed=done, stats="")
            return lambda row: bar.update(handle, advance=1, stats=(
                f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['samples_per_s']:.1f} samples/s"))

        yield teacher_progress, progress


@app.command()
@user_errors
def distill(
    data: Annotated[Path, typer.Argument(readable=False, help="a folder of videos and/or images (prompts.jsonl beside "
                                                             "them gives a file its own prompts)")],
    output: Annotated[Path, typer.Option(readable=False, help="folder for the teacher's targets, the checkpoints and "
                                                              "the distilled model")],
    model: Annotated[str, typer.Option(help="the base, teacher and student at once: preset name, checkpoint "
                                            "directory or hub id")] = "crosslmm-ov-0.5b",
    tokens_per_frame: Annotated[Optional[int], typer.Option(help="the student's pooled tokens per frame (default: the "
                                                                 "base's, 9 for crosslmm-ov)")] = None,
    teacher_tokens_per_frame: Annotated[Optional[int], typer.Option(help="the teacher's (default: what the base was "
                                                                         "trained to see, 196 for LLaVA-OneVision)")] = None,
    prompts: Annotated[Optional[Path], typer.Option(readable=False, help="instructions replacing the built-in set, one per "
                                                                         "line (for files prompts.jsonl does not name)")] = None,
    teacher_max_new_tokens: Annotated[int, typer.Option(help="the teacher's longest answer, in tokens")] = 256,
    teacher_temperature: Annotated[float, typer.Option(help="0: greedy answers; else sampled, seeded per prompt")] = 0.0,
    teacher_batch_size: Annotated[int, typer.Option(help="prompts the teacher answers together")] = 8,
    top_k: Annotated[int, typer.Option(help="teacher log-probabilities kept per answer token (the rest: one tail)")] = 64,
    temperature: Annotated[float, typer.Option(help="τ of the KL between teacher and student")] = 2.0,
    alpha: Annotated[float, typer.Option(help="weight of the KL; 1 - alpha goes to cross-entropy on the teacher's "
                                              "answer")] = 0.5,
    lora: Annotated[bool, typer.Option(help="also train LoRA adapters on the LLM (the teacher is the base: adapters off)")] = False,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank (with --lora)")] = 16,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-3,
    gate_init: Annotated[Optional[float], typer.Option(help="open the gates to tanh(x) first (0 closes them)")] = 0.5,
    memory_position: Annotated[bool, typer.Option(help="add and train the patch and frame-index embedding of the "
                                                       "cross-attention memory")] = True,
    batch_size: Annotated[int, typer.Option(help="samples per device per step")] = 1,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = 1,
    global_batch: Annotated[Optional[int], typer.Option(help="samples per optimizer step over all processes")] = None,
    epochs: Annotated[int, typer.Option(help="passes over the teacher's answers")] = 1,
    max_steps: Annotated[Optional[int], typer.Option(help="optimizer steps (overrides --epochs)")] = None,
    frames: Annotated[int, typer.Option(help="frames sampled per video (teacher and student)")] = 8,
    seed: Annotated[int, typer.Option(help="seeds the data order, initialisation and sampled answers")] = 0,
    save_every: Annotated[int, typer.Option(help="optimizer steps between checkpoints")] = 100,
    strict: Annotated[bool, typer.Option(help="a file that does not decode stops the run instead of being left out")] = False,
    merge: Annotated[bool, typer.Option(help="write full weights even where trained-only + base pointer is smaller")] = False,
    resume: Annotated[bool, typer.Option(help="continue the teacher pass and the training in --output")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="recompute activations in backward to save memory")] = True,
    quantize: Annotated[str, typer.Option(help="nf4: a 4-bit base under LoRA adapters (needs --lora) | none")] = "none",
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu (default: cuda when present)")] = None,
    workers: Annotated[Optional[int], typer.Option(help="processes decoding videos ahead of the step")] = None,
) -> None:
    """Make a CrossLMM from the full-token model inside its own checkpoint, without labels: the
    teacher answers prompts about your videos once, the student learns its answers at a fraction of
    the tokens; runs unchanged under torchrun / accelerate launch."""
    from .distill.run import DistillSettings, distill as run_distill

    settings = DistillSettings(
        folder=data, output=output, model=model, tokens_per_frame=tokens_per_frame,
        teacher_tokens_per_frame=teacher_tokens_per_frame, prompts=prompts, teacher_max_new_tokens=teacher_max_new_tokens,
        teacher_temperature=teacher_temperature, teacher_batch_size=teacher_batch_size, top_k=top_k,
        temperature=temperature, alpha=alpha, lora=lora, lora_rank=lora_rank, lora_alpha=2 * lora_rank, lr=lr,
        gate_init=gate_init, memory_position=memory_position, batch_size=batch_size, grad_accum=grad_accum,
        global_batch=global_batch, epochs=epochs, max_steps=max_steps, frames=frames, seed=seed, save_every=save_every,
        strict=strict, merge=merge, resume=resume, gradient_checkpointing=gradient_checkpointing, quantize=quantize,
        device=device, workers=workers)
    writable_folder(output, "--output")
    quiet_libraries()
    with training_bars() as (teacher_progress, progress):
        summary = run_distill(settings, report=report_line, teacher_progress=teacher_progress, progress=progress)
    if summary is not None:
        stderr.print(f"[green]teacher[/] answered {summary['answered']} of {summary['prompts']} prompts "
                     f"({summary['left_out']} left out)", highlight=False)
        print_trained(summary, output)


@app.command()
@user_errors
def bench(
    preset: Annotated[Optional[str], typer.Option(help="preset architecture, random weights (default: crosslmm-2b on CUDA, small on CPU)")] = None,
    frames: Annotated[str, typer.Option(help="comma-separated frame counts (default: 32,64,128,256 on CUDA, 4,8,16,32 on CPU)")] = "",
    quantize: Annotated[str, typer.Option(help="nf4 | none")] = "none",
    dtype: Annotated[Optional[str], typer.Option(help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:N or cpu (default: cuda when present)")] = None,
    text_tokens: Annotated[int, typer.Option(help="text tokens in the prompt around the video")] = 64,
    runs: Annotated[int, typer.Option(help="timed prefills per point; the median is reported")] = 3,
    warmup: Annotated[int, typer.Option(help="untimed prefills before timing")] = 1,
    decode_tokens: Annotated[int, typer.Option(help="tokens decoded to measure decode speed")] = 16,
    json_path: Annotated[Optional[Path], typer.Option("--json", readable=False, help="write every figure to this JSON file")] = None,
    plot: Annotated[Optional[Path], typer.Option(readable=False, help="write a PNG like the paper's Figure 4")] = None,
    flops_only: Annotated[bool, typer.Option(help="only count FLOPs (meta device: any preset, any machine, seconds)")] = False,
) -> None:
    """Prefill latency, decode speed, peak memory and FLOPs of CrossLMM against the full-token
    baseline (the same backbones fed the LLaVA-OneVision way), on random weights."""
    from .bench import BenchSettings, plot as draw, run_bench
    from .bench_table import bench_table

    try:
        counts = [int(f) for f in frames.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--frames takes comma-separated integers, got {frames!r}") from None
    settings = BenchSettings(preset=preset, frames=counts, quantize=quantize, dtype=dtype, device=device,
                             text_tokens=text_tokens, runs=runs, warmup=warmup, decode_tokens=decode_tokens,
                             flops_only=flops_only)
    for flag, path in (("--json", json_path), ("--plot", plot)):
        if path is not None:
            writable_file(path, flag)
    quiet_libraries()
    with stderr.status("starting") as status:
        report = run_bench(settings, status=lambda text: status.update(text))
    Console().print(bench_table(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        stderr.print(f"wrote {json_path}")
    if plot is not None:
        draw(report, plot)
        stderr.print(f"wrote {plot}")


def main() -> None:
    app(prog_name="crosslmm")


if __name__ == "__main__":
    sys.exit(main())

"""`crosslmm finetune RECIPE.yaml`: images, multi-image samples and videos from tar shards,
parquet and annotation files, mixed by weight, resumable after kill -9 on 1 process and from 2
processes to 1, bad members skipped and reported. The references are an uninterrupted run, the
generator's own sample keys, and binomial sampling error."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from crosslmm.loading import load_model
from crosslmm_cli.app import app
from crosslmm_cli.synthetic_shards import (
    add_member, jpeg, write_annotated_videos, write_image_shards, write_multi_image_shard, write_parquet,
    write_video_shards,
)
from tests.helpers import free_port

runner = CliRunner()

SOURCES = [
    {"path": "img/images-{00000..00002}.tar", "weight": 2},
    {"path": "vid/*.tar", "weight": 1},
    {"path": "multi/m-00000.tar", "weight": 0.5},
    {"path": "pq/a.parquet", "weight": 1},
    {"path": "llava/annotations.jsonl", "media": "llava/videos", "weight": 1},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_image_shards(root / "img", 3, 8)
    write_video_shards(root / "vid", 2, 6)
    write_multi_image_shard(root / "multi" / "m-00000.tar", 4)
    write_parquet(root / "pq" / "a.parquet", 16, row_group=5)
    write_annotated_videos(root / "llava", 8)
    return root


def recipe(folder: Path, name: str = "recipe.yaml", sources=SOURCES, **options) -> Path:
    import yaml

    settings = {"stage": 2, "full": True, "frames": 2, "lr": "1e-3", "max_steps": 6, "batch_size": 1,
                "global_batch": 2, "save_every": 2, "workers": 0, **options}
    settings = {name: value for name, value in settings.items() if value is not None}
    path = folder / name
    path.write_text(yaml.safe_dump({**settings, "sources": sources}))
    return path


def samples(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]


def weights(output: Path) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in load_model(output).state_dict().items()}


def module_run(module: str, data: Path, output: Path, *flags, processes: int = 1, kill_at: int | None = None):
    """``crosslmm finetune`` in a fresh process (two under torchrun), optionally SIGKILLed after step ``kill_at``."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port())] \
        if processes > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_at is not None:
        env["CROSSLMM_TEST_KILL_AT_STEP"] = str(kill_at)
    command = [sys.executable, *launcher, "-m", module, "finetune", str(data), "--output", str(output), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, env=env)


def generator_key(name: str) -> tuple[str, str]:
    """(source, "<shard>/<key>") with the key the generator wrote: a tar member's key, or the id of a
    parquet or annotation row (named by its place, with its id)."""
    source, rest = name.split(":", 1)
    shard, row = rest.split("/", 1)
    written = re.search(r"\(id (.*)\)$", row)
    return source, f"{shard}/{written.group(1) if written else row}"


def test_a_mixed_recipe_trains_on_every_source_and_records_what_it_read(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["finetune", str(recipe(corpus, max_steps=12)), "--model", str(tiny_checkpoint),
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = samples(out)
    assert [row["step"] for row in rows] == list(range(1, 13)) and all(len(row["samples"]) == 2 for row in rows)
    names = [name for row in rows for name in row["samples"]]
    assert {name.split(":")[0] for name in names} == {"0", "1", "2", "3", "4"}
    # every name is a sample the generator wrote, in the source it was written to
    written = {
        "0": {f"images-{s:05d}.tar/{s:05d}{r:04d}" for s in range(3) for r in range(8)},
        "1": {f"videos-{s:05d}.tar/{s:05d}{r:04d}" for s in range(2) for r in range(6)},
        "2": {f"m-00000.tar/multi{r:05d}" for r in range(4)},
        "3": {f"a.parquet/p{r:05d}" for r in range(16)},
        "4": {f"annotations.jsonl/j{r:05d}" for r in range(8)},
    }
    assert all(generator_key(name)[1] in written[generator_key(name)[0]] for name in names)
    assert "trained 12 steps on 24 samples (0 skipped)" in " ".join(result.output.split())
    load_model(out)


def test_a_flag_on_the_command_line_wins_over_the_recipe(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["finetune", str(recipe(corpus)), "--model", str(tiny_checkpoint), "--output", str(out),
                                 "--max-steps", "2"])
    assert result.exit_code == 0, result.output
    assert [row["step"] for row in samples(out)] == [1, 2]


def test_kill_9_then_resume_consumes_the_same_samples_and_ends_with_the_same_weights(corpus, tiny_checkpoint, tmp_path):
    data = recipe(corpus, max_steps=6, save_every=2)
    flags = ["--model", str(tiny_checkpoint)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert module_run("crosslmm_cli.app", data, whole, *flags).returncode == 0
    cut = module_run("tests.killed_at_step", data, killed, *flags, kill_at=3)  # after step 3, saved at 2
    assert cut.returncode == -9 and len(samples(killed)) == 3
    resumed = module_run("crosslmm_cli.app", data, killed, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step-000002" in resumed.stderr
    assert samples(killed) == samples(whole)
    reference, after = weights(whole), weights(killed)
    assert all(torch.equal(reference[name], after[name]) for name in reference)


def test_two_processes_killed_resume_on_one_as_if_never_stopped(corpus, tiny_checkpoint, tmp_path):
    """global_batch 2: two processes take one sample each per step, one process accumulates two."""
    data = recipe(corpus, max_steps=6, save_every=2)
    flags = ["--model", str(tiny_checkpoint)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert module_run("crosslmm_cli.app", data, whole, *flags).returncode == 0
    cut = module_run("tests.killed_at_step", data, killed, *flags, processes=2, kill_at=3)
    assert cut.returncode != 0 and len(samples(killed)) == 3
    assert samples(killed) == samples(whole)[:3]  # two processes read what one does, step for step
    resumed = module_run("crosslmm_cli.app", data, killed, *flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert samples(killed) == samples(whole)
    reference, after = weights(whole), weights(killed)
    # the same samples in the same steps; the sums over two processes round differently from one's
    assert all(torch.allclose(reference[name], after[name], rtol=1e-4, atol=1e-6) for name in reference)


RESUMED_AT = 1  # the checkpoint a killed run leaves: 1 step x the old accumulation is no multiple of most new ones


@pytest.fixture(scope="module")
def elastic_runs(corpus, tiny_checkpoint, tmp_path_factory):
    """A recipe with a global batch of 6 (1 sample per process per micro-batch: 6, 3 or 2 micro-batches
    a step on 1, 2 or 3 processes) run whole on 1 process, and on 1, 2 and 3 processes SIGKILLed
    after step 2 with the step-1 checkpoint saved."""
    root = tmp_path_factory.mktemp("elastic")
    data = recipe(corpus, "elastic.yaml", max_steps=3, save_every=1, global_batch=None)
    flags = ["--model", str(tiny_checkpoint), "--global-batch", "6"]
    whole = root / "whole"
    done = module_run("crosslmm_cli.app", data, whole, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = {}
    for processes in (1, 2, 3):
        killed[processes] = root / f"killed-{processes}"
        cut = module_run("tests.killed_at_step", data, killed[processes], *flags, processes=processes, kill_at=2)
        assert cut.returncode != 0 and len(samples(killed[processes])) == 2, cut.stderr[-3000:]
    return data, whole, killed


@pytest.mark.parametrize(("before", "after"), [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)])
def test_a_run_killed_on_n_processes_resumes_on_m_as_if_never_stopped(elastic_runs, tiny_checkpoint, tmp_path, before,
                                                                       after):
    """Resumed without --global-batch (the saved run's is the default), on another number of
    processes: each step trains the uninterrupted run's samples, and the weights end within rounding
    of its (averages over processes round differently). Before accelerate's micro-batch count was set
    from the new accumulation, 3 -> 2 trained 2 samples in step 2 instead of 6, and 2 -> 1 was
    refused without --global-batch."""
    data, whole, killed = elastic_runs
    out = tmp_path / "resumed"
    shutil.copytree(killed[before], out)
    resumed = module_run("crosslmm_cli.app", data, out, "--model", str(tiny_checkpoint), "--resume", processes=after)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from step-{RESUMED_AT:06d}" in resumed.stderr
    assert samples(out) == samples(whole)
    reference, ended = weights(whole), weights(out)
    # uninterrupted runs on 1 and 3 processes differ by up to 6.2e-6 (Adam turns the rounding of a
    # gradient averaged over 3 into up to lr-sized steps where the gradient is near 0); a step trained
    # on other samples moves weights by about lr = 1e-3
    assert all(torch.allclose(reference[name], ended[name], rtol=1e-4, atol=1e-5) for name in reference)


def test_a_corrupt_member_inside_a_shard_is_skipped_and_reported(corpus, tiny_checkpoint, tmp_path):
    shard = tmp_path / "bad" / "bad-00000.tar"
    write_image_shards(tmp_path / "bad", 1, 6, prefix="bad")
    with tarfile.open(shard) as tar:  # rewrite the shard with sample 2's image replaced by garbage
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for name, data in members:
            add_member(tar, name, b"\xff\xd8 not a jpeg" if name == "000000002.jpg" else data)
    data = recipe(tmp_path, sources=[{"path": "bad/*.tar"}], max_steps=6, global_batch=1)
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "skipped source 0, bad-00000.tar/000000002:" in text
    assert "source 0 (bad/*.tar): 1 unusable samples skipped" in text
    read = [name for row in samples(tmp_path / "o") for name in row["samples"]]
    assert len(read) == 6 and "0:bad-00000.tar/000000002" not in read


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    """What real downloads leave: shard 1 of a range cut in its last member, shard 2 an HTML error
    page saved under its name, shard 3 empty, shard 4 never downloaded; one of two JSON lists cut."""
    root = tmp_path_factory.mktemp("damaged")
    shards = write_image_shards(root / "img", 4, 8)
    whole = shards[1].read_bytes()
    cut_at = whole.rindex(b"image 000010007")  # the last member: the last sample's caption
    shards[1].write_bytes(whole[:cut_at + 5])
    shards[2].write_text("<!DOCTYPE html><html><body>503 Service Unavailable</body></html>\n")
    shards[3].write_bytes(b"")
    (root / "ann").mkdir()
    (root / "ann" / "pic.jpg").write_bytes(jpeg(7))
    rows = [{"id": f"r{n}", "image": "pic.jpg", "caption": f"picture {n}"} for n in range(6)]
    (root / "ann" / "a.json").write_text(json.dumps(rows))
    (root / "ann" / "b.json").write_text(json.dumps(rows)[:-40])
    return root


DAMAGE_SOURCES = [{"path": "img/images-{00000..00004}.tar"}, {"path": "ann/*.json"}]
DAMAGE_LINES = [
    "source 0 (img/images-{00000..00004}.tar): images-00004.tar does not exist (named by 'img/images-{00000..00004}.tar'): all its samples are lost",
    "source 0 (img/images-{00000..00004}.tar): images-00001.tar: is cut short (a partial download): 7 whole samples kept, the sample it is cut in and any after it are lost",
    "source 0 (img/images-{00000..00004}.tar): images-00002.tar: is an HTML page, not data (an error page saved by a download?): all its samples are lost",
    "source 0 (img/images-{00000..00004}.tar): images-00003.tar: is empty (0 bytes): all its samples are lost",
    "source 1 (ann/*.json): b.json: is not a whole JSON list (cut short?): all its rows are lost",
]


def test_files_a_download_damaged_are_reported_with_what_they_cost(damaged, tiny_checkpoint, tmp_path):
    """Each was lost without a word before ("0 skipped"); now each is one line before step 1 and
    counted at the end."""
    data = recipe(damaged, sources=DAMAGE_SOURCES, max_steps=4)
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for line in DAMAGE_LINES:
        assert line in text, line
    assert "source 0 (img/images-{00000..00004}.tar): 4 missing or damaged files" in text
    assert "source 1 (ann/*.json): 1 missing or damaged files" in text
    read = [name for row in samples(tmp_path / "o") for name in row["samples"]]
    assert not any(name.startswith(("0:images-00001.tar/000010007", "0:images-0000" + "2", "1:b.json")) for name in read)


def test_under_strict_a_damaged_file_stops_the_run_before_step_1(damaged, tiny_checkpoint, tmp_path):
    data = recipe(damaged, name="strict.yaml", sources=DAMAGE_SOURCES, max_steps=4)
    out = tmp_path / "o"
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output", str(out), "--strict"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert all(line in text for line in DAMAGE_LINES)  # each listed, then the run stops
    assert f"error: 5 damaged files or bad rows (first: {DAMAGE_LINES[0]}); fix or remove them, or drop --strict" in text
    assert not (out / "metrics.jsonl").exists()


def test_under_strict_an_unusable_sample_stops_the_run(corpus, tiny_checkpoint, tmp_path):
    shard = tmp_path / "bad" / "bad-00000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for row in range(4):
            add_member(tar, f"{row:09d}.jpg", b"not a jpeg" if row == 1 else jpeg(row))
            add_member(tar, f"{row:09d}.txt", b"a caption")
    data = recipe(tmp_path, sources=[{"path": "bad/*.tar"}], max_steps=4)
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output",
                                 str(tmp_path / "o"), "--strict"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "source 0, bad-00000.tar/000000001:" in result.output and "drop --strict" in result.output


def test_text_only_rows_of_a_source_train_and_are_counted(corpus, tiny_checkpoint, tmp_path):
    rows = [{"id": f"t{n}", "conversations": [{"from": "human", "value": f"Say {n}."}, {"from": "gpt", "value": str(n)}]}
            for n in range(6)]
    (tmp_path / "text.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = recipe(tmp_path, sources=[{"path": str(corpus / "pq" / "a.parquet")}, {"path": "text.jsonl"}], max_steps=6)
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    read = {name for row in samples(tmp_path / "o") for name in row["samples"] if name.startswith("1:")}
    assert read and f"source 1 (text.jsonl): {len(read)} text-only samples trained (no image or video)" in \
        " ".join(result.output.split())


@pytest.mark.parametrize("case,message", [
    ("empty", "matches no file"),
    ("all-bad", "none of its samples could be read (1 tried; first: j.tar/a: a.jpg:"),
    ("unknown-option", "unknown option 'learning_rate'"),
    ("bad-weight", "weight must be a positive number"),
    ("no-max-steps", "a recipe run needs max_steps"),
    ("not-yaml", "is not valid YAML"),
    ("shards-folder", "source 'img' is a folder of .tar files; name them with a pattern: 'img/*.tar'"),
])
def test_a_bad_recipe_is_one_line_before_step_1(corpus, tiny_checkpoint, tmp_path, case, message):
    if case == "all-bad":
        (tmp_path / "junk").mkdir()
        with tarfile.open(tmp_path / "junk" / "j.tar", "w") as tar:
            add_member(tar, "a.jpg", b"junk")
            add_member(tar, "a.txt", b"a caption")
    if case == "shards-folder":
        write_image_shards(tmp_path / "img", 1, 2)
    sources = {"empty": [{"path": "nothing/*.tar"}], "all-bad": [{"path": "junk/j.tar"}], "shards-folder": [{"path": "img"}],
               "bad-weight": [{"path": str(corpus / "pq" / "a.parquet"), "weight": -1}]}.get(
        case, [{"path": str(corpus / "pq" / "a.parquet")}])
    options = {"unknown-option": {"learning_rate": 1}, "no-max-steps": {"max_steps": None}}.get(case, {})
    data = recipe(tmp_path, sources=sources, **options)
    if case == "not-yaml":
        data.write_text("stage: [1\n")
    out = tmp_path / "o"
    result = runner.invoke(app, ["finetune", str(data), "--model", str(tiny_checkpoint), "--output", str(out)])
    assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output and not (out / "metrics.jsonl").exists()


def test_an_output_holding_a_source_is_refused(corpus, tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["finetune", str(recipe(corpus, name="r2.yaml")), "--model", str(tiny_checkpoint),
                                 "--output", str(corpus)])
    assert result.exit_code == 1 and "training never writes over its inputs" in " ".join(result.output.split())


@pytest.mark.parametrize("stage,expected", [
    (1, {"stage": 1, "lr": 1e-3, "frames": 32, "tokens_per_frame": 9, "global_batch": 512, "max_steps": 39063}),
    (2, {"stage": 2, "full": True, "train_vision": True, "lr": 1e-5, "vision_lr": 2e-6, "tokens_per_frame": 9,
         "global_batch": 128, "max_steps": 23438}),
])
def test_the_shipped_recipes_carry_table_3(stage, expected):
    """recipes/stage1.yaml and stage2.yaml against the paper's Table 3 (CrossLMM-2B): batch 512 / 128,
    LRs, 9 tokens per frame, one pass over 20 M / 3 M samples."""
    from crosslmm_cli.finetune.train import FinetuneSettings
    from crosslmm_cli.training_data.recipe import read_recipe

    recipe = read_recipe(Path(__file__).resolve().parents[2] / "recipes" / f"stage{stage}.yaml", FinetuneSettings)
    assert {name: recipe.options[name] for name in expected} == expected
    samples = {1: 20e6, 2: 3e6}[stage]
    assert recipe.options["max_steps"] == -(-int(samples) // recipe.options["global_batch"])
    assert len(recipe.sources) >= 2 and all(source["weight"] > 0 for source in recipe.sources)

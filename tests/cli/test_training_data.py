"""The training-data package against references it does not use: the mixture's proportions
against binomial sampling error, each source's stream against the set of samples written, the
readers against tarfile / pyarrow / json reading whole files, and memory on a 1 M-row source."""

from __future__ import annotations

import json
import math
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from crosslmm_cli.synthetic_shards import write_image_shards, write_multi_image_shard, write_parquet
from crosslmm_cli.training_data.order import SampleOrder
from crosslmm_cli.training_data.sources import AnnotationRows, ParquetFiles, TarShards, expand, open_source


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    write_image_shards(root / "img", 5, 7)  # uneven: 35 samples over 5 shards
    write_multi_image_shard(root / "multi" / "m-00000.tar", 5, images=3)
    write_parquet(root / "pq" / "a.parquet", 23, row_group=4)
    return root


def jsonl_source(path: Path, rows: int, block_bytes: int) -> AnnotationRows:
    with open(path, "w") as f:
        for row in range(rows):
            f.write(json.dumps({"id": f"r{row}", "image": "x.jpg", "caption": "c" * (row % 37)}) + "\n")
            if row % 5 == 0:
                f.write("\n")  # blank lines are not rows
    return AnnotationRows("a.jsonl", [path], path.parent, block_bytes=block_bytes)


def every_record(source) -> list:
    return [source.read(shard, row) for shard in range(len(source.shards)) for row in range(source.count(shard))]


def test_tar_reader_matches_tarfile_extraction(shards):
    source = open_source("img/images-{00000..00004}.tar", None, shards)
    records = every_record(source)
    expected = []
    for path in expand(str(shards / "img" / "images-{00000..00004}.tar"))[0]:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in members if n.endswith(".jpg")):
            key = name.removesuffix(".jpg")
            expected.append((f"{Path(path).name}/{key}", members[name], members[f"{key}.txt"].decode()))
    assert [(r.key, r.media[0].data, r.fields["caption"]) for r in records] == expected
    multi = open_source("multi/m-00000.tar", None, shards)
    first = multi.read(0, 0)
    assert [m.name for m in first.media] == ["multi00000.0.jpg", "multi00000.1.jpg", "multi00000.2.jpg"]
    assert first.fields["conversations"][1]["value"] == "pair multi00000"


def test_parquet_reader_matches_pyarrow_reading_the_whole_file(shards):
    source = ParquetFiles("a.parquet", [str(shards / "pq" / "a.parquet")], shards / "pq")
    table = pq.read_table(shards / "pq" / "a.parquet").to_pylist()
    records = every_record(source)
    assert [r.key for r in records] == [f"a.parquet/row {n + 1} (id {row['id']})" for n, row in enumerate(table)]
    assert [r.media[0].data for r in records] == [row["image"]["bytes"] for row in table]
    assert [r.fields["caption"] for r in records] == [row["caption"] for row in table]


@pytest.mark.parametrize("block_bytes", [97, 1000, 1 << 22])
def test_jsonl_blocks_hold_every_row_once(tmp_path, block_bytes):
    source = jsonl_source(tmp_path / "a.jsonl", 150, block_bytes)
    expected = [json.loads(line)["id"] for line in (tmp_path / "a.jsonl").read_text().splitlines() if line.strip()]
    assert [r.fields["id"] for r in every_record(source)] == expected


def test_each_source_stream_is_a_permutation_per_epoch(shards):
    source = open_source("img/*.tar", None, shards)
    order = SampleOrder([source], [1.0], seed=3)
    total = sum(source.count(s) for s in range(len(source.shards)))
    for epoch in range(3):
        places = [order.locate(0, epoch * total + p) for p in range(total)]
        assert sorted(places) == sorted((s, r) for s in range(5) for r in range(7))
    first = [order.locate(0, p) for p in range(total)]
    assert first != [order.locate(0, total + p) for p in range(total)]  # each epoch its own order
    assert first != sorted(first)  # shuffled
    assert len({shard for shard, _ in first[:14]}) > 1  # a window mixes its shards


def test_the_order_is_a_function_of_the_seed_alone(shards):
    def names(seed, sources_built_fresh=True):
        sources = [open_source("img/*.tar", None, shards), open_source("pq/a.parquet", None, shards)]
        order = SampleOrder(sources, [1, 1], seed)
        return [order.locate(*order.source_position(n)) + order.source_position(n) for n in range(300)]

    assert names(0) == names(0) and names(0) != names(1)
    # sample 250 found without asking for the ones before it
    sources = [open_source("img/*.tar", None, shards), open_source("pq/a.parquet", None, shards)]
    order = SampleOrder(sources, [1, 1], 0)
    position = order.source_position(250)
    assert order.locate(*position) + position == names(0)[250]


def test_the_mixture_follows_the_weights_within_sampling_error(shards):
    sources = [open_source(p, None, shards) for p in ("img/*.tar", "multi/*.tar", "pq/a.parquet")]
    weights = [2.0, 1.0, 1.0]
    order = SampleOrder(sources, weights, seed=0)
    n = 6000  # spans two mixture blocks
    drawn = np.bincount([order.source_position(i)[0] for i in range(n)], minlength=3)
    for count, weight in zip(drawn, weights):
        p = weight / sum(weights)
        assert abs(count - n * p) < 4 * math.sqrt(n * p * (1 - p)), (drawn, weights)
    # positions within each source are consecutive: the k-th draw of a source takes its position k
    positions = [order.source_position(i) for i in range(n)]
    for source in range(3):
        assert [p for s, p in positions if s == source] == list(range(drawn[source]))


def test_a_million_row_source_starts_at_once_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    row = '{"image": "x.jpg", "caption": "a caption of some forty characters...."}\n'
    with open(path, "w") as f:
        for _ in range(1000):
            f.write(row * 1000)  # 1 M rows, ~75 MB
    tracemalloc.start()
    began = time.perf_counter()
    source = open_source(path.name, None, tmp_path)
    order = SampleOrder([source], [1.0], seed=0)
    first = order.locate(*order.source_position(0))
    startup = time.perf_counter() - began
    for sample in range(2000):
        source.read(*order.locate(*order.source_position(sample)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert first is not None and startup < 5.0  # reads a window of 4 blocks, not the file
    assert peak < 40 << 20, f"{peak / 2**20:.0f} MB traced for a {path.stat().st_size / 2**20:.0f} MB source"


def test_micro_batches_group_a_steps_samples_by_source_and_keep_its_samples():
    """Length-aware batching: images (1 frame) and videos (8) drawn 2:1; micro-batches of 4 out of a
    step of 16 pad far less when a step's samples are grouped by source; the step's samples are the
    same, and the same for 1 process accumulating 4 micro-batches as for 2 processes with 2 each."""
    from crosslmm_cli.training_data.loader import StepSampler

    def source_of(sample: int) -> int:
        return int(np.random.default_rng(sample).random() < 1 / 3)  # 1: a video

    frames = {0: 1, 1: 8}

    def padded(sampler) -> int:
        return sum(len(batch) * max(frames[source_of(s)] for s in batch) - sum(frames[source_of(s)] for s in batch)
                   for batch in sampler)

    plain = StepSampler(0, 50, 16, 4, 0, 1)
    grouped = StepSampler(0, 50, 16, 4, 0, 1, source_of=source_of)
    assert padded(grouped) < 0.5 * padded(plain), (padded(grouped), padded(plain))
    one = list(grouped)
    two = [StepSampler(0, 50, 16, 4, rank, 2, source_of=source_of) for rank in (0, 1)]
    by_step = lambda batches, per_step: [sorted(s for b in batches[i:i + per_step] for s in b)  # noqa: E731
                                         for i in range(0, len(batches), per_step)]
    assert by_step(one, 4) == [list(range(16 * step, 16 * step + 16)) for step in range(50)]
    merged = [sorted(a + b) for a, b in zip(by_step(list(two[0]), 2), by_step(list(two[1]), 2))]
    assert merged == by_step(one, 4)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_rows_sharing_an_id_have_names_of_their_own_and_one_numbering(tmp_path, suffix):
    """LLaVA-style files repeat ids (one video, several questions); samples.jsonl must still name one
    row, and a row that cannot be read is named as a readable one would be: the 1-based item of a
    list, the line of a JSON-lines file as an editor numbers it (blank lines, CRLF line ends and
    rows cut by the blocks the file is read in included)."""
    (tmp_path / "x.jpg").write_bytes(b"")
    rows = [{"id": "clip", "image": "x.jpg", "caption": str(n)} for n in range(4)] + ["not a row"]
    path = tmp_path / f"a{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        lines = [json.dumps(rows[0]), "", json.dumps(rows[1]) + "\r", "   ", json.dumps(rows[2]), json.dumps(rows[3]), "",
                 json.dumps(rows[4])]
        path.write_text("\n".join(lines) + "\n")
    source = AnnotationRows(path.name, [path], tmp_path, block_bytes=37)  # a .jsonl's rows cut by its blocks
    places = [(shard, row) for shard in range(len(source.shards)) for row in range(source.count(shard))]
    names = [source.row_name(*place) for place in places]
    keys = [source.read(*place).key for place in places[:4]]
    assert len(set(keys)) == 4 and keys == [f"{path.name}/{name} (id clip)" for name in names[:4]]
    if suffix == ".json":
        assert names == ["item 1", "item 2", "item 3", "item 4", "item 5"]
    else:  # the reference: the file's own lines
        numbered = enumerate(path.read_text().split("\n"), 1)
        assert names == [f"line {number}" for number, line in numbered if line.strip()]
    with pytest.raises(ValueError):
        source.read(*places[4])  # reported as f"{path.name}/{names[4]}"


def test_a_json_lists_items_are_found_where_the_standard_parser_reads_them(tmp_path):
    """Reference: json.loads of the whole file. Windows as small as one byte cut through multi-byte
    characters, strings holding brackets and commas, and numbers."""
    from crosslmm_cli.training_data.json_list import NotAJsonList, item_spans, read_item

    rows = [{"id": n, "text": "é€😀 ,]\"[{" * (n % 4), "values": [1, 2.5, None, True]} for n in range(300)]
    rows += [12345, "a string", [1, [2]], 3.5e10, -0.25, False, None]
    path = tmp_path / "a.json"
    for indent, bom in ((None, b""), (2, b"\xef\xbb\xbf")):
        path.write_bytes(bom + json.dumps(rows, indent=indent, ensure_ascii=False).encode())
        reference = json.loads(path.read_text(encoding="utf-8-sig"))
        for window in (1, 7, 1 << 20):
            assert [read_item(path, span) for span in item_spans(path, window)] == reference
    for broken in (json.dumps(rows)[:-30], json.dumps(rows)[:-1], "<!DOCTYPE html>", '[{"a": 1} {"b": 2}]'):
        path.write_text(broken)
        with pytest.raises(NotAJsonList):
            item_spans(path, 64)


def test_a_json_list_source_is_read_item_by_item_without_the_list(tmp_path):
    """LLaVA-Video-178K and friends ship one big list; each process once held all of it. Reading
    items of a 60,000-item list (about 9 MB) through the source allocates a small part of that."""
    import tracemalloc

    (tmp_path / "x.jpg").write_bytes(b"")
    rows = [{"id": f"r{n}", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown here, in detail?"}, {"from": "gpt", "value": f"Picture {n}. " * 8}]}
        for n in range(60_000)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows))
    source = AnnotationRows("big.json", [path], tmp_path)
    source.index_dir = tmp_path / "index"
    assert source.count(0) == len(rows)  # the spans, found once and kept
    assert len(list(source.index_dir.glob("big.json.*.spans.npy"))) == 1
    again = AnnotationRows("big.json", [path], tmp_path)
    again.index_dir = source.index_dir
    tracemalloc.start()
    records = [again.read(0, row) for row in range(0, len(rows), 997)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [r.fields["id"] for r in records] == [rows[n]["id"] for n in range(0, len(rows), 997)]
    assert peak < path.stat().st_size / 20, (peak, path.stat().st_size)

"""Small training corpora in the formats the paper's data ships in, for tests and benchmarks:
webdataset tar shards (``key.jpg`` + ``key.txt``, ``key.mp4`` + ``key.json``, ``key.0.jpg`` +
``key.1.jpg`` + ``key.json`` for multi-image), parquet with embedded image bytes, and a LLaVA-style
``.jsonl`` naming video files. Every caption names its sample, so a test can tell what was read."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .synthetic_video import index_frames, write_video


def jpeg(seed: int, height: int = 40, width: int = 56) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def mp4(frames: int = 4, size: int = 32, start: int = 0) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.mp4"
        frames_of = (frame for i, frame in enumerate(index_frames(start + frames, size, size)) if i >= start)
        write_video(path, frames_of, (size, size), 10, "libx264", 2)
        return path.read_bytes()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_image_shards(folder: Path, shards: int, per_shard: int, prefix: str = "images") -> list[Path]:
    """Caption shards (img2dataset's layout): ``{prefix}-NNNNN.tar`` of ``key.jpg`` + ``key.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(shards):
        path = folder / f"{prefix}-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(per_shard):
                key = f"{shard:05d}{row:04d}"
                add_member(tar, f"{key}.jpg", jpeg(shard * 10_000 + row))
                add_member(tar, f"{key}.txt", f"image {key}".encode())
        paths.append(path)
    return paths


def write_video_shards(folder: Path, shards: int, per_shard: int, distinct_clips: int = 4,
                       prefix: str = "videos") -> list[Path]:
    """Video shards (video2dataset's layout): ``key.mp4`` + ``key.json`` with a caption; the clips
    repeat every ``distinct_clips`` samples (encoding is what is slow here, not decoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = [mp4(start=i) for i in range(distinct_clips)]
    paths, number = [], 0
    for shard in range(shards):
        path = folder / f"{prefix}-{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for row in range(per_shard):
                key = f"{shard:05d}{row:04d}"
                add_member(tar, f"{key}.mp4", clips[number % distinct_clips])
                add_member(tar, f"{key}.json", json.dumps({"caption": f"video {key}"}).encode())
                number += 1
        paths.append(path)
    return paths


def write_multi_image_shard(path: Path, samples: int, images: int = 2) -> Path:
    """Stage II multi-image conversations: ``key.0.jpg``, ``key.1.jpg``, ... and ``key.json``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for row in range(samples):
            key = f"multi{row:05d}"
            for image in range(images):
                add_member(tar, f"{key}.{image}.jpg", jpeg(777_000 + row * images + image))
            conversation = [{"from": "human", "value": "<image>\n<image>\nWhat differs?"},
                            {"from": "gpt", "value": f"pair {key}"}]
            add_member(tar, f"{key}.json", json.dumps({"conversations": conversation}).encode())
    return path


def write_parquet(path: Path, rows: int, row_group: int = 16) -> Path:
    """The hub's layout: an ``image`` struct column ({"bytes", "path"}) and a ``caption``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "id": [f"p{row:05d}" for row in range(rows)],
        "image": [{"bytes": jpeg(555_000 + row), "path": f"p{row:05d}.jpg"} for row in range(rows)],
        "caption": [f"parquet p{row:05d}" for row in range(rows)],
    })
    pq.write_table(table, path, row_group_size=row_group)
    return path


def write_annotated_videos(folder: Path, rows: int, distinct_clips: int = 4) -> Path:
    """LLaVA-Video-style instructions: ``annotations.jsonl`` naming clips under ``videos/``."""
    (folder / "videos").mkdir(parents=True, exist_ok=True)
    for clip in range(distinct_clips):
        (folder / "videos" / f"clip{clip}.mp4").write_bytes(mp4(start=clip))
    with open(folder / "annotations.jsonl", "w") as f:
        for row in range(rows):
            conversation = [{"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": f"answer j{row:05d}"}]
            f.write(json.dumps({"id": f"j{row:05d}", "video": f"clip{row % distinct_clips}.mp4",
                                "conversations": conversation}) + "\n")
    return folder / "annotations.jsonl"

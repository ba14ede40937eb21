"""The MP4 sample-table reader agrees with libavformat's demuxer (through PyAV) on every shown frame,
edit lists included, and a file that lies about its size costs nothing."""

from __future__ import annotations

import subprocess
import time
import tracemalloc

import av
import pytest

from crosslmm_cli.synthetic_video import ffmpeg_exe, index_frames, write_video
from crosslmm_cli.video import probe
from crosslmm_cli.video.mp4_index import read_track


def demuxer_frames(path) -> tuple[list[int], list[int]]:
    """(pts of every shown packet, pts of the keyframes), sorted, from PyAV's demuxer."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size and not p.is_discard]
    return sorted(p.pts for p in packets), sorted(p.pts for p in packets if p.is_keyframe)


def copy(source, target, *before, after=()):
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *before, "-i", str(source), "-c", "copy", *after, str(target)],
                   check=True)
    return target


@pytest.fixture(scope="module")
def bframes(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("mp4") / "bframes.mp4", index_frames(60, 64, 64), (64, 64), 25, "libx264",
                       12, extra_output_args=["-bf", "3", "-preset", "medium"])


@pytest.mark.parametrize("name,extra", [("plain.mp4", []), ("movie.mov", [])])
def test_plain_tracks_match_the_demuxer(tmp_path, name, extra):
    path = write_video(tmp_path / name, index_frames(60, 64, 64), (64, 64), 25, "libx264", 12, extra_output_args=extra)
    track = read_track(path)
    pts, keyframes = demuxer_frames(path)
    assert track.pts.tolist() == pts and track.pts[track.keyframe].tolist() == keyframes
    assert track.complete and track.declared_seconds == pytest.approx(2.4)


@pytest.mark.parametrize("before", [[], ["-ss", "0.5"], ["-ss", "0.3", "-t", "1"], ["-itsoffset", "1.5"]],
                         ids=["bframes", "cut", "cut-and-trimmed", "empty-edit"])
def test_edit_lists_match_the_demuxer(bframes, tmp_path, before):
    path = copy(bframes, tmp_path / "edited.mp4", *before) if before else bframes
    track = read_track(path)
    pts, keyframes = demuxer_frames(path)
    assert track.pts.tolist() == pts and track.pts[track.keyframe].tolist() == keyframes


def test_fragmented_and_other_containers_defer_to_the_demuxer(tmp_path, videos):
    fragmented = write_video(tmp_path / "fragmented.mp4", index_frames(30, 64, 64), (64, 64), 25, "libx264", 10,
                             extra_output_args=["-movflags", "frag_keyframe+empty_moov"])
    assert read_track(fragmented) is None
    assert read_track(videos["webm"]) is None
    assert read_track(videos["text"]) is None


def test_a_sample_table_claiming_a_billion_frames_costs_nothing(bframes, tmp_path):
    data = bytearray(bframes.read_bytes())
    stts = data.index(b"stts")  # size, "stts", version/flags, entry count, then (count, delta) entries
    data[stts + 12: stts + 16] = (10**9).to_bytes(4, "big")
    bomb = tmp_path / "bomb.mp4"
    bomb.write_bytes(bytes(data))
    tracemalloc.start()
    began = time.perf_counter()
    assert read_track(bomb) is None  # more samples than bytes: not believed
    info = probe(bomb)  # the demuxer's packets are what is really there
    seconds, (_, peak) = time.perf_counter() - began, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 20 * 2**20
    assert info.frame_count <= 60


def test_truncated_files_list_only_the_frames_whose_bytes_are_there(bframes, tmp_path):
    faststart = copy(bframes, tmp_path / "faststart.mp4", after=["-movflags", "faststart"])
    half = tmp_path / "half.mp4"
    data = faststart.read_bytes()
    half.write_bytes(data[: len(data) * 3 // 4])
    track, whole = read_track(half), read_track(faststart)
    assert not track.complete and 0 < len(track.pts) < len(whole.pts)
    assert track.declared_seconds == whole.declared_seconds
    with av.open(str(half)) as container:  # what libavformat reads whole from the cut file
        stream = container.streams.video[0]
        readable = sorted(p.pts for p in container.demux(stream) if p.size and not p.is_discard and not p.is_corrupt)
    assert track.pts.tolist() == readable

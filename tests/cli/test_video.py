"""Decoding and sampling on index-coded clips (each frame spells its own number): exact frames,
keyframe seeking, seek-or-decode-on, rotation, variable frame rate, bad files and bad requests."""

from __future__ import annotations

import math
import re

import av
import numpy as np
import pytest

from crosslmm_cli.errors import UserError
from crosslmm_cli.synthetic_video import read_index
from crosslmm_cli.video import SamplingRequest, probe, read_frames
from crosslmm_cli.video import decode as decode_module
from tests.cli.conftest import BAD_VIDEOS, FPS, KEYFRAME_INTERVAL


def decoded_indices(frames) -> list[int]:
    return [read_index(frame) for frame in frames.pixels]


@pytest.mark.parametrize("kind", ["mp4", "webm", "avi", "mkv", "bframes"])
@pytest.mark.parametrize("count", [3, 8, 40])
def test_exact_mode_returns_the_requested_frames(videos, kind, count):
    info, frames = read_frames(videos[kind], SamplingRequest(num_frames=count, seek="exact"))
    expected = [int(t * FPS) for t in frames.requested]
    assert frames.indices == expected
    assert decoded_indices(frames) == expected
    assert frames.seek == "exact" and frames.pixels.shape == (count, 128, 128, 3)
    # segment centres
    assert frames.requested == pytest.approx([(i + 0.5) * info.duration / count for i in range(count)])


@pytest.mark.parametrize("count,seeks_per_sample", [(4, True), (40, False)])
def test_exact_mode_seeks_only_when_that_decodes_less(videos, monkeypatch, count, seeks_per_sample):
    seeks = []
    real_seek = decode_module._Cursor.seek
    monkeypatch.setattr(decode_module._Cursor, "seek", lambda self, pts: seeks.append(pts) or real_seek(self, pts))
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=count, seek="exact"))
    assert decoded_indices(frames) == frames.indices == [int(t * FPS) for t in frames.requested]
    # 4 samples are 25 frames apart (keyframes every 10): each seeks; 40 samples 2.5 frames apart
    # decode on, a seek at most where a decoder starts its run
    if seeks_per_sample:
        assert len(seeks) >= count - 1
    else:
        assert len(seeks) <= decode_module.DECODE_WORKERS


@pytest.mark.parametrize("kind", ["mp4", "webm", "bframes"])
def test_fast_mode_stays_within_one_keyframe_interval(videos, kind):
    _, frames = read_frames(videos[kind], SamplingRequest(num_frames=4))
    assert frames.seek == "keyframe" and frames.backend == "pyav"
    assert frames.keyframe_interval == pytest.approx(KEYFRAME_INTERVAL / FPS)
    got = decoded_indices(frames)
    assert got == frames.indices
    for index, requested in zip(got, frames.requested):
        assert index % KEYFRAME_INTERVAL == 0
        assert abs(index - requested * FPS) <= KEYFRAME_INTERVAL


def test_forced_keyframe_mode_decodes_each_keyframe_once(videos):
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=30, seek="keyframe"))
    assert frames.seek == "keyframe" and len(frames.indices) == 30
    assert decoded_indices(frames) == frames.indices
    assert all(index % KEYFRAME_INTERVAL == 0 for index in frames.indices)


def test_dense_samples_stay_exact_without_asking(videos):
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=20))  # 5 frames apart < keyframe interval
    assert frames.seek == "exact"
    assert decoded_indices(frames) == [int(t * FPS) for t in frames.requested]


def test_rotation_metadata_is_honoured(videos):
    info = probe(videos["rotated"])
    assert info.rotation == 90 and (info.width, info.height) == (96, 128)
    for seek in ("exact", "keyframe"):
        _, frames = read_frames(videos["rotated"], SamplingRequest(num_frames=3, seek=seek))
        assert frames.seek == seek and frames.pixels.shape[1:3] == (128, 96)  # portrait
        assert [read_index(np.rot90(frame, -1)) for frame in frames.pixels] == frames.indices


def container_times(path) -> list[float]:
    """Presentation times of every packet, as PyAV's demuxer gives them (no B-frames: one per frame)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.size)


def test_variable_frame_rate_is_sampled_by_timestamp(videos):
    info = probe(videos["vfr"])
    assert info.variable_frame_rate
    shown_at = container_times(videos["vfr"]) + [math.inf]  # ground truth from the container
    gaps = {round(b - a, 2) for a, b in zip(shown_at, shown_at[1:-1])}
    assert len(gaps) > 2  # really variable
    _, frames = read_frames(videos["vfr"], SamplingRequest(num_frames=10, seek="exact"))
    for index, stamp, requested in zip(decoded_indices(frames), frames.timestamps, frames.requested):
        # the frame on screen at the requested time: shown at or before it, replaced after it
        assert shown_at[index] <= requested < shown_at[index + 1]
        assert stamp == pytest.approx(shown_at[index], abs=1e-3)


def test_start_end_and_fps_cap(videos):
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=32, start=1.0, end=3.0, fps=2.0, seek="exact"))
    assert len(frames.indices) == 4  # 2 s at 2 frames/s
    assert all(1.0 <= t <= 3.0 for t in frames.timestamps)
    _, few = read_frames(videos["mp4"], SamplingRequest(num_frames=500, seek="exact"))
    assert len(few.indices) == 100  # never more samples than frames


def test_frames_are_downscaled_to_max_side(videos):
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=2, seek="exact", max_side=64))
    assert frames.pixels.shape[1:3] == (64, 64)


@pytest.mark.parametrize("kind,message", BAD_VIDEOS)
def test_bad_files_are_user_errors(videos, kind, message):
    with pytest.raises(UserError, match=re.escape(message)):
        read_frames(videos[kind], SamplingRequest(num_frames=4))


@pytest.mark.parametrize(
    "request_args,message",
    [
        (dict(num_frames=0), "--frames must be at least 1"),
        (dict(fps=0), "--fps must be positive"),
        (dict(start=-1), "--start must be >= 0"),
        (dict(start=2, end=1), "must come after --start"),
        (dict(seek="fastest"), "--seek must be one of"),
        (dict(fps=math.nan), "--fps must be a finite number"),
        (dict(fps=math.inf), "--fps must be a finite number"),
        (dict(start=math.nan), "--start must be a finite number"),
        (dict(end=math.nan), "--end must be a finite number"),
    ],
)
def test_bad_requests_are_user_errors(request_args, message):
    with pytest.raises(UserError, match=message):
        SamplingRequest(**request_args)


def test_start_past_the_end(videos):
    with pytest.raises(UserError, match="past the end of the video"):
        read_frames(videos["mp4"], SamplingRequest(start=10.0))


def test_summary_has_no_pixels(videos):
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=2, seek="exact"))
    summary = frames.summary()
    assert "pixels" not in summary and summary["shape"] == [2, 128, 128, 3]
    assert math.isclose(summary["timestamps"][0], frames.indices[0] / FPS)


def test_a_folder_of_frames_is_a_video(tmp_path):
    import cv2

    from crosslmm_cli.synthetic_video import index_frame

    for index in range(12):
        cv2.imwrite(str(tmp_path / f"{index:05d}.jpg"), index_frame(index, 64, 64)[..., ::-1])
    info, frames = read_frames(tmp_path, SamplingRequest(num_frames=4))
    assert info.frame_count == 12 and info.codec == "images" and frames.backend == "images"
    assert decoded_indices(frames) == frames.indices == [1, 4, 7, 10]  # segment centres of 12 frames

"""Decoding and sampling: exact frames, keyframe seeking, rotation, variable frame rate, bad files."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from crosslmm_cli import video as video_module
from crosslmm_cli.errors import UserError
from crosslmm_cli.synthetic_video import read_index
from crosslmm_cli.video import SamplingRequest, packet_times, probe, read_frames
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


class CountingCapture:
    """cv2.VideoCapture that counts seeks."""

    seeks = 0

    def __init__(self, *args):
        self.capture = REAL_CAPTURE(*args)

    def set(self, prop, value):
        CountingCapture.seeks += 1
        return self.capture.set(prop, value)

    def __getattr__(self, name):
        return getattr(self.capture, name)


REAL_CAPTURE = video_module.cv2.VideoCapture


@pytest.mark.parametrize("count,seeks", [(4, True), (40, False)])
def test_exact_mode_seeks_only_when_that_decodes_less(videos, monkeypatch, count, seeks):
    monkeypatch.setattr(video_module.cv2, "VideoCapture", CountingCapture)
    CountingCapture.seeks = 0
    _, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=count, seek="exact"))
    assert decoded_indices(frames) == frames.indices == [int(t * FPS) for t in frames.requested]
    # 4 samples are 25 frames apart (keyframes every 10): seeking beats decoding through
    assert (CountingCapture.seeks > 0) == seeks


@pytest.mark.parametrize("kind", ["mp4", "webm", "bframes"])
def test_fast_mode_stays_within_one_keyframe_interval(videos, kind):
    _, frames = read_frames(videos[kind], SamplingRequest(num_frames=4))
    assert frames.seek == "keyframe" and frames.backend == "ffmpeg"
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


def test_variable_frame_rate_is_sampled_by_timestamp(videos):
    info = probe(videos["vfr"])
    assert info.variable_frame_rate
    shown_at = packet_times(videos["vfr"]) + [math.inf]  # ground truth from the container (no B-frames)
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


def test_ffmpeg_decodes_what_opencv_cannot(videos, monkeypatch):
    class Closed:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

        def get(self, *args):
            return 0.0

        def release(self):
            pass

    monkeypatch.setattr(video_module.cv2, "VideoCapture", Closed)
    info, frames = read_frames(videos["mp4"], SamplingRequest(num_frames=5, seek="exact"))
    assert frames.backend == "ffmpeg" and info.frame_count == 100
    assert decoded_indices(frames) == [int(t * FPS) for t in frames.requested] == frames.indices


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


@pytest.mark.parametrize("kind", ["mp4", "bframes"])
def test_h264_keyframes_read_by_the_sample_tables_equal_ffmpeg_seeking(videos, monkeypatch, kind):
    raw_streams = []
    real_stream = video_module.mp4_index.h264_keyframe_stream
    monkeypatch.setattr(video_module.mp4_index, "h264_keyframe_stream",
                        lambda path, times: raw_streams.append(times) or real_stream(path, times))
    request = SamplingRequest(num_frames=6, seek="keyframe", max_side=96)
    _, fast = read_frames(videos[kind], request)
    assert len(raw_streams) == 1 and decoded_indices(fast) == fast.indices
    monkeypatch.setattr(video_module, "_h264_keyframes", lambda *args: None)  # one seeking ffmpeg input per keyframe
    _, seeking = read_frames(videos[kind], request)
    assert seeking.indices == fast.indices
    assert np.array_equal(seeking.pixels, fast.pixels)


def test_non_h264_files_have_no_raw_keyframe_stream(videos):
    assert video_module.mp4_index.h264_keyframe_stream(videos["webm"], [0.0]) is None

"""The MP4 sample-table reader agrees with ffmpeg's own keyframe listing."""

from __future__ import annotations

import pytest

from crosslmm_cli import mp4_index
from crosslmm_cli.synthetic_video import index_frames, write_video
from crosslmm_cli.video import _listing_times, _packet_listing


def ffmpeg_keyframes(path) -> list[float]:
    return _listing_times(_packet_listing(path)[1], keyframes_only=True)


@pytest.mark.parametrize(
    "name,extra",
    [
        ("plain.mp4", []),
        ("bframes.mp4", ["-bf", "3", "-preset", "medium"]),  # composition offsets (ctts)
        ("movie.mov", []),
    ],
)
def test_mp4_keyframes_match_ffmpeg(tmp_path, name, extra):
    path = write_video(tmp_path / name, index_frames(60, 64, 64), (64, 64), 25, "libx264", 12, extra_output_args=extra)
    times = mp4_index.keyframe_times(path)
    assert times is not None and len(times) == 5
    assert times == pytest.approx(ffmpeg_keyframes(path), abs=1e-6)


def test_fragmented_and_other_containers_defer_to_ffmpeg(tmp_path, videos):
    fragmented = write_video(tmp_path / "fragmented.mp4", index_frames(30, 64, 64), (64, 64), 25, "libx264", 10,
                             extra_output_args=["-movflags", "frag_keyframe+empty_moov"])
    assert mp4_index.keyframe_times(fragmented) is None
    assert mp4_index.keyframe_times(videos["webm"]) is None
    assert mp4_index.keyframe_times(videos["text"]) is None

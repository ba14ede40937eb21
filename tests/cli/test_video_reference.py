"""Every container, codec and timing quirk against an independent reference: PyAV decoding every
frame from the start, without seeking, without our index. For each clip and mode, the frames we
return must be the reference's frames at the positions a player shows (exact) or the nearest
keyframes (keyframe mode), with the reference's positions and timestamps."""

from __future__ import annotations

import dataclasses
import subprocess
from dataclasses import dataclass

import av
import numpy as np
import pytest

from crosslmm_cli.synthetic_video import ffmpeg_exe, index_frame
from crosslmm_cli.video import SamplingRequest, probe, read_frames
from crosslmm_cli.video.decode import decode_positions
from crosslmm_cli.video.frame_index import FrameIndex

FRAMES, WIDTH, HEIGHT = 100, 64, 48  # 4 s at 25 fps; each frame spells its number, so no two are alike
X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "10"]
X264_BFRAMES = ["-c:v", "libx264", "-preset", "medium", "-bf", "3", "-pix_fmt", "yuv420p", "-g", "10"]
VFR = "setpts='if(lt(N,30),N*0.04,1.2+(N-30)*0.12)/TB'"

# name -> ffmpeg output arguments; each writes one small clip of index-coded frames
CLIPS = {
    "h264_bframes.mp4": X264_BFRAMES,
    "h264_bframes.mkv": X264_BFRAMES,
    "h264_fragmented.mp4": X264 + ["-movflags", "frag_keyframe+empty_moov"],
    "h264.mov": X264,
    "hevc_bframes.mkv": ["-c:v", "libx265", "-g", "10", "-x265-params", "log-level=error"],
    "hevc_10bit.mp4": ["-c:v", "libx265", "-g", "10", "-pix_fmt", "yuv420p10le", "-tag:v", "hvc1",
                        "-x265-params", "log-level=error"],
    "vp9.webm": ["-c:v", "libvpx-vp9", "-g", "10", "-deadline", "realtime", "-cpu-used", "8"],
    "av1.mkv": ["-c:v", "libaom-av1", "-cpu-used", "8", "-g", "10"],
    "mpeg4_bframes.avi": ["-c:v", "mpeg4", "-bf", "2", "-g", "10"],
    "mpeg2.ts": ["-c:v", "mpeg2video", "-bf", "2", "-g", "10"],
    "mjpeg.avi": ["-c:v", "mjpeg", "-q:v", "5"],
    "prores_10bit.mov": ["-c:v", "prores_ks", "-profile:v", "1"],
    "vfr.mkv": X264_BFRAMES + ["-vf", VFR, "-fps_mode", "passthrough"],
    "vfr.mp4": X264 + ["-vf", VFR, "-fps_mode", "passthrough"],
    "starts_at_5s.mkv": X264_BFRAMES + ["-output_ts_offset", "5"],
    "odd_9x7.mp4": ["-c:v", "libx264", "-pix_fmt", "yuv444p", "-vf", "scale=9:7", "-g", "10"],
    "tiny_1x1.mkv": ["-c:v", "ffv1", "-vf", "scale=1:1", "-g", "10"],
    "vvc.mp4": ["-c:v", "libvvenc", "-g", "10"],  # H.266: its first frames decode late
    # open GOPs: frames shown before a keyframe refer to it (leading pictures)
    "vvc_open_gop.mp4": ["-c:v", "libvvenc", "-g", "32"],  # the first 23 frames shown lead the first keyframe
    "hevc_open_gop.mkv": ["-c:v", "libx265", "-x265-params",
                          "keyint=32:min-keyint=32:open-gop=1:bframes=4:scenecut=0:log-level=error"],
    "av1_open_gop.mkv": ["-c:v", "libsvtav1", "-pix_fmt", "yuv420p", "-g", "32", "-svtav1-params", "irefresh-type=1"],
}
# made from h264_bframes.mp4 / .mkv with stream copy: (input, arguments before -i, arguments after)
DERIVED = {
    "cut_edit_list.mp4": ("h264_bframes.mp4", ["-ss", "1.3"], ["-c", "copy"]),
    "delayed_empty_edit.mp4": ("h264_bframes.mp4", ["-itsoffset", "1.5"], ["-c", "copy"]),
    "rotated.mp4": ("h264_bframes.mp4", ["-display_rotation", "90"], ["-c", "copy"]),
    "rotated.mkv": ("h264_bframes.mkv", ["-display_rotation", "270"], ["-c", "copy"]),
    "faststart.mp4": ("h264_bframes.mp4", [], ["-c", "copy", "-movflags", "faststart"]),
    # cut at a CRA: its leading pictures (RASL) refer to frames before the cut, and no decoder shows them
    "hevc_open_gop_cut.ts": ("hevc_open_gop.mkv", ["-ss", "1.5"], ["-c", "copy"]),
    "hevc_open_gop_cut.mkv": ("hevc_open_gop.mkv", ["-ss", "1.5"], ["-c", "copy"]),
}
TRUNCATED = {"truncated_faststart.mp4": "faststart.mp4", "truncated.mkv": "h264_bframes.mkv"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    made = {}
    raw = b"".join(index_frame(i, HEIGHT, WIDTH).tobytes() for i in range(FRAMES))
    for name, arguments in CLIPS.items():
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
                        "-r", "25", "-i", "pipe:", *arguments, str(root / name)], check=True, input=raw)
        made[name] = root / name
    for name, (source, before, after) in DERIVED.items():
        subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *before, "-i", str(made[source]), *after, str(root / name)],
                       check=True, stdin=subprocess.DEVNULL)
        made[name] = root / name
    for name, source in TRUNCATED.items():  # the first 60 % of the bytes: a half-finished download
        data = made[source].read_bytes()
        (root / name).write_bytes(data[: len(data) * 6 // 10])
        made[name] = root / name
    return made


@dataclass
class Reference:
    seconds: np.ndarray  # (N,) pts of every frame in presentation order, from the first
    keyframe: np.ndarray  # (N,) bool
    frames: list[np.ndarray]  # RGB as displayed
    rotation: int


def reference_decode(path, size: tuple[int, int] | None = None) -> Reference:
    """Every frame, decoded in one pass from the start; a damaged tail simply ends it."""
    rows = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        try:
            for packet in container.demux(stream):
                try:
                    rows += [(f.pts * float(f.time_base), f.key_frame, f) for f in packet.decode()]
                except av.error.InvalidDataError:
                    continue
        except av.FFmpegError:
            pass
        rows.sort(key=lambda row: row[0])
        rotation = int(rows[0][2].rotation) % 360
        width, height = size or (rows[0][2].width, rows[0][2].height)  # as decoded, before rotation
        frames = [np.rot90(f.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA"), rotation // 90)
                  for _, _, f in rows]
    seconds = np.array([row[0] for row in rows]) - rows[0][0]
    return Reference(seconds, np.array([row[1] for row in rows]), frames, rotation)


def shown_at(reference: Reference, t: float) -> int:
    return int(np.searchsorted(reference.seconds, t + 1e-9, side="right")) - 1


ALL = sorted([*CLIPS, *DERIVED, *TRUNCATED])


@pytest.mark.parametrize("name", ALL)
def test_exact_frames_equal_the_reference(clips, name):
    reference = reference_decode(clips[name])
    info, frames = read_frames(clips[name], SamplingRequest(num_frames=7, seek="exact"))
    assert info.frame_count == len(reference.seconds)
    assert info.duration == pytest.approx(reference.seconds[-1] + np.median(np.diff(reference.seconds)), abs=1e-3)
    expected = [shown_at(reference, t) for t in frames.requested]
    assert frames.indices == expected
    assert frames.timestamps == pytest.approx(reference.seconds[expected], abs=1e-6)
    for got, position in zip(frames.pixels, expected):
        assert np.array_equal(got, reference.frames[position])
    adjacent = [np.array_equal(reference.frames[p], reference.frames[p + 1]) for p in expected if p + 1 < len(reference.frames)]
    assert not any(adjacent) or name in ("tiny_1x1.mkv", "odd_9x7.mp4")  # the check can tell neighbours apart


@pytest.mark.parametrize("name", ALL)
def test_keyframe_mode_returns_the_nearest_keyframe(clips, name):
    reference = reference_decode(clips[name])
    _, frames = read_frames(clips[name], SamplingRequest(num_frames=5, seek="keyframe"))
    keyframe_times = reference.seconds[reference.keyframe]
    assert frames.seek == "keyframe"
    for requested, position, stamp, got in zip(frames.requested, frames.indices, frames.timestamps, frames.pixels):
        assert reference.keyframe[position] or position == 0  # the first shown frame decodes without a keyframe flag
        assert stamp == pytest.approx(reference.seconds[position], abs=1e-6)
        nearest = np.abs(keyframe_times - requested).min() if len(keyframe_times) else abs(requested)
        assert abs(stamp - requested) <= nearest + 1e-6
        assert np.array_equal(got, reference.frames[position])


@pytest.mark.parametrize("keyframes_only", [False, True])
def test_a_frame_the_index_does_not_list_never_takes_a_listed_frames_place(clips, keyframes_only):
    """An index whose second frame has a pts the decoder never outputs (one tick late): the frame the
    decoder does give there is not on the list, so it must not come back under the position and time
    of the listed frame before it (frame 0 at 0.0 s); whatever comes back is the listed frame it is
    labelled as, pixel for pixel."""
    name = "h264_bframes.mp4"
    reference = reference_decode(clips[name])
    info = probe(clips[name])
    pts = info.index.pts.copy()
    pts[1] += 1  # frames are 512 ticks apart: still sorted, now unmatched
    index = FrameIndex(info.index.time_base, pts, info.index.keyframe, info.index.complete, info.index.declared_seconds)
    pixels, positions = decode_positions(dataclasses.replace(info, index=index), [1, 2], (WIDTH, HEIGHT), keyframes_only)
    for got, position in zip(pixels, positions):
        assert position != 1 and np.array_equal(got, reference.frames[position])  # positions 0 and 2 keep their pts


@pytest.mark.parametrize("name", ["h264_bframes.mkv", "vp9.webm", "av1.mkv", "mpeg4_bframes.avi", "rotated.mp4"])
def test_modes_agree_on_the_output_size(clips, name):
    request = dict(num_frames=3, max_side=37)
    shapes = {read_frames(clips[name], SamplingRequest(seek=seek, **request))[1].pixels.shape[1:] for seek in ("exact", "keyframe")}
    info = probe(clips[name])
    assert len(shapes) == 1
    height, width = shapes.pop()[:2]
    assert max(height, width) == 37 and (width > height) == (info.width > info.height)


def test_rotation_is_applied(clips):
    for name, rotation in (("rotated.mp4", 90), ("rotated.mkv", 270)):
        info = probe(clips[name])
        assert info.rotation == rotation and (info.width, info.height) == (48, 64)


def test_variable_frame_rate_is_detected_in_every_container(clips):
    assert probe(clips["vfr.mkv"]).variable_frame_rate and probe(clips["vfr.mp4"]).variable_frame_rate
    assert not probe(clips["h264_bframes.mkv"]).variable_frame_rate


def test_a_late_start_counts_from_the_first_frame(clips):
    info = probe(clips["starts_at_5s.mkv"])
    assert info.start_time == pytest.approx(5.0, abs=0.1)
    assert info.duration == pytest.approx(4.0, abs=1e-3) and info.frame_count == 100 and not info.warnings


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_a_truncated_file_is_sampled_from_its_readable_part_and_says_so(clips, name):
    info, frames = read_frames(clips[name], SamplingRequest(num_frames=8, seek="exact"))
    assert len(info.warnings) == 1 and "truncated" in info.warnings[0] and "of 4.0s" in info.warnings[0]
    assert info.duration < 3.5
    assert max(frames.timestamps) < info.duration
    for a, b in zip(range(8), range(1, 8)):  # a frame given twice is given with its one timestamp
        same = np.array_equal(frames.pixels[a], frames.pixels[b])
        assert same == (frames.timestamps[a] == frames.timestamps[b]) == (frames.indices[a] == frames.indices[b])


def test_whole_files_carry_no_warning(clips):
    assert not probe(clips["h264_bframes.mkv"]).warnings and not probe(clips["faststart.mp4"]).warnings


def test_library_log_noise_stays_quiet(clips, capfd):
    for name in ("av1.mkv", "mpeg2.ts", "truncated.mkv"):
        read_frames(clips[name], SamplingRequest(num_frames=4, seek="exact"))
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_timestamps_that_restart_are_played_one_segment_after_the_other(tmp_path):
    """Two 4 s MPEG-TS recordings joined with ``cat`` (camera files, captures, HLS segments): both
    start at the same timestamps. Reference: the ffmpeg CLI's decode of the file, every frame in
    file order, as players show it. Both modes return that decode's frames at their positions,
    timed as 8 s of video."""
    halves = []
    for number, flip in enumerate((False, True)):  # the second half upside down: no frame of it equals one of the first
        raw = b"".join((index_frame(i, HEIGHT, WIDTH)[::-1] if flip else index_frame(i, HEIGHT, WIDTH)).tobytes()
                       for i in range(FRAMES))
        halves.append(tmp_path / f"{number}.ts")
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
                        "-r", "25", "-i", "pipe:", *X264_BFRAMES, str(halves[-1])], check=True, input=raw)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(half.read_bytes() for half in halves))
    decoded = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(joined), "-fps_mode", "passthrough", "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    reference = np.frombuffer(decoded, np.uint8).reshape(-1, HEIGHT, WIDTH, 3)
    assert len(reference) == 2 * FRAMES
    for seek in ("exact", "keyframe"):
        info, frames = read_frames(joined, SamplingRequest(num_frames=9, seek=seek))
        assert (info.frame_count, info.duration, info.warnings) == (2 * FRAMES, pytest.approx(2 * FRAMES / 25), [])
        assert frames.timestamps == pytest.approx([p / 25 for p in frames.indices])
        assert frames.indices == sorted(frames.indices) and frames.indices[-1] >= FRAMES  # both halves, in order
        if seek == "exact":
            assert frames.indices == [int(t * 25 + 1e-9) for t in frames.requested]
        for got, position in zip(frames.pixels, frames.indices):
            assert np.abs(got.astype(int) - reference[position].astype(int)).mean() < 1.0, (seek, position)

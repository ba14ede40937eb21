"""Opening a video file with PyAV and reading decoded frames from it: what probing and decoding share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av

from ..errors import UserError


def open_video(path: str | Path) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """The container and its first video stream; :class:`UserError` when there is none."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.FFmpegError:
        raise UserError(f"{path} is not a readable video (corrupt, truncated, or not a video file)") from None
    if not container.streams.video:
        kind = "audio only?" if container.streams.audio else "no streams FFmpeg can read"
        container.close()
        raise UserError(f"{path} has no video stream ({kind}); give a file with video")
    return container, container.streams.video[0]


def decoded_frames(container, stream) -> Iterator[av.VideoFrame]:
    """Every frame decoded from the container's current position on; a packet the decoder rejects
    (damaged data) is skipped, and the frames it would have given are simply missing."""
    for packet in container.demux(stream):
        try:
            for frame in packet.decode():
                if frame.pts is not None:
                    yield frame
        except av.error.InvalidDataError:
            continue

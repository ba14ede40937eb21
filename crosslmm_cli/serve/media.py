"""Where a request's video or image comes from, and nothing else: files under ``--media-root``
(no ``..``, no symbolic link leading out, no absolute path elsewhere; refused with 403), ``data:``
URLs for images, and ``http(s)`` URLs only with ``--allow-remote-media`` (size-bounded downloads)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import cv2
import numpy as np

from ..video.reader import output_size, sized_rgb
from .protocol import ApiError


@dataclass(frozen=True)
class Media:
    """One video or image, located: a local file (``path``) or bytes in memory (``data``)."""

    kind: str  # "video" | "image"
    identity: tuple  # changes when the content may have changed: (path, size, mtime) or a content hash
    path: Path | None = None
    data: bytes | None = None
    temporary: bool = False  # a download: delete ``path`` once decoded

    def read_bytes(self) -> bytes:
        return self.data if self.data is not None else self.path.read_bytes()


class MediaResolver:
    def __init__(self, root: Path, allow_remote: bool = False, max_remote_bytes: int = 512 * 2**20):
        self.root = Path(os.path.realpath(root))
        self.allow_remote = allow_remote
        self.max_remote_bytes = max_remote_bytes

    def resolve(self, url: str, kind: str) -> Media:
        """``url`` (``file://``, a path relative to the media root, ``data:`` for images, or
        ``http(s)://`` when allowed) -> :class:`Media`, or :class:`ApiError`."""
        scheme = urlparse(url).scheme.lower() if ":" in url.split("/", 1)[0] else ""
        if scheme == "data":
            if kind != "image":
                raise ApiError(400, "data: URLs are accepted for images only; give a video as a file under the media root")
            data = data_url_bytes(url)
            return Media(kind, ("bytes", hashlib.sha256(data).hexdigest()), data=data)
        if scheme in ("http", "https"):
            return self._download(url, kind)
        if scheme not in ("", "file"):
            raise ApiError(400, f"unsupported URL scheme {scheme!r}; give a file:// URL or a path under the media root")
        path = self.local_path(url)
        stat = path.stat()
        return Media(kind, ("file", str(path), stat.st_size, stat.st_mtime_ns), path=path)

    def local_path(self, reference: str) -> Path:
        """A path (or ``file://`` URL) -> the real path of a regular file under the media root."""
        if reference.lower().startswith("file:"):
            parsed = urlparse(reference)
            if parsed.netloc not in ("", "localhost"):
                raise ApiError(400, f"{reference}: file:// URLs must name a local file (file:///path)")
            raw = unquote(parsed.path)
        else:
            raw = reference
        if "\x00" in raw:
            raise ApiError(400, "a media path must not contain a NUL character")
        if ".." in PurePosixPath(raw).parts:
            raise ApiError(403, f"{reference}: '..' is not allowed in media paths; give the path relative to the "
                                "media root", type="permission_error", code="media_outside_root")
        candidate = Path(raw) if os.path.isabs(raw) else self.root / raw
        resolved = Path(os.path.realpath(candidate))
        if not resolved.is_relative_to(self.root):
            leads_out = Path(os.path.abspath(candidate)).is_relative_to(self.root)
            why = "is a symbolic link leading out of" if leads_out else "is outside"
            raise ApiError(403, f"{reference} {why} the server's media root; the server reads only files under it",
                           type="permission_error", code="media_outside_root")
        if not resolved.is_file():
            what = "a directory" if resolved.is_dir() else "no such file"
            raise ApiError(400, f"{reference}: {what} under the media root", code="media_not_found")
        return resolved

    def _download(self, url: str, kind: str) -> Media:
        if not self.allow_remote:
            raise ApiError(403, f"{url}: remote media are off on this server (start it with --allow-remote-media) ",
                           type="permission_error", code="remote_media_disabled")
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read(self.max_remote_bytes + 1)
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise ApiError(400, f"could not fetch {url}: {getattr(error, 'reason', error)}", code="media_unreachable") from None
        if len(data) > self.max_remote_bytes:
            raise ApiError(413, f"{url} is larger than {self.max_remote_bytes / 2**20:.0f} MB, the most this server fetches",
                           code="media_too_large")
        identity = ("bytes", hashlib.sha256(data).hexdigest())
        if kind == "image":
            return Media(kind, identity, data=data)
        suffix = PurePosixPath(urlparse(url).path).suffix[:8]
        handle, name = tempfile.mkstemp(prefix="crosslmm-media-", suffix=suffix)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return Media(kind, identity, path=Path(name), temporary=True)


def data_url_bytes(url: str) -> bytes:
    """The bytes of a base64 ``data:`` URL."""
    header, _, payload = url.partition(",")
    if not header.endswith(";base64") or not payload:
        raise ApiError(400, "a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the data: URL is not valid base64") from None


def image_frames(media: Media, max_side: int) -> np.ndarray:
    """An image as a one-frame video: (1, H, W, 3) uint8 RGB, the longer side at most ``max_side``."""
    image = cv2.imdecode(np.frombuffer(media.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ApiError(400, "the image could not be decoded (PNG, JPEG, BMP or WebP expected)", code="invalid_media")
    return np.ascontiguousarray(sized_rgb(image, output_size(image.shape[1], image.shape[0], max_side))[None])

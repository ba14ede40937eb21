"""What `crosslmm serve` is started with, checked before the model is loaded."""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from crosslmm import QUANTIZE_MODES

from ..errors import UserError


@dataclass
class ServeSettings:
    model: str = "crosslmm-ov-0.5b"  # preset name, checkpoint directory or hub id
    media_root: Path = Path(".")  # the only folder videos and images are read from
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, every /v1 request needs "Authorization: Bearer <key>"
    served_model_name: str | None = None  # the name clients pass as "model" (default: the --model's last part)
    allow_remote_media: bool = False  # fetch http(s) media URLs
    frames: int = 32  # default frames per video (a request's video_sampling.frames overrides it)
    tokens_per_frame: int | None = None
    quantize: str | None = None  # nf4 | int8 | none; nf4 on CUDA and none on CPU by default
    device: str | None = None
    max_tokens: int = 512  # answer length when a request gives none
    max_queue: int = 32  # requests queued or running; more get 429 with Retry-After
    max_batch_size: int = 16  # answers generated together (continuous batching); a request's n choices count each
    video_cache_mb: float = 4096  # encoded videos kept (least recently used evicted)
    prefix_cache_mb: float = 2048  # prompt keys/values kept for reuse
    max_request_mb: float = 32  # request body (images as data: URLs count)
    max_remote_media_mb: float = 512
    max_prompt_tokens: int | None = None  # default: the model's context
    max_logprobs: int = 20  # the most top_logprobs a request may ask for (OpenAI's limit)
    kv_cache_dtype: str = "auto"  # how encoded videos' cross-attention keys/values are kept (crosslmm.kv_compression)

    def __post_init__(self):
        self.media_root = Path(self.media_root).expanduser()
        if not self.media_root.is_dir():
            raise UserError(f"--media-root {self.media_root}: no such folder; give the folder the videos are in")
        if not 0 < self.port < 65536:
            raise UserError(f"--port must be between 1 and 65535, got {self.port}")
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise UserError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got {self.quantize!r}")
        for flag, value in (("--frames", self.frames), ("--max-tokens", self.max_tokens), ("--max-queue", self.max_queue),
                            ("--max-batch-size", self.max_batch_size)):
            if value < 1:
                raise UserError(f"{flag} must be at least 1, got {value}")
        for flag, value in (("--video-cache-mb", self.video_cache_mb), ("--prefix-cache-mb", self.prefix_cache_mb),
                            ("--max-request-mb", self.max_request_mb), ("--max-remote-media-mb", self.max_remote_media_mb)):
            if not value >= 0:
                raise UserError(f"{flag} must be >= 0, got {value}")
        from ..ask import check_kv_cache_dtype

        check_kv_cache_dtype(self.kv_cache_dtype)
        if self.max_logprobs < 0:
            raise UserError(f"--max-logprobs must be >= 0, got {self.max_logprobs}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise UserError(f"--max-prompt-tokens must be at least 1, got {self.max_prompt_tokens}")
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key is empty; give a key or leave the flag out")
        if self.served_model_name is None:
            self.served_model_name = Path(self.model.rstrip("/")).name or self.model

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    def check_port_free(self) -> None:
        """Refuse a port that is taken, before minutes of model loading."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            raise UserError(f"--host {self.host}: not an address of this machine") from None
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise UserError(f"port {self.port} on {self.host} is in use; stop what holds it or pass --port") from None
                raise UserError(f"cannot listen on {self.host}:{self.port} ({error.strerror})") from None

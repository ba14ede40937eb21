"""Hub kernels stay off unless the user opts in with ``CROSSLMM_HUB_KERNELS=1``.

transformers (5.25 on) depends on the ``kernels`` package: once it is importable, transformers wraps
``Qwen2Attention.forward``, RMSNorm and rotary embeddings in routers that ``kernelize()`` can point
at compiled code downloaded from the hub, and bitsandbytes' CPU backend, on CPUs with AVX512-BF16,
downloads ``kernels-community/quantization-bitsandbytes`` when it is imported. Both run code that the
user never chose, as ``trust_remote_code`` would; so, unless opted in, ``kernels`` is kept from being
imported at all (``sys.modules["kernels"] = None``, Python's own way to block an import): transformers
and bitsandbytes then take their built-in torch code, and nothing is fetched or patched. This must run
before transformers' model modules are imported, which is why ``crosslmm/__init__`` calls it first."""

from __future__ import annotations

import logging
import os
import sys

OPT_IN = "CROSSLMM_HUB_KERNELS"

# bitsandbytes says once, at import, that the kernel it would have downloaded could not be loaded
_BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
_BITSANDBYTES_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def hub_kernels_allowed() -> bool:
    """Whether the user opted in to kernels from the hub (``CROSSLMM_HUB_KERNELS=1``)."""
    return os.environ.get(OPT_IN, "").strip().lower() in {"1", "true", "yes", "on"}


def _drop_blocked_kernel_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_BITSANDBYTES_NOTICE)


def keep_hub_kernels_off() -> None:
    """Block the ``kernels`` package for this process unless the user opted in. A no-op when it was
    already imported (the caller imported transformers' models before crosslmm) or opted in."""
    if hub_kernels_allowed() or "kernels" in sys.modules:
        return
    sys.modules["kernels"] = None
    os.environ.setdefault("USE_HUB_KERNELS", "NO")  # transformers' own switch, for kernelize(use_kernels=...)
    logging.getLogger(_BITSANDBYTES_CPU_LOGGER).addFilter(_drop_blocked_kernel_notice)

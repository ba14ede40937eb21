#!/usr/bin/env bash
# Fetch, on a machine with the package index, the wheels the GPU machine's image lacks (it has torch,
# accelerate, peft, safetensors, opencv, pandas, pyarrow, typer, rich, pytest; no network). About
# 126 MiB in all, over one call's 64 MiB with the working tree: three batches, .whl/a, .whl/b and
# .whl/c, each carried by its own call (README, "GPU suite"). Python 3.12 on x86-64 there.
set -euo pipefail
cd "$(dirname "$0")/.."
fetch() {
    local folder=$1; shift
    mkdir -p "$folder"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d "$folder" "$@"
}
fetch .whl/a bitsandbytes==0.50.2 tokenizers==0.23.3 ffmpeg-python==0.2.0 future==1.0.0
fetch .whl/b av==18.1.0 transformers==5.25.0  # the versions of requirements.lock
fetch .whl/c imageio-ffmpeg==0.6.0 huggingface_hub==2.4.0 safetensors==0.8.0  # transformers 5.25 needs these
# the server and its official client, for the suite's serve step (6.4 MiB)
fetch .whl/c fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 h11==0.16.0 annotated-doc==0.0.7 \
    opentelemetry-api==1.45.3 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    anyio==4.16.0 sniffio==1.3.1 openai==3.63.0 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 jiter==0.19.0 \
    certifi==2026.10.19.post1 idna==3.21 prometheus_client==0.26.0
du -sh .whl/a .whl/b .whl/c

#!/usr/bin/env bash
# Fetch, on a machine with the package index, the wheels the GPU machine's image lacks (it has torch,
# accelerate, peft, safetensors, opencv, pandas, pyarrow, typer, rich, pytest; no network). About
# 120 MiB in all, over one call's 64 MiB with the working tree: three batches, .whl/a, .whl/b and
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
du -sh .whl/a .whl/b .whl/c

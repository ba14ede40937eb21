"""What a compressed cross-attention cache costs in answers (issue 36): `--kv-cache-dtype bf16` and
`int8` against the model's own dtype, on random weights of a real-size preset (gates opened to
tanh(0.5), or the cross-attention would contribute nothing to compare).

For each of ``--videos`` random videos: the exact cache answers greedily (``--tokens`` tokens), then
the prompt and that answer are run again reading each compressed cache, teacher-forced; reported:
the largest logit error at the answer positions (and the logits' own spread, for scale), and the share
of positions whose greedy token is unchanged. Also the cache's size per frame for each dtype, measured
on the memory itself.

    python benchmarks/kv_cache_error.py --preset crosslmm-ov-0.5b --frames 8

writes benchmarks/results/kv_cache_error_<preset>_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from crosslmm.builders import build_random_preset  # noqa: E402
from crosslmm.cross_attention import VisualMemory  # noqa: E402
from crosslmm.kv_compression import compress  # noqa: E402
from tests.helpers import open_gates, random_video  # noqa: E402


def compressed(memory: VisualMemory, mode: str) -> VisualMemory:
    """``memory`` (uncompressed) with its keys/values stored as ``mode`` says."""
    return VisualMemory(pooled=memory.pooled, originals=None, num_frames=memory.num_frames, cache_kv=True,
                        t2v_kv={k: tuple(compress(t, mode) for t in pair) for k, pair in memory.t2v_kv.items()},
                        v2v_kv={k: tuple(compress(t, mode) for t in pair) for k, pair in memory.v2v_kv.items()},
                        memory_tokens=memory.memory_tokens)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="crosslmm-ov-0.5b")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = build_random_preset(args.preset)
    open_gates(model, 0.5)
    eos = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    results = {mode: {"max_logit_error": 0.0, "same_greedy": 0, "positions": 0} for mode in ("bf16", "int8")}
    sizes, spread = {}, 0.0
    for video in range(args.videos):
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]}]
        inputs = processor([messages], videos=[random_video(args.frames, 384, 384, seed=video)])
        exact = model.encode_video_chunks(inputs["pixel_values_videos"][0].split(4), args.frames)
        generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   visual_memory=exact, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                   do_sample=False, eos_token_id=eos)
        prompt = inputs["input_ids"].shape[1]
        reference = model(input_ids=generated, visual_memory=exact).logits[0, prompt - 1:-1]
        spread = max(spread, float(reference.std()))
        for mode in results:
            memory = compressed(exact, mode)
            logits = model(input_ids=generated, visual_memory=memory).logits[0, prompt - 1:-1]
            results[mode]["max_logit_error"] = max(results[mode]["max_logit_error"], float((logits - reference).abs().max()))
            results[mode]["same_greedy"] += int((logits.argmax(-1) == reference.argmax(-1)).sum())
            results[mode]["positions"] += len(reference)
            sizes[mode] = memory.nbytes() - memory.pooled.nbytes
        sizes["auto"] = exact.nbytes() - exact.pooled.nbytes
        print(f"video {video + 1}: {json.dumps(results)}", flush=True)
    report = {
        "preset": f"{args.preset} (random weights, fp32, gates opened to tanh(0.5))",
        "frames": args.frames, "videos": args.videos, "answer_tokens": args.tokens,
        "logit_std": round(spread, 4),
        "modes": {mode: {"max_logit_error": round(r["max_logit_error"], 5),
                         "greedy_agreement": round(r["same_greedy"] / r["positions"], 4)} for mode, r in results.items()},
        "cache_mb_per_frame": {mode: round(size / args.frames / 2**20, 3) for mode, size in sizes.items()},
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}), {os.cpu_count()} cores",
        "command": "python benchmarks/kv_cache_error.py " + " ".join(sys.argv[1:]),
    }
    output = HERE / "results" / f"kv_cache_error_{args.preset}_cpu.json"
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

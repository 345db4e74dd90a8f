"""The roofline of this machine for SmolLM2-135M decoding: what physics allows, measured by small probes.

Probes (each the best of --repeats):
  memory bandwidth   torch.sum over a 1 GiB fp32 buffer (read-only streaming, far larger than the caches)
  peak FLOP/s        torch.mm of two 2048 x 2048 matrices in fp32 and, where bf16 is native (or with
                     --force-bf16), in bf16: an emulated bf16 peak is no bound a one pass would run at

Model accounting (from the model's config and the GGUF file, nothing assumed):
  bytes read per autoregressive token = every weight matrix once (the tied embedding as the output head),
      per weight format: fp32 (transformers), int8 (CTranslate2), Q4_1 + Q8_0 (the GGUF, llama.cpp)
  FLOPs of one pass over B x (N+1) positions = 2 x body weights x positions + attention (causal)
      + 2 x D x V x B x N (the output head, read only at the last N positions)

Bounds: an AR decode of N tokens needs at least N x max(bytes/token / bandwidth, 2 x B x weights / peak);
a one pass at least max(FLOPs / peak, bytes of the weights / bandwidth). Their quotient is the largest
ratio physics allows on this machine (for each weight format of the AR side).

    python -m bench.roofline                       # N = 64, batch 1 and 8
    python -m bench.roofline --measured 64:1:one=35.0,ar=300 ...   # also: how close measured ms come

The last line is `ratio: X`, the largest AR / one-pass ratio allowed at N=64, batch 1, against the
fastest-format (Q4_1) AR decode with the one pass at the peak of the precision 'auto' picks here (bf16 where
native, else fp32; printed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import FORCE_HELP, pick_precision, say_precision


def best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_bandwidth(repeats: int, gib: float = 1.0) -> float:
    """Bytes per second of a streaming read (torch.sum over a buffer far larger than the caches)."""
    x = torch.ones(int(gib * 2**30 / 4), dtype=torch.float32)
    return x.numel() * 4 / best_seconds(lambda: x.sum(), repeats)


def probe_flops(dtype: torch.dtype, repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_seconds(lambda: torch.mm(a, b), repeats)


def model_counts() -> dict:
    """Weights and bytes of SmolLM2-135M from its config and the embedded GGUF's tensor table."""
    import gguf

    from nar.llm import default_gguf_path

    reader = gguf.GGUFReader(default_gguf_path())
    fields = {k: reader.fields[k].parts[-1][0] for k in reader.fields if k.startswith("llama.")
              and len(reader.fields[k].parts[-1]) == 1}
    d, layers = int(fields["llama.embedding_length"]), int(fields["llama.block_count"])
    heads, kv = int(fields["llama.attention.head_count"]), int(fields["llama.attention.head_count_kv"])
    body_w = body_q = head_w = head_q = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        if t.name == "token_embd.weight":  # tied: the output head reads all of it per token
            head_w, head_q = n, int(t.n_bytes)
        elif t.name.startswith("blk.") and len(t.shape) == 2:
            body_w, body_q = body_w + n, body_q + int(t.n_bytes)
    vocab = head_w // d
    return {"d": d, "layers": layers, "heads": heads, "kv_heads": kv, "vocab": vocab, "body_weights": body_w,
            "head_weights": head_w, "bytes_per_token": {
                "fp32 (transformers)": 4 * (body_w + head_w),
                "int8 (CTranslate2)": body_w + head_w,  # one byte a weight, scales not counted
                "Q4_1 + Q8_0 head (GGUF, llama.cpp)": body_q + head_q}}


def one_pass_flops(c: dict, b: int, n: int) -> float:
    t = n + 1  # [bos, e, m x (N-1)]
    body = 2 * c["body_weights"] * b * t
    attn = 2 * 2 * c["layers"] * b * (t * (t + 1) / 2) * c["d"]  # QK^T and AV over the causal half
    head = 2 * c["head_weights"] * b * n
    return body + attn + head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measured", nargs="*", default=[],
                    help="N:B:name=ms,... measured latencies to set against the bounds")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    auto, why_auto = pick_precision("auto", "cpu")
    bf16, why_bf16 = pick_precision("bf16", "cpu", force_bf16=args.force_bf16)
    say_precision("fp32 peak probe", "fp32", "on purpose")
    say_precision("bf16 peak probe", bf16, why_bf16)
    say_precision("the one pass of the headline bound", auto, why_auto)
    bw = probe_bandwidth(args.repeats)
    peak = {"fp32": probe_flops(torch.float32, args.repeats)}
    if bf16:
        peak["bf16"] = probe_flops(torch.bfloat16, args.repeats)
    c = model_counts()
    print(f"threads {torch.get_num_threads()}  bandwidth {bw / 1e9:.1f} GB/s  "
          + "  ".join(f"peak {p} {f / 1e9:.0f} GFLOP/s" for p, f in peak.items()))
    print(f"weights: body {c['body_weights'] / 1e6:.1f} M, "
          f"output head (tied embedding) {c['head_weights'] / 1e6:.1f} M")
    for k, v in c["bytes_per_token"].items():
        print(f"  bytes read per AR token, {k}: {v / 1e6:.1f} MB")
    result = {"bandwidth_Bps": bw, "peak_flops": peak, "headline_precision": auto, "model": c, "cells": []}
    measured = {}
    for spec in args.measured:
        nb, rest = spec.rsplit(":", 1)
        for kv in rest.split(","):
            name, ms = kv.split("=")
            measured.setdefault(nb, {})[name] = float(ms) / 1e3
    headline = None
    q4 = "Q4_1 + Q8_0 head (GGUF, llama.cpp)"
    for b in [int(x) for x in args.batch.split(",")]:
        n = args.n
        flops = one_pass_flops(c, b, n)
        weight_bytes = c["bytes_per_token"]
        print(f"\nN={n} batch={b}: one pass {flops / 1e9:.1f} GFLOP")
        one_min = {p: max(flops / peak[p], weight_bytes[q4] / bw) for p in peak}
        for p, s in one_min.items():
            print(f"  one pass lower bound at the {p} peak: {s * 1e3:.1f} ms")
        fastest = max(peak.values())  # the AR side's compute bound at the best peak measured here
        for fmt, nbytes in weight_bytes.items():
            ar_min = n * max(nbytes / bw, 2 * b * (c["body_weights"] + c["head_weights"]) / fastest)
            print(f"  AR lower bound, {fmt}: {ar_min * 1e3:.1f} ms ({nbytes / bw * 1e3:.2f} ms per token); largest "
                  "ratio vs one pass " + ", ".join(f"at {p} peak {ar_min / s:.1f}" for p, s in one_min.items()))
            result["cells"].append({"n": n, "batch": b, "format": fmt, "ar_min_s": ar_min, "one_min_s": one_min,
                                    "flops": flops})
            if fmt == q4 and b == 1:
                headline = ar_min / one_min[auto]
        for name, sec in measured.get(f"{n}:{b}", {}).items():
            print(f"  measured {name}: {sec * 1e3:.1f} ms = {flops / sec / 1e9:.0f} GFLOP/s if one pass, "
                  f"{n * weight_bytes[q4] / sec / 1e9:.1f} GB/s if an AR decode of Q4_1 weights")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(f"ratio: {headline:.1f}")


if __name__ == "__main__":
    main()

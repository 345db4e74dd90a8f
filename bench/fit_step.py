"""Seconds per fitting step (forward + backward + AdamW) at a fixed batch shape, per engine setting.

The cost of one optimiser step of `nar.fit` for B slots of N tokens, with nar's own loss function, for:
fp32 (the baseline); bf16 autocast over fp32 weights (nar's default where bf16 is native: precision 'auto'); the
LLM's weights stored in bf16 (no per-step casts); 1 instead of 2 threads and torch.compile of the LLM, both at the
precision 'auto' picks here. The bf16 settings run only where bf16 is native (`nar.llm.native_bf16`) or with
--force-bf16: emulated bf16 is 6-70x slower than fp32 and would only time the emulation. Steps per text are
unaffected by these settings except through float rounding, so s/step is the figure that matters here. Median
over --steps steps after --warmup steps.

    python -m bench.fit_step                 # B=8, N=16, every setting (compile takes a few minutes)
    python -m bench.fit_step --quick         # without torch.compile, fewer steps

The last line is `ratio: X`: fp32 s/step over the fastest setting's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench import FORCE_HELP, pick_precision, say_precision
from nar.llm import Layout, load_llm
from nar.losses import reconstruction_loss


def seconds_per_step(llm, precision: str, b: int, n: int, steps: int, warmup: int) -> float:
    g = torch.Generator().manual_seed(0)
    E = (torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std).requires_grad_(True)
    M = (torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std).requires_grad_(True)
    targets = [torch.randint(0, llm.model.config.vocab_size, (n,), generator=g) for _ in range(b)]
    opt = torch.optim.AdamW([E, M], lr=1e-2, betas=(0.9, 0.9), weight_decay=0.01)
    layout = Layout(llm.resolve_prefix("bos"), "e")
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        rec = reconstruction_loss(llm, E, M, targets, layout, precision)
        opt.zero_grad()
        rec.ce.sum().backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 15; 8 with --quick)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="no torch.compile, 8 steps")
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    args.steps = args.steps or (8 if args.quick else 15)
    rows = {}

    def report(name, s):
        rows[name] = s
        print(f"{name:42} {s:7.3f} s/step", flush=True)

    torch.set_num_threads(2)
    llm = load_llm(device="cpu")
    auto, why_auto = pick_precision("auto", llm.device)
    bf16, why_bf16 = pick_precision("bf16", llm.device, force_bf16=args.force_bf16)
    print(f"B={args.batch} N={args.n}, median of {args.steps} steps after {args.warmup} warm-up")
    say_precision("fp32, 2 threads", "fp32", "on purpose: the baseline")
    say_precision("bf16 autocast, 2 threads", bf16, why_bf16)
    say_precision(f"{auto}, 1 thread", auto, why_auto)
    say_precision("bf16 weights (no autocast), 2 threads", bf16, why_bf16)
    if not args.quick:
        say_precision(f"torch.compile + {auto}, 2 threads", auto, why_auto)
    report("fp32, 2 threads", seconds_per_step(llm, "fp32", args.batch, args.n, args.steps, args.warmup))
    if bf16:
        report("bf16 autocast, 2 threads", seconds_per_step(llm, "bf16", args.batch, args.n, args.steps, args.warmup))
    torch.set_num_threads(1)
    report(f"{auto}, 1 thread", seconds_per_step(llm, auto, args.batch, args.n, args.steps, args.warmup))
    torch.set_num_threads(2)
    if bf16:
        bf = load_llm(device="cpu", dtype="bfloat16")
        report("bf16 weights (no autocast), 2 threads",
               seconds_per_step(bf, "fp32", args.batch, args.n, args.steps, args.warmup))
        del bf
    if not args.quick:
        t0 = time.perf_counter()
        llm.model.forward = torch.compile(llm.model.forward, dynamic=False)
        try:
            report(f"torch.compile + {auto}, 2 threads",
                   seconds_per_step(llm, auto, args.batch, args.n, args.steps, args.warmup))
            print(f"  (compilation included, that setting took {time.perf_counter() - t0:.0f} s in all)")
        except Exception as exc:  # noqa: BLE001 - report, do not hide: compile support varies by platform
            print(f"torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}")
    print(f"ratio: {rows['fp32, 2 threads'] / min(rows.values()):.2f}")


if __name__ == "__main__":
    main()

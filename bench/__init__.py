"""Benchmarks: `python -m bench.NAME [--quick]` from the repository root; results in docs/BENCHMARKS.md.

Each bench prints ratios against a baseline measured in the same run. What they share is how a path's precision
is chosen: as nar's 'auto' chooses it (`nar.llm.FrozenLLM.precision`: bf16 where the device computes bfloat16
natively, `nar.llm.native_bf16`, else fp32), with one printed line per path, `precision: fp32 (auto: no native
bf16 on this CPU, AVX2) - PATH`. Emulated bf16 (an AVX2-only CPU) is 6-70x slower than fp32 there, so a bench
that compares bf16 with fp32 on purpose skips its bf16 paths on such hardware unless `--force-bf16` is given.
"""

from __future__ import annotations

FORCE_HELP = "also time the bf16 paths where bf16 is not native (emulated: 6-70x slower than fp32, minutes per path)"


def hardware(device="cpu") -> tuple[bool, str]:
    """(whether `device` computes bf16 natively, a few words naming it: 'this CPU, AVX2', 'this GPU')."""
    import torch

    from nar.llm import native_bf16

    dev = torch.device(device)
    where = f"this CPU, {torch.backends.cpu.get_cpu_capability()}" if dev.type == "cpu" else f"this {dev.type}"
    return native_bf16(dev), where.replace("this cuda", "this GPU")


def pick_precision(asked: str, device="cpu", *, force_bf16: bool = False) -> tuple[str | None, str]:
    """(the precision a path runs, why): 'auto' resolves as nar resolves it; 'fp32' runs as asked; 'bf16' asked on
    purpose runs where it is native or with force_bf16, else (None, why it is skipped)."""
    native, where = hardware(device)
    if asked == "auto":
        return ("bf16", f"auto: native bf16 on {where}") if native else ("fp32", f"auto: no native bf16 on {where}")
    if asked == "bf16" and not native:
        if force_bf16:
            return "bf16", f"forced by --force-bf16: emulated on {where}, slow"
        return None, f"skipped: no native bf16 on {where}; --force-bf16 times the emulation"
    if asked == "bf16":
        return "bf16", f"compared on purpose; native on {where}"
    return asked, "on purpose"


def say_precision(path: str, precision: str | None, why: str) -> None:
    """The one line per path: `precision: fp32 (auto: no native bf16 on this CPU, AVX2) - PATH`."""
    print(f"precision: {precision or 'none'} ({why}) - {path}", flush=True)

"""What refinement passes cost: the one-pass draft plus k Jacobi passes vs greedy AR decoding, batch 1.

Same engine and precision on both sides (torch, the frozen SmolLM2, KV cache of the prompt, at the precision
'auto' picks here: bf16 autocast where bf16 is native, else fp32; printed): AR = `model.generate` greedy,
exactly N new tokens; refine k = an in-context encoder's draft (source -> encoder -> one pass) followed by k
Jacobi passes (`nar.refine.jacobi`, prompt cached once, then N-1 draft tokens per pass). Quality per k is
`python -m studies.refine_study`'s; this bench only times. Prompts: the chat-formatted story prompts of
out/data/story-dev.jsonl (`make story-data`); encoder: --checkpoint (default out/study/story-ctx/last).
Median of --repeats over --prompts prompts, one at a time, after a warm-up. Alone on the machine only.

    python -m bench.refine_speed [--n 16] [--prompts 8] [--repeats 3]

Last line: `ratio: X` = AR ms / (draft + 1 refinement pass) ms at N.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench import pick_precision, say_precision
from nar.decode import generate_greedy
from nar.encoder import Encoder
from nar.generate import encoder_outputs
from nar.llm import load_llm
from nar.pairs import prompt_ids
from nar.refine import jacobi


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="out/study/story-ctx/last")
    ap.add_argument("--data", default="out/data/story-dev.jsonl")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--passes", default="1,2,4,8,16")
    a = ap.parse_args()
    torch.manual_seed(0)
    llm = load_llm()
    enc = Encoder.from_pretrained(a.checkpoint, llm=llm)
    sources = [json.loads(x)["source"] for x in Path(a.data).read_text().splitlines()[: a.prompts]]
    n, ks = a.n, [int(k) for k in a.passes.split(",")]
    prec, why = pick_precision("auto", llm.device)
    for path in ("AR transformers", "draft (encoder + one pass)", "refinement passes"):
        say_precision(path, prec, why)
    ar_name = f"AR transformers {prec}"
    cells: dict[str, list[float]] = {ar_name: [], "draft (encoder + one pass)": []}
    cells.update({f"draft + {k} refinement passes": [] for k in ks})
    for s in sources:
        p = prompt_ids(llm, s, chat=True)

        def draft():
            d = encoder_outputs(enc, llm, [s], enc.layout, prec, False)[0]
            return (d + [llm.eos_id] * n)[:n]

        def ar():
            with llm.autocast(prec):
                return generate_greedy(llm, [p], n, stop_at_eos=False)

        cells[ar_name].append(median_ms(ar, a.repeats))
        cells["draft (encoder + one pass)"].append(median_ms(draft, a.repeats))
        for k in ks:
            cells[f"draft + {k} refinement passes"].append(median_ms(
                lambda k=k: jacobi(llm, [p], [draft()], k, precision=prec, stop_when_fixed=False), a.repeats))
    ar_ms = statistics.median(cells[ar_name])
    print(f"N = {n}, batch 1, {len(sources)} prompts, torch {prec}, {torch.get_num_threads()} threads\n")
    print("| path | ms (median over prompts) | AR / this |\n|---|---|---|")
    for name, v in cells.items():
        ms = statistics.median(v)
        print(f"| {name} | {ms:.1f} | {ar_ms / ms:.2f} |")
    one = statistics.median(cells[f"draft + {ks[0]} refinement passes"])
    print(f"\nratio: {ar_ms / one:.2f}")


if __name__ == "__main__":
    main()

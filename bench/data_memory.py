"""Does the training data's memory grow with the corpus? Peak RSS of `nar train-encoder` on a large and a small file.

Two text files of generated sentences (random words of the test vocabulary, 4-10 words each) are written, one of
--big lines (default 2,000,000) and one of --small lines (10,000); each trains --steps steps in a fresh process
(the tiny random Llama of the tests, so that the data's share of the memory is not hidden under a 135M-parameter
model's: a real LLM adds the same constant to both), with the datasets cache in a temporary folder. The child
reports its own peak RSS (`resource.getrusage`). The rows are memory-mapped Arrow and the one pass over the data
keeps 2 bytes a row, so the ratio stays near 1.

    python -m bench.data_memory [--quick] [--big 2000000] [--small 10000] [--steps 5]

Last line: `ratio: X` = peak RSS on the big file / peak RSS on the small one (the bar: <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import pick_precision, say_precision

CHILD = """
import json, resource, sys, time
from nar.config import EncoderConfig, TrainConfig
from nar.llm import load_llm
from nar.train import train_encoder
data, run, model, steps, precision = sys.argv[1:6]
t0 = time.perf_counter()
res = train_encoder(TrainConfig(data=(data,), run_dir=run, steps=int(steps), batch_size=16, val_every=10**6,
                                save_every=10**6, val_limit=8, precision=precision),
                    EncoderConfig(d_model=64, layers=1), llm=load_llm(model, device="cpu"), show_progress=False)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": round(time.perf_counter() - t0, 1), "rows": res["data"]["read"]}))
"""


def write_lines(path: Path, n: int, words: list[str], seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) + "\n")


def run(data: Path, tmp: Path, model: Path, steps: int, precision: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp / f"cache-{data.stem}")}
    out = subprocess.run([sys.executable, "-c", CHILD, str(data), str(tmp / f"run-{data.stem}"), str(model),
                          str(steps), precision], env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"training on {data.name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=2_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="--big 200000: the same comparison in about a minute")
    args = ap.parse_args()
    if args.quick:
        args.big = 200_000
    from tests.conftest import TINY_CORPUS, build_tiny_llm

    precision, why = pick_precision("auto")
    say_precision("train-encoder steps (tiny Llama)", precision, why)
    words = sorted({w for t in TINY_CORPUS for w in t.split()})
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = build_tiny_llm(tmp / "tiny")
        rows = {}
        for name, n in (("small", args.small), ("big", args.big)):
            path = tmp / f"{name}.txt"
            t0 = time.perf_counter()
            write_lines(path, n, words, seed=n)
            made = time.perf_counter() - t0
            rows[name] = {**run(path, tmp, model, args.steps, precision), "lines": n,
                          "file_mb": round(path.stat().st_size / 2**20, 1), "write_s": round(made, 1)}
            print(json.dumps({name: rows[name]}), flush=True)
    ratio = rows["big"]["peak_rss_mb"] / rows["small"]["peak_rss_mb"]
    print(f"peak RSS: {rows['big']['peak_rss_mb']:.0f} MB on {args.big:,} lines, {rows['small']['peak_rss_mb']:.0f} MB "
          f"on {args.small:,} lines")
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()

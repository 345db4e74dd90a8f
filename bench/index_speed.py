"""FAISS over proto-token space at scale: build time, query time, memory and recall@10, flat vs IVF vs HNSW.

Synthetic vectors of the LLM's width (576 for SmolLM2-135M), L2-normalised, drawn from a mixture of
Gaussian clusters (real proto-token corpora are clustered by topic; uniform random vectors are the
worst case for approximate search and say little). Queries are fresh draws from the same mixture.
Recall@10 of IVF and HNSW is measured against the exact flat index's top 10. Indexes are built with
nar's own `nar.index.make_faiss_index` (what `nar index build` uses). No LLM runs here: every path is FAISS
over fp32 vectors, whatever the hardware (printed as `precision: fp32 (...)`).

    python -m bench.index_speed --quick          # 10k and 100k vectors (< 5 min on 2 cores)
    python -m bench.index_speed                  # 10k, 100k and 1M (HNSW at 1M takes ~3 min to build on 2 cores)
    python -m bench.index_speed --sizes 1000000 --nprobe 16,64 --ef-search 64,128,256   # recall vs speed

The last line is `ratio: X`: flat over HNSW query time at the largest size run, at the first efSearch
(higher = HNSW faster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench import say_precision
from nar.index import make_faiss_index


def mixture(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--quick", action="store_true", help="sizes 10k and 100k")
    ap.add_argument("--dim", type=int, default=576, help="vector width (SmolLM2-135M: 576)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.03, help="per-coordinate std around a cluster centre")
    ap.add_argument("--nprobe", default="16", help="IVF lists probed; a comma list queries the same index at each "
                                                   "(the first is the headline)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-search", default="64", help="HNSW efSearch; a comma list queries the same graph at each "
                                                      "(the first is the headline)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.sizes = "10000,100000"
    nprobes = [int(v) for v in str(args.nprobe).split(",")]
    efs = [int(v) for v in str(args.ef_search).split(",")]
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32) / np.sqrt(args.dim)
    queries = mixture(args.queries, args.dim, centres, rng, args.spread)
    print(f"dim {args.dim}, {args.clusters} clusters, spread {args.spread}, {args.queries} queries, k=10, "
          f"threads {args.threads}; IVF nprobe {nprobes}; HNSW M {args.hnsw_m} efSearch {efs}")
    for kind in ("flat", "ivf", "hnsw"):
        say_precision(f"FAISS {kind}", "fp32", "FAISS indexes fp32 vectors; no LLM pass, nothing to choose")
    print(f"{'n':>8} {'kind':5} {'setting':>12} {'build s':>8} {'query ms/q':>10} {'memory MB':>9} {'recall@10':>9}")
    last = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        x = mixture(n, args.dim, centres, rng, args.spread)
        truth = None
        for kind in ("flat", "ivf", "hnsw"):
            t0 = time.perf_counter()
            index = make_faiss_index(x, kind, nprobe=nprobes[0], hnsw_m=args.hnsw_m, ef_search=efs[0])
            build = time.perf_counter() - t0
            mem = faiss.serialize_index(index).nbytes / 2**20
            settings = {"flat": [("-", None)], "ivf": [(f"nprobe {v}", v) for v in nprobes],
                        "hnsw": [(f"efSearch {v}", v) for v in efs]}[kind]
            for j, (label, value) in enumerate(settings):
                if kind == "ivf":
                    faiss.extract_index_ivf(index).nprobe = value
                elif kind == "hnsw":
                    index.hnsw.efSearch = value
                t0 = time.perf_counter()
                _, found = index.search(queries, 10)
                query = (time.perf_counter() - t0) / len(queries)
                if kind == "flat":
                    truth = found
                if j == 0:
                    last[kind] = query
                built = f"{build:.2f}" if j == 0 else "-"  # one build, queried at each setting
                print(f"{n:>8} {kind:5} {label:>12} {built:>8} {query * 1e3:>10.3f} {mem:>9.0f} "
                      f"{recall_at(found, truth):>9.3f}", flush=True)
            del index
        del x
    print(f"ratio: {last['flat'] / last['hnsw']:.2f}")


if __name__ == "__main__":
    main()

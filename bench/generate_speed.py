"""One-pass decoding vs autoregressive greedy decoding of the same number of tokens, same model, same run.

One pass: the frozen LLM reads [bos][e][m x (N-1)] once and takes the argmax at every position.
Autoregressive: `model.generate` greedy with KV cache from the same one-token prompt, forced to emit
exactly N new tokens (min_new_tokens = max_new_tokens = N). "nar generate" adds the encoder: a batch of
source sentences -> MiniLM backbone + proto-token head -> (e, m) -> the same one pass (the head is
untrained here: latency does not depend on weight values; N is fixed to the cell's N).
Latency is the median of --repeats runs after one warm-up; the proto-tokens are random (the cost of a
forward pass does not depend on values).

    python bench/generate_speed.py                   # batch 1, N = 32 and 64
    python bench/generate_speed.py --full            # N in {16, 32, 64, 128} x batch in {1, 8}
    python bench/generate_speed.py --quick           # batch 1, N = 32, 3 repeats

The last line is `ratio: X`, the geometric mean over cells of AR latency / one-pass latency.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nar.config import EncoderConfig  # noqa: E402
from nar.decode import decode_ids, generate_greedy  # noqa: E402
from nar.encoder import Encoder, load_backbone  # noqa: E402
from nar.llm import Layout, load_llm  # noqa: E402

SOURCES = ["What is the capital of France?", "Name three primary colours.",
           "Write one sentence about the sea.", "How many legs does a spider have?",
           "Give me a synonym for happy.", "What do bees make?", "Describe a cat in five words.",
           "Why is the sky blue?"]


def nar_generate_fn(enc: Encoder, llm, layout: Layout, b: int, n: int):
    """The `nar generate` path for a batch of b sources at a fixed output length n."""
    sources = (SOURCES * (b // len(SOURCES) + 1))[:b]

    def fn():
        with torch.no_grad():
            e, m, _ = enc(sources)
        return decode_ids(llm, e.float(), m.float(), [n] * b, layout, batch_size=b)
    return fn


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", default="32,64", help="comma-separated output lengths")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="N in {16,32,64,128} x batch in {1,8}")
    ap.add_argument("--quick", action="store_true", help="batch 1, N=32, 3 repeats")
    args = ap.parse_args()
    if args.full:
        args.n, args.batch = "16,32,64,128", "1,8"
    if args.quick:
        args.n, args.batch, args.repeats = "32", "1", 3
    torch.set_num_threads(args.threads)
    llm = load_llm(args.model, device=args.device)
    bos = llm.resolve_prefix("bos")
    layout = Layout(bos, "e")
    g = torch.Generator().manual_seed(0)
    print(f"model {llm.fingerprint}  device {llm.device}  threads {torch.get_num_threads()}  "
          f"repeats {args.repeats}")
    backbone, tokenizer, _ = load_backbone(EncoderConfig().backbone)
    enc = Encoder(EncoderConfig(), backbone, tokenizer, llm.hidden_size, meta={}).eval()
    print(f"{'N':>4} {'batch':>5} {'one-pass ms':>11} {'nar gen ms':>10} {'AR ms':>9} {'one-pass tok/s':>14} "
          f"{'AR tok/s':>9} {'AR/one-pass':>11} {'AR/nar gen':>10}")
    ratios = []
    for b in [int(x) for x in args.batch.split(",")]:
        for n in [int(x) for x in args.n.split(",")]:
            e = torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std
            m = torch.randn(b, llm.hidden_size, generator=g) * llm.embed_std
            one = median_seconds(lambda: decode_ids(llm, e, m, [n] * b, layout, batch_size=b), args.repeats)
            full = median_seconds(nar_generate_fn(enc, llm, layout, b, n), args.repeats)
            ar = median_seconds(lambda: generate_greedy(llm, [list(bos)] * b, n, stop_at_eos=False), args.repeats)
            ratios.append(ar / one)
            print(f"{n:>4} {b:>5} {one * 1e3:>11.1f} {full * 1e3:>10.1f} {ar * 1e3:>9.1f} {b * n / one:>14.0f} "
                  f"{b * n / ar:>9.0f} {ar / one:>11.1f} {ar / full:>10.1f}", flush=True)
    print(f"ratio: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()

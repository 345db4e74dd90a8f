"""What one encoder training step costs under fp32 and under bf16 autocast, in the same process.

The step is the shipped recipe's (`make stsb-autoencoder`): sum head d 384 x 3 reading the frozen LLM's
token embeddings, a batch of --batch texts of <= 16 tokens (nar/assets/texts.jsonl cut to their first 15
tokens, so every batch is full length: the worst case of the study's data), the reconstruction CE through one
pass of the frozen SmolLM2 and the length head, backward, clip, AdamW. Median seconds over --steps steps
after --warmup steps, per precision. bf16 is timed only where it is native (`nar.llm.native_bf16`): emulated
bf16 is ~27x slower (docs/BENCHMARKS.md section 13) and would only time the emulation. Alone on the machine
only.

    python bench/encoder_step.py [--batch 16] [--steps 10] [--warmup 2]

Last line: `ratio: X` = fp32 s/step / bf16 s/step (steps per hour gained by bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nar.config import EncoderConfig, TrainConfig  # noqa: E402
from nar.data import Pairs, bundled_texts  # noqa: E402
from nar.encoder import Encoder, make_reader  # noqa: E402
from nar.llm import Layout, load_llm, native_bf16  # noqa: E402
from nar.train import train_step  # noqa: E402


def time_steps(llm, batch: Pairs, layout: Layout, precision: str, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    ecfg = EncoderConfig(head="sum", reader_layer=0, d_model=384, layers=3)
    tcfg = TrainConfig(run_dir="unused", precision=precision)
    enc = Encoder(ecfg, make_reader(ecfg, llm), llm.hidden_size, {}).to(llm.device)
    emb = llm.model.get_input_embeddings().weight.detach().float()
    enc.init_outputs(emb.mean(0), emb.mean(0))
    params = enc.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=1e-3)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        train_step(enc, llm, batch, layout, tcfg, opt, params)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    llm = load_llm()
    texts = [r["text"] for r in bundled_texts()][: args.batch]
    ids = [llm.encode(t)[:15] for t in texts]
    sources = [llm.tokenizer.decode(x) for x in ids]
    batch = Pairs([str(i) for i in range(len(ids))], sources, sources, ids)
    layout = Layout(prefix_ids=llm.resolve_prefix("bos"))  # what train-encoder trains for on a data file
    rows = {"fp32": time_steps(llm, batch, layout, "fp32", args.steps, args.warmup)}
    if native_bf16(llm.device):
        rows["bf16"] = time_steps(llm, batch, layout, "bf16", args.steps, args.warmup)
    print(json.dumps({"device": str(llm.device), "threads": torch.get_num_threads(), "batch": args.batch,
                      "tokens": 15, "s_per_step": {k: round(v, 3) for k, v in rows.items()}}))
    if "bf16" in rows:
        print(f"ratio: {rows['fp32'] / rows['bf16']:.2f}")
    else:
        print("ratio: n/a (bf16 is not native on this device; only fp32 timed)")


if __name__ == "__main__":
    main()

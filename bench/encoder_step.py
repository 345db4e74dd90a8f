"""What one encoder training step costs under fp32 and under bf16 autocast, in the same process.

The step is the shipped recipe's (`make stsb-autoencoder`): the sum head, d 384 x 3, reading the frozen LLM's
token embeddings, a batch of --batch texts of <= 16 tokens (nar/assets/texts.jsonl cut to their first 15
tokens, so every batch is full length: the worst case of the study's data), the reconstruction CE through one
pass of the frozen SmolLM2 and the length head, backward and AdamW (`nar.train.train_step`). Median seconds over
--steps steps after --warmup steps, per precision. fp32 is the baseline; bf16 is timed only where it is native
(`nar.llm.native_bf16`), or with --force-bf16: emulated bf16 is ~27x slower (docs/BENCHMARKS.md, "bf16 on a CPU
without native bf16") and would only time the emulation. Alone on the machine only.

    python -m bench.encoder_step [--batch 16] [--steps 10] [--warmup 2] [--force-bf16]

Last line: `ratio: X` = fp32 s/step / bf16 s/step (steps per hour gained by bf16).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench import FORCE_HELP, pick_precision, say_precision
from nar.config import EncoderConfig, TrainConfig
from nar.data import Pairs, bundled_texts
from nar.encoder import Encoder, make_reader
from nar.llm import Layout, load_llm
from nar.train import train_step


def time_steps(llm, batch: Pairs, layout: Layout, precision: str, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    ecfg = EncoderConfig(reader_layer=0, d_model=384, layers=3)
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
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    llm = load_llm()
    texts = [r["text"] for r in bundled_texts()][: args.batch]
    ids = [llm.encode(t)[:15] for t in texts]
    sources = [llm.tokenizer.decode(x) for x in ids]
    batch = Pairs([str(i) for i in range(len(ids))], sources, sources, ids)
    layout = Layout(prefix_ids=llm.resolve_prefix("bos"))  # what train-encoder trains for on a data file
    say_precision("encoder step, the baseline", "fp32", "on purpose: the baseline")
    bf16, why = pick_precision("bf16", llm.device, force_bf16=args.force_bf16)
    say_precision("encoder step, bf16 autocast", bf16, why)
    rows = {"fp32": time_steps(llm, batch, layout, "fp32", args.steps, args.warmup)}
    if bf16:
        rows["bf16"] = time_steps(llm, batch, layout, "bf16", args.steps, args.warmup)
    print(json.dumps({"device": str(llm.device), "threads": torch.get_num_threads(), "batch": args.batch,
                      "tokens": 15, "s_per_step": {k: round(v, 3) for k, v in rows.items()}}))
    if "bf16" in rows:
        print(f"ratio: {rows['fp32'] / rows['bf16']:.2f}")
    else:
        print(f"ratio: n/a (bf16 {why}; only fp32 timed)")


if __name__ == "__main__":
    main()

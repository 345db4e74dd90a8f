"""Amortised fitting: do new texts converge faster when they start where the corpus says they should?

Copies an existing corpus once per mode and appends the same new texts to each copy with `nar build-corpus`'s
code path:
  none       the corpus's own init (`--warm-start none`);
  neighbour  e and m start at the proto-tokens of the nearest written row in teacher space;
  encoder    e and m start at an encoder's prediction for the text (`--warm-start encoder`); the encoder is
             `--encoder PATH`, or one trained here on the base corpus (`--encoder-steps`; its training time
             is printed, not charged to the fit: it is paid once per corpus, not per text).
Every other setting is the base corpus's (read from its manifest), except the precision of the fits and of the
encoder trained here: `--precision`, 'auto' by default (bf16 where the hardware computes it natively, else fp32;
printed per path). Prints converged, median steps, mean accuracy and converged texts per hour for each mode.

    python -m bench.warm_start --base runs/c64-default              # texts 65-96 of nar/assets/texts.jsonl
    python -m bench.warm_start --base runs/c64-default --quick      # 8 new texts, 150-step cap

The base corpus is built first if it does not exist (`--base-texts` rows of nar/assets/texts.jsonl).
The last line is `ratio: X`: converged texts per hour of the best warm start over `none`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import FORCE_HELP, pick_precision, say_precision
from nar import corpus
from nar.assets import path as asset_path
from nar.build import build_corpus
from nar.config import BuildConfig, EncoderConfig, FitConfig, TrainConfig
from nar.llm import load_llm
from nar.teacher import load_teacher
from nar.train import train_encoder

MODES = ("none", "neighbour", "encoder")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, default=Path("runs/c64-default"))
    ap.add_argument("--base-texts", type=int, default=64, help="rows of nar/assets/texts.jsonl in a new base corpus")
    ap.add_argument("--new-offset", type=int, default=64, help="first row of nar/assets/texts.jsonl to append")
    ap.add_argument("--new", type=int, default=32, help="how many rows to append")
    ap.add_argument("--max-steps", type=int, default=None, help="step cap (default: the base corpus's)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated of: {', '.join(MODES)}")
    ap.add_argument("--encoder", type=Path, default=None, help="encoder for the 'encoder' mode (default: train one)")
    ap.add_argument("--encoder-steps", type=int, default=300, help="steps of the encoder trained here")
    ap.add_argument("--quick", action="store_true", help="8 new texts, 150-step cap, 150 encoder steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="of every fit and of the encoder trained here ('auto': bf16 where native, else fp32)")
    ap.add_argument("--force-bf16", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    if args.quick:
        args.new, args.max_steps, args.encoder_steps = 8, 150, 150
    modes = [m for m in args.modes.split(",") if m]
    if bad := sorted(set(modes) - set(MODES)):
        sys.exit(f"--modes: unknown {bad}; choose from {', '.join(MODES)}")
    if "none" not in modes:
        sys.exit("--modes must include 'none' (the baseline)")
    torch.set_num_threads(args.threads)
    llm, teacher = load_llm(device="cpu"), load_teacher()
    precision, why = pick_precision(args.precision, llm.device, force_bf16=args.force_bf16)
    if precision is None:
        sys.exit(f"--precision bf16: {why}")
    say_precision("fitting (base corpus and every mode)", precision, why)
    if "encoder" in modes and args.encoder is None:
        say_precision("the encoder trained here", precision, why)
    texts = asset_path("texts.jsonl")
    if not (args.base / "manifest.json").is_file():
        print(f"building the base corpus {args.base} ({args.base_texts} texts)", flush=True)
        build_corpus(BuildConfig(input=str(texts), out=str(args.base), limit=args.base_texts),
                     FitConfig(max_tokens=32, precision=precision), llm=llm, teacher=teacher, show_progress=False)
    man = corpus.read_manifest(args.base)
    fdict = {**man["fit_config"], "precision": precision}
    if args.max_steps:
        fdict = {**fdict, "max_steps": args.max_steps}
    fcfg = FitConfig.from_dict(fdict)
    rows = [json.loads(x) for x in texts.read_text().splitlines() if x.strip()]
    new = rows[args.new_offset:args.new_offset + args.new]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "new.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in new))
        encoder = args.encoder
        if "encoder" in modes and encoder is None:
            encoder = Path(tmp) / "trained-encoder"
            t0 = time.perf_counter()
            val = train_encoder(TrainConfig(data=(str(args.base),), run_dir=str(encoder), steps=args.encoder_steps,
                                            val_every=max(50, args.encoder_steps // 4), precision=precision),
                                EncoderConfig(), llm=llm, show_progress=False)
            held = (f", val token accuracy {val['val']['token_acc']:.3f} (best {val['best_val_token_acc']:.3f})"
                    if val.get("val") else "")
            print(f"encoder trained on {args.base}: {args.encoder_steps} steps in {time.perf_counter() - t0:.0f} s; "
                  f"{val.get('train_texts')} train / {val.get('val_texts')} val texts{held}", flush=True)
        for mode in modes:
            out = Path(tmp) / mode
            shutil.copytree(args.base, out, ignore=shutil.ignore_patterns("tb", "index"))
            bdict = {**man["build_config"], "input": str(src), "out": str(out), "limit": None, "log_dir": None,
                     "warm_start": mode, "warm_start_encoder": str(encoder) if mode == "encoder" else None}
            run = build_corpus(BuildConfig(**bdict), fcfg, llm=llm, teacher=teacher, show_progress=False)
            results[mode] = run
            print(json.dumps({"warm_start": mode, **{k: run[k] for k in (
                "fitted", "converged", "median_steps", "mean_accuracy", "fit_seconds", "texts_per_hour")}}),
                flush=True)
            t = corpus.read_table(out, ["steps", "converged"]).to_pylist()
            new_ids = {r["id"] for r in new}
            conv_steps = [r["steps"] for r in t if r["id"] in new_ids and r["converged"]]
            run["median_steps_converged"] = statistics.median(conv_steps) if conv_steps else None
    print(f"\nbase corpus {args.base} ({man['counts']['rows']} rows); {len(new)} new texts; "
          f"cap {fcfg.max_steps} steps")
    print(f"{'warm start':10} {'conv':>6} {'median steps':>12} {'mean acc':>8} {'fit s':>7} {'conv/h':>7}")
    rate = {}
    for mode, r in results.items():
        rate[mode] = 3600 * r["converged"] / r["fit_seconds"]
        print(f"{mode:10} {r['converged']:>3}/{r['fitted']:<2} {str(r['median_steps']):>12} "
              f"{r['mean_accuracy']:>8.3f} {r['fit_seconds']:>7.1f} {rate[mode]:>7.1f}")
    best = max((m for m in rate if m != "none"), key=rate.get, default=None)
    if best is None:
        print("ratio: 1.00 (only the baseline was run)")
    elif rate["none"]:
        print(f"ratio: {rate[best] / rate['none']:.2f}  ({best} over none)")
    else:
        print("ratio: n/a (the baseline converged none)")


if __name__ == "__main__":
    main()

"""Held-out accuracy against training steps, by genre: one row per encoder checkpoint of a run.

Each checkpoint (a folder with config.json and model.safetensors; its step read from train_state) is evaluated
on the held-out file (default: all STS-B dev sentences of <= 16 tokens, `nar make-data`, whose `genre` column
splits it into captions, news and forums): token accuracy and exact match overall and per genre. Writes
`OUT.json` (one row per checkpoint, appended: a rerun skips checkpoints already there) and a plot.

    python -m studies.learning_curve START CKPT [CKPT ...] --start START --data data/gen/stsb-dev.jsonl \
        --out results/learning_curve --png docs/learning_curve.png

A run that continues another one (a fresh schedule from its final weights) is appended with `--x0 STEPS`, the
first run's length: its checkpoints are plotted at STEPS + their step, and a dotted line marks where it began.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def evaluate(ckpt: Path, data: str, llm, precision: str) -> dict:
    from nar.config import TrainConfig
    from nar.data import load_pairs
    from nar.encoder import Encoder
    from nar.evaluate import evaluate_encoder

    enc = Encoder.from_pretrained(ckpt, llm=llm)
    pairs = load_pairs(data, llm, TrainConfig(max_tokens=16))
    res = evaluate_encoder(enc, llm, pairs, enc.layout, precision, bool(enc.meta.get("stop_at_eos")),
                           with_buckets=True)
    step = json.loads((ckpt / "config.json").read_text()).get("train_state", {}).get("step")
    return {"checkpoint": str(ckpt), "step": step, "texts": res["texts"], "token_acc": res["token_acc"],
            "exact_match": res["exact_match"], "chrf": res["chrf"], "by_group": res["by_group"]}


def plot(rows: list[dict], path: Path, offset: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["x"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    xs = [r["x"] for r in rows]
    groups = sorted({g for r in rows for g in r["by_group"]})
    for ax, key, label in zip(axes, ("token_acc", "exact_match"), ("token accuracy", "exact match")):
        ax.plot(xs, [r[key] for r in rows], "k-o", label="all dev")
        for g in groups:
            ax.plot(xs, [r["by_group"].get(g, {}).get(key) for r in rows], "--o", label=g)
        for x0 in sorted({r.get("x0", 0) for r in rows} - {0}):
            ax.axvline(x0, color="grey", ls=":", lw=1)
            ax.text(x0, ax.get_ylim()[0], " fresh schedule", color="grey", fontsize=8, va="bottom")
        ax.set_xlabel(f"steps (0: the first run's starting checkpoint, {offset:,} steps before)")
        ax.set_ylabel(f"held-out {label}")
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", default="data/gen/stsb-dev.jsonl")
    ap.add_argument("--out", type=Path, default=Path("results/learning_curve"))
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--start", type=Path, default=None, help="the checkpoint the run started from (step 0)")
    ap.add_argument("--offset", type=int, default=9600, help="steps before the first checkpoint (for the label)")
    ap.add_argument("--x0", type=int, default=0,
                    help="plot this run's step s at x0 + s: the length of the run it continues (0: a first run)")
    ap.add_argument("--png", type=Path, default=None, help="where the plot goes (default OUT.png)")
    args = ap.parse_args()

    from nar.llm import load_llm

    out_json = args.out.with_suffix(".json")
    rows = json.loads(out_json.read_text()) if out_json.is_file() else []
    done = {r["checkpoint"] for r in rows}
    llm = load_llm("smollm2-135m-instruct")
    for ckpt in args.checkpoints:
        if str(ckpt) in done:
            continue
        row = evaluate(ckpt, args.data, llm, args.precision)
        is_start = args.start is not None and ckpt.resolve() == args.start.resolve()
        row["x"] = args.x0 + (0 if is_start else row["step"])
        if args.x0:
            row["x0"] = args.x0
        rows.append(row)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(rows, indent=1))
        print(json.dumps({k: row[k] for k in ("checkpoint", "step", "token_acc", "exact_match")}
                         | {g: round(v["token_acc"], 3) for g, v in row["by_group"].items()}), flush=True)
    plot(rows, args.png or args.out.with_suffix(".png"), args.offset)


if __name__ == "__main__":
    main()

"""Held-out accuracy against training steps, by genre: one row per encoder checkpoint of a run.

Each checkpoint (a folder with config.json and model.safetensors; its step read from train_state) is evaluated
on the held-out file (default: all STS-B dev sentences of <= 16 tokens, `nar make-data`, whose `genre` column
splits it into captions, news and forums): token accuracy and exact match overall and per genre. Writes
`OUT.json` (one row per checkpoint, appended: a rerun skips checkpoints already there) and a plot.

    python -m studies.learning_curve START CKPT [CKPT ...] --start START --data data/gen/stsb-dev.jsonl \
        --out results/learning_curve --png docs/learning_curve.png
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
    fig, ax = plt.subplots(figsize=(6.4, 4))
    xs = [r["x"] for r in rows]
    ax.plot(xs, [r["token_acc"] for r in rows], "k-o", label="all dev")
    for g in sorted({g for r in rows for g in r["by_group"]}):
        ax.plot(xs, [r["by_group"].get(g, {}).get("token_acc") for r in rows], "--o", label=g)
    ax.set_xlabel(f"steps of the run (0: its starting checkpoint, {offset:,} steps before)")
    ax.set_ylabel("held-out token accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right")
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
        row["x"] = 0 if args.start and ckpt.resolve() == args.start.resolve() else row["step"]
        rows.append(row)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(rows, indent=1))
        print(json.dumps({k: row[k] for k in ("checkpoint", "step", "token_acc", "exact_match")}
                         | {g: round(v["token_acc"], 3) for g, v in row["by_group"].items()}), flush=True)
    plot(rows, args.png or args.out.with_suffix(".png"), args.offset)


if __name__ == "__main__":
    main()

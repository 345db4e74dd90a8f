"""One row of the encoder study (docs/ENCODER.md): amortised autoencoding of STS-B train sentences, held-out STS-B
dev sentences, everything else at the study's defaults (800 steps of 16, targets <= 16 tokens, periodic validation
on the first 200 dev sentences every 200 steps), then `eval-encoder` on the first 500.

    python -m studies.encoder_study NAME [field=value ...]     # fields of EncoderConfig or TrainConfig
    python -m studies.encoder_study NAME --eval-only           # evaluate out/study/NAME/last again

Writes out/study/NAME/ (the run) and appends one JSON line to out/study/results.jsonl. Make the data first:
`nar make-data --stsb ../shared/data/stsb --out out/data` (out/data/stsb-{train,dev}.jsonl). Fields removed from
the core (they measured no gain) are refused here as unknown; their rows run at git tag encoder-study-2026-12.
"""

import json
import sys
import time
from pathlib import Path

from nar.config import EncoderConfig, TrainConfig
from nar.evaluate import eval_encoder
from nar.llm import load_llm
from nar.train import train_encoder

STUDY = dict(data=("out/data/stsb-train.jsonl",), val_data="out/data/stsb-dev.jsonl", max_tokens=16, steps=800,
             val_every=200, save_every=200, val_limit=200, batch_size=16)
LISTS = ("data", "weights")
"""TrainConfig fields given as comma-separated lists: data=a.jsonl,b.jsonl weights=3,1."""


def parse(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def main() -> None:
    eval_only = "--eval-only" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--eval-only"]
    if not args or args[0].startswith("-") or any("=" not in a for a in args[1:]):
        sys.exit(__doc__)
    name, overrides = args[0], dict(a.split("=", 1) for a in args[1:])
    overrides = {k: tuple(parse(x) for x in v.split(",")) if k in LISTS else parse(v) for k, v in overrides.items()}
    enc_f, tr_f = set(EncoderConfig.__dataclass_fields__), set(TrainConfig.__dataclass_fields__)
    bad = set(overrides) - enc_f - tr_f
    if bad:
        sys.exit(f"unknown fields {sorted(bad)}")
    run = Path("out/study") / name
    tcfg = TrainConfig(**{**STUDY, "run_dir": str(run), **{k: v for k, v in overrides.items() if k in tr_f}})
    ecfg = EncoderConfig(**{k: v for k, v in overrides.items() if k in enc_f})
    llm = load_llm()
    t0 = time.time()
    if eval_only:
        saved = json.loads((run / "last" / "config.json").read_text())
        overrides = {**saved["encoder_config"], **saved["train_config"]}
        overrides = {k: v for k, v in overrides.items() if v != {**EncoderConfig().to_dict(),
                                                                 **TrainConfig().to_dict()}.get(k, v)}
        res = {"train_texts": saved["data"]["train_texts"],
               "best_val_token_acc": json.loads((run / "best" / "config.json").read_text())["train_state"]["val"]
               ["token_acc"]}
        steps = saved["train_config"]["steps"]
    else:
        steps = tcfg.steps
        res = train_encoder(tcfg, ecfg, llm=llm, show_progress=sys.stderr.isatty())
    ev = eval_encoder(run / "last", llm=llm, limit=500)
    enc_rows = {r["split"]: r for r in ev["rows"] if r["method"] == "encoder"}
    line = {"name": name, "overrides": overrides, "steps": steps, "train_texts": res["train_texts"],
            "periodic_best": res["best_val_token_acc"], "held_out_500": enc_rows["held-out"],
            "train_500": enc_rows["train"], "baselines_held_out": {
                r["method"]: r for r in ev["rows"]
                if r["split"] == "held-out" and r["method"] != "encoder"},
            "minutes": round((time.time() - t0) / 60, 1)}
    with open("out/study/results.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps({k: line[k] for k in ("name", "minutes", "held_out_500")}, indent=1))


if __name__ == "__main__":
    main()

"""Where an encoder checkpoint loses accuracy on unseen sentences (docs/ENCODER.md: rare words, not memorisation).

Splits token accuracy of the one pass by STS-B genre (captions / news / forums), by target length, and by how
often each target token occurs in the checkpoint's training targets, on its own training sentences and on
held-out STS-B dev sentences alike, so that a genre or length shift can be told from memorisation, and
memorisation from rare words; and whether errors cascade (accuracy after a first error against before it).

    python -m studies.generalisation_probe [CHECKPOINT] [--stsb ../shared/data/stsb] [--limit N]
                                          [--freq-data out/data/stsb-train.jsonl]

With --freq-data the bands also count each token in that file's targets (`by_reference_frequency`), and its
never-seen band is split by whether the checkpoint's own training targets hold the token: for comparing two
checkpoints trained on different data against one reference (docs/ENCODER.md, the LLM-written vocabulary texts).

Prints one JSON object. CHECKPOINT defaults to checkpoints/stsb-autoencoder; its held-out set is the
checkpoint's own val data (out/data/stsb-dev.jsonl for the shipped one: run `nar make-data` first).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

from nar.config import TrainConfig
from nar.data import checkpoint_splits, load_pairs
from nar.decode import token_accuracy
from nar.encoder import Encoder
from nar.evaluate import BUCKETS
from nar.generate import encoder_outputs
from nar.llm import load_llm

FREQ_BUCKETS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, 999, "100-999"), (1000, 10**9, ">=1000"))
LEN_BUCKETS = BUCKETS[:3]  # eval-encoder's buckets up to 16 tokens
GENRE = {"main-captions": "captions", "main-news": "news", "main-forum": "forums", "main-forums": "forums"}


def genres(stsb: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "dev"):
        with (stsb / f"{split}.tsv").open(encoding="utf-8", newline="") as f:
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                for s in (r["sentence1"], r["sentence2"]):
                    out.setdefault((s or "").strip(), GENRE.get(r["genre"], r["genre"]))
    return out


def band(count: int) -> str:
    """The FREQ_BUCKETS label of a token seen `count` times."""
    return next(lb for lo, hi, lb in FREQ_BUCKETS if lo <= count <= hi)


def by_frequency(pred, targets, freq, own=None) -> dict:
    """Token accuracy per band of `freq` (a token's count in some training targets); with `own`, the 0 band
    is also split by whether `own` counts the token."""
    seen = defaultdict(lambda: [0, 0])  # label -> [target tokens, written right]
    for p, t in zip(pred, targets):
        for i, tok in enumerate(t):
            label = band(freq[tok])
            labels = [label] + ([f"0, {'in' if own[tok] else 'not in'} own training"] if own and label == "0" else [])
            for lb in labels:
                seen[lb][0] += 1
                seen[lb][1] += int(len(p) > i and p[i] == tok)
    order = [lb for *_, lb in FREQ_BUCKETS] + ["0, in own training", "0, not in own training"]
    return {b: {"tokens": seen[b][0], "token_acc": round(seen[b][1] / seen[b][0], 3)} for b in order if seen[b][0]}


def cascade(pred, targets, freq=None) -> dict:
    """Do errors cascade? Token accuracy at positions whose earlier tokens are all right ("clean") against
    positions after a first error ("after"), and among the wrong tokens after a first error the share that are
    the target's neighbour (t[i-1] or t[i+1]: the output is the target shifted by one token), split into running
    ahead (t[i+1]: a target token skipped) and lagging (t[i-1]: one written twice or spread over two);
    `by_position`: at each position, [tokens, accuracy] on either side, to compare at the same position; with
    `freq`, how many first errors fall on each training-frequency band and the clean-prefix accuracy per band."""
    clean, after, wrong_after, shifted, ahead, lagging = [0, 0], [0, 0], 0, 0, 0, 0
    at = defaultdict(lambda: [0, 0, 0, 0])  # position -> [clean tokens, right, after tokens, right]
    band_clean = defaultdict(lambda: [0, 0])  # frequency band -> [clean tokens, right]: where first errors start
    for p, t in zip(pred, targets):
        hit = False
        for i, tok in enumerate(t):
            right = len(p) > i and p[i] == tok
            side = after if hit else clean
            side[0] += 1
            side[1] += int(right)
            at[i][2 * hit] += 1
            at[i][2 * hit + 1] += int(right)
            if freq is not None and not hit:
                band_clean[band(freq[tok])][0] += 1
                band_clean[band(freq[tok])][1] += int(right)
            if hit and not right:
                wrong_after += 1
                shifted += int(len(p) > i and p[i] in t[max(i - 1, 0):i] + t[i + 1:i + 2])
                ahead += int(len(p) > i and p[i] in t[i + 1:i + 2])
                lagging += int(len(p) > i and p[i] in t[max(i - 1, 0):i])
            hit = hit or not right
    return {"clean_tokens": clean[0], "clean_acc": round(clean[1] / max(clean[0], 1), 3),
            "after_tokens": after[0], "after_acc": round(after[1] / max(after[0], 1), 3),
            "wrong_after_shifted_share": round(shifted / max(wrong_after, 1), 3),
            "wrong_after_ahead_share": round(ahead / max(wrong_after, 1), 3),
            "wrong_after_lagging_share": round(lagging / max(wrong_after, 1), 3),
            "first_errors_by_band": {b: n - r for b, (n, r) in band_clean.items()},
            "clean_acc_by_band": {b: [n, round(r / n, 3)] for b, (n, r) in band_clean.items()},
            "by_position": {i: {"clean": [c, round(r / c, 3) if c else None],
                                "after": [a, round(q / a, 3) if a else None]}
                            for i, (c, r, a, q) in sorted(at.items())}}


def summarise(pred, targets, keys, freq, ref=None) -> dict:
    rows = defaultdict(list)
    for p, t, k in zip(pred, targets, keys):
        n = len(t)
        lb = next(f"{lo}-{hi}" for lo, hi in LEN_BUCKETS if lo <= n <= hi)
        for key in ("all", f"genre={k}", f"tokens={lb}", f"genre={k},tokens={lb}"):
            rows[key].append((token_accuracy(p, t), p == t))
    out = {k: {"texts": len(v), "token_acc": round(sum(a for a, _ in v) / len(v), 3),
               "exact": round(sum(e for _, e in v) / len(v), 3)} for k, v in sorted(rows.items())}
    out["by_train_frequency"] = by_frequency(pred, targets, freq)
    out["cascade"] = cascade(pred, targets, freq)
    if ref is not None:
        out["by_reference_frequency"] = by_frequency(pred, targets, ref, own=freq)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/stsb-autoencoder")
    ap.add_argument("--stsb", default="../shared/data/stsb")
    ap.add_argument("--limit", type=int, default=None, help="texts per split (default: all held-out ones)")
    ap.add_argument("--freq-data", default=None,
                    help="also band tokens by their count in this data file's targets (e.g. STS-B train)")
    args = ap.parse_args()
    llm = load_llm()
    enc = Encoder.from_pretrained(args.checkpoint, llm=llm)
    train, held, train_cfg = checkpoint_splits(enc.meta, llm)
    g = genres(Path(args.stsb))
    freq = Counter(tok for t in train.token_ids for tok in t)
    ref = None
    if args.freq_data:
        ref_pairs = load_pairs(args.freq_data, llm, TrainConfig(max_tokens=train_cfg.max_tokens))
        ref = Counter(tok for t in ref_pairs.token_ids for tok in t)
    n = min(len(held), args.limit or len(held))
    idx = list(range(len(train)))
    random.Random(0).shuffle(idx)
    res = {"checkpoint": args.checkpoint, "train_texts": len(train), "freq_data": args.freq_data}
    for name, part in (("held-out", held.take(list(range(n)))), ("train", train.take(sorted(idx[:n])))):
        pred = encoder_outputs(enc, llm, part.sources, enc.layout, "auto", bool(enc.meta.get("stop_at_eos")))
        res[name] = summarise(pred, part.token_ids, [g.get(s, "?") for s in part.sources], freq, ref)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""What re-spelling rare tokens from frequent ones would cost in length (docs/ENCODER.md, "Fourteenth session").

    python scripts/respell_estimate.py [--floors 1,10,30,100]

A token the encoder saw fewer than K times in its training targets is written right almost never; any string can
also be written as a sequence of other tokens (the LLM decodes any id sequence). For each floor K this re-spells
every token of the STS-B training and dev sentences of <= 16 tokens (out/data/; `nar make-data`) that occurs
fewer than K times in training as the fewest tokens that do (single characters always allowed), and reports the
dev targets' length growth, the longest target, and their tokens by band of training occurrences after re-spelling.
Tokenizer only; nothing is trained. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from transformers import AutoTokenizer

from nar.llm import _cached_default

BANDS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, 999, "100-999"), (1000, 10**9, ">=1000"))


def speller(tok, allowed: set[int]):
    """token id -> the fewest allowed ids (or single-character tokens) that spell the same byte-level string."""
    pieces = {s: i for s, i in tok.get_vocab().items() if i in allowed or len(s) == 1}
    longest = max(map(len, pieces))
    memo: dict[int, list[int]] = {}

    def spell(i: int) -> list[int]:
        if i in allowed:
            return [i]
        if i not in memo:
            s = tok.convert_ids_to_tokens(i)
            best: list[list[int] | None] = [[]] + [None] * len(s)
            for a in range(len(s)):
                if best[a] is None:
                    continue
                for b in range(a + 1, min(len(s), a + longest) + 1):
                    j = pieces.get(s[a:b])
                    if j is not None and (best[b] is None or len(best[a]) + 1 < len(best[b])):
                        best[b] = best[a] + [j]
            memo[i] = best[len(s)] or [i]
        return memo[i]

    return spell


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--floors", default="1,10,30,100")
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(str(_cached_default()))

    def load(path: str) -> list[list[int]]:
        with open(path, encoding="utf-8") as f:
            ids = [tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] for line in f]
        return [t for t in ids if len(t) <= 16]

    train, dev = load("out/data/stsb-train.jsonl"), load("out/data/stsb-dev.jsonl")
    freq = Counter(x for t in train for x in t)
    out = {"train_texts": len(train), "dev_texts": len(dev), "dev_tokens": sum(map(len, dev)), "floors": []}
    for k in (int(x) for x in args.floors.split(",")):
        spell = speller(tok, {i for i, c in freq.items() if c >= k})
        tr2 = [[y for x in t for y in spell(x)] for t in train]
        dv2 = [[y for x in t for y in spell(x)] for t in dev]
        f2 = Counter(x for t in tr2 for x in t)
        bands = Counter(next(b for lo, hi, b in BANDS if lo <= f2[x] <= hi) for t in dv2 for x in t)
        assert all(tok.decode(a) == tok.decode(b) for a, b in zip(dev, dv2)), "a re-spelling changed a text"
        n2 = sum(map(len, dv2))
        out["floors"].append({"floor": k, "allowed_tokens": sum(c >= k for c in freq.values()), "dev_tokens": n2,
                              "growth": round(n2 / out["dev_tokens"], 2), "longest": max(map(len, dv2)),
                              "over_16": sum(len(t) > 16 for t in dv2),
                              "dev_tokens_by_band": {b: bands[b] for *_, b in BANDS}})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

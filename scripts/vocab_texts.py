"""Autoencoding texts written by the frozen LLM to cover the vocabulary (docs/ENCODER.md, tenth session).

The shipped encoder writes a target token right about as often as it saw that token in training (0.008 for
tokens never seen, 0.72 for tokens seen 1,000+ times: `scripts/generalisation_probe.py`). These texts grow the
count of distinct target tokens rather than of sentences: each prompt names one word drawn from the frozen LLM's
own vocabulary (whole-word tokens, seeded; no word list from the evaluation data), in one of three framings (news,
description, opinion), and the LLM's greedy reply, cut to at most `--max-tokens` tokens at a word
boundary, becomes one text.

    python scripts/vocab_texts.py --n 3000 --out out/data/llm-vocab.jsonl
    # then one training file: STS-B train sentences + these texts
    cat out/data/stsb-train.jsonl out/data/llm-vocab.jsonl > out/data/stsb-train+vocab.jsonl

Resumable (the generation step is `nar make-pairs`, which resumes from `<pairs>.partial`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEMPLATES = ("Write one short news sentence about {}.",
             "Describe {} in one short sentence.",
             "Give your opinion on {} in one sentence.")


def vocab_words(tokenizer, min_chars: int = 5) -> list[str]:
    """Whole-word tokens of the vocabulary (a leading space marker, then only lowercase letters), sorted."""
    words = set()
    for tok in tokenizer.get_vocab():
        word = tokenizer.convert_tokens_to_string([tok])
        if word.startswith(" ") and re.fullmatch(r"[a-z]+", word[1:]) and len(word) - 1 >= min_chars:
            words.add(word[1:])
    return sorted(words)


def cut(llm, reply: str, max_tokens: int) -> str | None:
    """The reply without wrapping quotes, cut to <= max_tokens tokens at a word boundary (None if empty)."""
    text = reply.strip().strip('"').strip()
    first = re.match(r"(.+?[.!?])(\s|$)", text)  # the first sentence, if it is short enough
    if first and len(llm.encode(first.group(1))) <= max_tokens:
        return first.group(1)
    ids = llm.encode(text)
    if len(ids) <= max_tokens:
        return text or None
    tok = llm.tokenizer
    for k in range(max_tokens, 0, -1):  # the longest prefix that ends before a token opening a new word
        if tok.decode(ids[k:k + 1]).startswith(" "):
            return tok.decode(ids[:k]).strip() or None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="How many prompts (one vocabulary word each).")
    ap.add_argument("--out", type=Path, default=Path("out/data/llm-vocab.jsonl"))
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()

    from nar.config import PairsConfig
    from nar.llm import load_llm
    from nar.pairs import make_pairs

    llm = load_llm(args.model, device="cpu")
    words = vocab_words(llm.tokenizer)
    rng = random.Random(args.seed)
    rng.shuffle(words)
    chosen = words[: args.n]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    prompts = args.out.with_suffix(".prompts.jsonl")
    prompts.write_text("".join(json.dumps({"id": f"v{i}", "prompt": TEMPLATES[i % len(TEMPLATES)].format(w),
                                           "word": w}) + "\n" for i, w in enumerate(chosen)), encoding="utf-8")
    pairs = args.out.with_suffix(".pairs.jsonl")
    make_pairs(prompts, pairs, PairsConfig(max_new_tokens=args.max_tokens + 8, batch_size=args.batch_size),
               model=llm)
    seen, kept = set(), 0
    with args.out.open("w", encoding="utf-8") as f:
        for line in pairs.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "target" not in row:
                continue
            text = cut(llm, row["target"], args.max_tokens)
            if text and text not in seen:
                seen.add(text)
                kept += 1
                f.write(json.dumps({"text": text, "source": "llm-vocab", "id": row["id"]}) + "\n")
    print(json.dumps({"vocab_words": len(words), "prompts": len(chosen), "texts": kept, "out": str(args.out)}))


if __name__ == "__main__":
    main()

"""Is the length head where an encoder loses accuracy? (docs/ENCODER.md, "Sixteenth session".)

One pass of the frozen LLM at the encoder's predicted length N and one at the target's true length, on the
checkpoint's own held-out sentences: if the second scores much higher, the length head is a lever.

    python scripts/length_probe.py [CHECKPOINT]

Prints one JSON object: how often the predicted length is exact (and the spread of its errors), token accuracy
and exact match at the predicted and at the true length, and token accuracy on the sentences whose length it
gets right. CHECKPOINT defaults to checkpoints/stsb-autoencoder (run `nar make-data` first for its val data).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from nar.data import checkpoint_splits
from nar.decode import decode_ids, token_accuracy
from nar.encoder import Encoder
from nar.llm import load_llm


def scores(pred: list[list[int]], targets: list[list[int]]) -> dict:
    return {"token_acc": round(sum(map(token_accuracy, pred, targets)) / len(targets), 4),
            "exact": round(sum(p == t for p, t in zip(pred, targets)) / len(targets), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/stsb-autoencoder")
    args = ap.parse_args()
    llm = load_llm()
    enc = Encoder.from_pretrained(args.checkpoint, llm=llm)
    if enc.cfg.ctc_slots or enc.cfg.context != "none":
        raise SystemExit("length_probe reads encoders with a length head and no source context")
    _, held, _ = checkpoint_splits(enc.meta, llm)
    targets = held.token_ids
    with llm.autocast("auto"):
        e, m, n = enc.predict(held.sources)
    true = [len(t) for t in targets]
    stop = bool(enc.meta.get("stop_at_eos"))  # decoded as nar.generate.encoder_outputs decodes
    at = {name: decode_ids(llm, e, enc.m_inputs(m), lengths, enc.layout, precision="auto", stop_at_eos=stop,
                           pos=enc.pos_codes)
          for name, lengths in (("predicted_length", n), ("true_length", true))}
    right = [i for i, (a, b) in enumerate(zip(n, true)) if int(a) == b]
    out = {"checkpoint": args.checkpoint, "texts": len(targets),
           "length_exact": round(len(right) / len(targets), 4),
           "length_error": dict(sorted(Counter(int(a) - b for a, b in zip(n, true)).items())),
           **{k: scores(v, targets) for k, v in at.items()},
           "right_length_texts": scores([at["predicted_length"][i] for i in right], [targets[i] for i in right])}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

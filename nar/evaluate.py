"""Evaluating one-pass generation from predicted proto-tokens, beside the baselines a user would pick instead.

Metrics (per text, averaged; corpus-level for WER and chrF):
  token_acc       fraction of target positions whose one-pass token matches (a missing token is wrong)
  exact_match     the whole output equals the target
  one_minus_wer   1 - word error rate of the detokenised output (jiwer)
  chrf            chrF of the detokenised output (sacrebleu), in [0, 1]
  distinct_share  distinct tokens / tokens of each output: "the the the ..." scores low; compare with the
                  targets' own share (`target_distinct_share`)
  by_length, by_position  token accuracy per target-length bucket and at each output position 1..16

Baselines:
  nearest neighbour  the training text whose source is closest to the query's source by the teacher's sentence
                     embedding (FAISS, cosine) -> that text's target, as is (retrieval: what a user would do
                     without a generator); on training texts the text itself is excluded
  position mode      the most frequent training target token at each position, at the true length (what an
                     encoder collapsed to position statistics produces at best)
"""

from __future__ import annotations

from collections import Counter

import torch.nn.functional as F

from nar.decode import token_accuracy
from nar.generate import encoder_outputs
from nar.llm import FrozenLLM, Layout

BUCKETS = ((1, 8), (9, 12), (13, 16), (17, 32), (33, 10_000))


def strip_eos(ids: list[int], eos: int | None, stop_at_eos: bool) -> list[int]:
    return ids[:-1] if stop_at_eos and ids and ids[-1] == eos else ids


def score(pred: list[list[int]], targets: list[list[int]], tokenizer) -> dict[str, float]:
    """Every metric of the module docstring for predicted vs target token ids."""
    import jiwer
    import sacrebleu

    if not targets:
        return {"texts": 0}
    accs = [token_accuracy(p, t) for p, t in zip(pred, targets)]
    hyp = [tokenizer.decode(p, skip_special_tokens=True).strip() for p in pred]
    ref = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in targets]
    pairs = [(r, h) for r, h in zip(ref, hyp) if r]
    wer = jiwer.wer([r for r, _ in pairs], [h or "<empty>" for _, h in pairs]) if pairs else 1.0
    def distinct(ids):
        return (len(set(ids)) / len(ids) if ids else 0.0)
    return {"texts": len(targets), "token_acc": sum(accs) / len(accs),
            "exact_match": sum(p == t for p, t in zip(pred, targets)) / len(targets),
            "one_minus_wer": 1.0 - wer, "chrf": sacrebleu.corpus_chrf(hyp, [ref]).score / 100,
            "distinct_share": sum(distinct(p) for p in pred) / len(pred),
            "target_distinct_share": sum(distinct(t) for t in targets) / len(targets)}


def by_length(pred: list[list[int]], targets: list[list[int]]) -> list[dict]:
    """Token accuracy and exact match per target-length bucket."""
    out = []
    for lo, hi in BUCKETS:
        idx = [i for i, t in enumerate(targets) if lo <= len(t) <= hi]
        if idx:
            out.append({"tokens": f"{lo}-{hi}" if hi < 10_000 else f">={lo}", "texts": len(idx),
                        "token_acc": sum(token_accuracy(pred[i], targets[i]) for i in idx) / len(idx),
                        "exact_match": sum(pred[i] == targets[i] for i in idx) / len(idx)})
    return out


def by_position(pred: list[list[int]], targets: list[list[int]], upto: int = 16) -> list[float]:
    """Token accuracy at each output position 1..upto, over the targets that long: exposes a one pass that
    writes the first tokens right and the rest as filler."""
    out = []
    for i in range(min(upto, max((len(t) for t in targets), default=0))):
        rows = [(p, t) for p, t in zip(pred, targets) if len(t) > i]
        out.append(sum(len(p) > i and p[i] == t[i] for p, t in rows) / len(rows))
    return out


def by_group(pred: list[list[int]], targets: list[list[int]], groups: list[str] | None, tokenizer) -> dict:
    """{group: token_acc, exact_match, chrf, texts} for texts with a group (e.g. STS-B dev's genres), else {}."""
    if groups is None:
        return {}
    out = {}
    for g in sorted(set(groups)):
        idx = [i for i, x in enumerate(groups) if x == g]
        res = score([pred[i] for i in idx], [targets[i] for i in idx], tokenizer)
        out[g] = {k: res[k] for k in ("texts", "token_acc", "exact_match", "chrf")}
    return out


def evaluate_encoder(enc, llm: FrozenLLM, pairs, layout: Layout, precision: str, stop_at_eos: bool,
                     with_buckets: bool = False) -> dict:
    """The metrics of the encoder's one-pass outputs on `pairs` (a nar.data.Pairs); with_buckets: also by length,
    by output position and by group."""
    pred = encoder_outputs(enc, llm, pairs.sources, layout, precision, stop_at_eos)
    tg = [strip_eos(t, llm.eos_id, stop_at_eos) for t in pairs.token_ids]
    out = score(pred, tg, llm.tokenizer)
    if with_buckets:
        out["by_length"], out["by_position"] = by_length(pred, tg), by_position(pred, tg)
        out["by_group"] = by_group(pred, tg, pairs.groups, llm.tokenizer)
    return out


def source_index(train, teacher):
    """A FAISS (cosine) index over the teacher embeddings of the training sources, built once per evaluation."""
    from nar.index import make_faiss_index

    return make_faiss_index(F.normalize(teacher.encode(train.sources), dim=-1).numpy(), "flat")


def nearest_neighbour(train, pairs, teacher, exclude_self: bool, index=None) -> list[list[int]]:
    """The target ids of each query's nearest training source (teacher embedding, cosine)."""
    index = index if index is not None else source_index(train, teacher)
    q = F.normalize(teacher.encode(pairs.sources), dim=-1).numpy()
    _, idx = index.search(q, 2 if exclude_self else 1)
    out = []
    for j, row in enumerate(idx):
        cand = [int(i) for i in row if not (exclude_self and train.ids[int(i)] == pairs.ids[j])]
        out.append(train.token_ids[cand[0]])
    return out


def position_mode(train, pairs) -> list[list[int]]:
    width = max(len(t) for t in train.token_ids)
    mode = [Counter(t[i] for t in train.token_ids if len(t) > i).most_common(1)[0][0] for i in range(width)]
    return [[mode[min(i, width - 1)] for i in range(len(t))] for t in pairs.token_ids]


def baselines(train, pairs, llm: FrozenLLM, teacher, stop_at_eos: bool, exclude_self: bool,
              index=None) -> dict[str, dict]:
    tg = [strip_eos(t, llm.eos_id, stop_at_eos) for t in pairs.token_ids]
    out = {}
    for name, pred in (("nearest neighbour", nearest_neighbour(train, pairs, teacher, exclude_self, index)),
                       ("position mode", position_mode(train, pairs))):
        pred = [strip_eos(p, llm.eos_id, stop_at_eos) for p in pred]
        out[name] = {**score(pred, tg, llm.tokenizer), "by_length": by_length(pred, tg),
                     "by_position": by_position(pred, tg), "by_group": by_group(pred, tg, pairs.groups, llm.tokenizer)}
    return out


def eval_encoder(checkpoint, *, llm: FrozenLLM, data=None, teacher=None, precision: str = "auto",
                 limit: int | None = None, baseline_data: list[str] | None = None) -> dict:
    """The encoder beside both baselines on held-out texts (the checkpoint's own, or `data`) and on as many of its
    training texts, with length buckets. The baselines retrieve from (and count positions over) the checkpoint's
    training text; with `baseline_data`, from those files instead (for a checkpoint whose training text is not at
    hand), and then the training split is left out."""
    import random

    from nar.data import TextMixture, checkpoint_splits, load_pairs
    from nar.encoder import Encoder
    from nar.errors import NarError
    from nar.teacher import load_teacher

    enc = Encoder.from_pretrained(checkpoint, llm=llm)
    meta = enc.meta
    layout, stop = enc.layout, bool(meta.get("stop_at_eos"))
    if baseline_data:
        from nar.config import TrainConfig

        tcfg = TrainConfig.from_dict(meta["train_config"]).replace(data=tuple(baseline_data), val_data=None)
        train = TextMixture(tcfg.data, (), llm, tcfg).all_rows()
        held = load_pairs(data, llm, tcfg) if data is not None else None
    else:
        try:
            train, held, tcfg = checkpoint_splits(meta, llm)
        except NarError as exc:
            raise NarError(f"{exc}: the checkpoint's training text is needed for its baselines; make it "
                           "(data/README.md) or pass --baseline-data FILE") from exc
        if data is not None:
            held = load_pairs(data, llm, tcfg)
    if held is None:
        raise NarError("with --baseline-data, give the held-out texts with --data")
    overlap = set(held.ids) & set(train.ids)
    if overlap and data is not None:
        raise NarError(f"{len(overlap)} of the evaluation texts are training texts; evaluate on held-out data")
    n = min(len(held), limit or len(held))
    held = held.take(list(range(n)))
    tr_idx = list(range(len(train)))
    random.Random(0).shuffle(tr_idx)
    train_probe = train.take(sorted(tr_idx[:n]))
    teacher = teacher or load_teacher()
    index = source_index(train, teacher)
    rows = []
    splits = [("held-out", held, False)] + ([] if baseline_data else [("train", train_probe, True)])
    for name, part, loo in splits:
        rows.append({"split": name, "method": "encoder",
                     **evaluate_encoder(enc, llm, part, layout, precision, stop, with_buckets=True)})
        for method, res in baselines(train, part, llm, teacher, stop, loo, index).items():
            rows.append({"split": name, "method": method, **res})
    return {"checkpoint": str(checkpoint), "held_out": data or tcfg.val_data or "val split of the training data",
            "baseline_text": list(tcfg.data), "rows": rows}

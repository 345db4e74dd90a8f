"""Does proto-token space mirror meaning? Spearman correlations against a teacher and human scores."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from nar import corpus as corpus_store
from nar.artifacts import atomic_write_jsonl
from nar.config import BuildConfig, SemanticsConfig
from nar.errors import NarError
from nar.space import PROTO_SPACES, pair_cosines, proto_space, spearman, teacher_agreement


def load_stsb(path: str | Path, n: int | None = None, seed: int = 0) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, human score 0-5) from a GLUE-layout STS-B tsv; a seeded sample of n pairs."""
    path = Path(path)
    if not path.is_file():
        raise NarError(f"no STS-B file at {path}")
    with path.open(encoding="utf-8") as f:
        rows = [(r["sentence1"], r["sentence2"], float(r["score"]))
                for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    if n is not None and n < len(rows):
        rows = random.Random(seed).sample(rows, n)
    return rows


def corpus_columns(path: str | Path) -> dict:
    """{id: list, e, m, teacher: float tensors, accuracy, converged: arrays} of every row of a corpus."""
    cols = corpus_store.columns(path, ["id", "e", "m", "teacher", "accuracy", "converged"])
    return {k: torch.from_numpy(v) if k in ("e", "m", "teacher") else v for k, v in cols.items()}


def spaces(cols: dict) -> dict[str, torch.Tensor]:
    """The proto-token spaces and the teacher's, of corpus columns."""
    return {**{s: proto_space(cols["e"], cols["m"], s) for s in PROTO_SPACES}, "teacher": cols["teacher"]}


def pairs_spearman(cols: dict, pairs_ids: list[tuple[str, str]], scores: list[float]) -> dict[str, float]:
    """Spearman of cos(x_a, x_b) with human scores for x in e, m, em and the teacher, over id pairs."""
    index = {k: i for i, k in enumerate(cols["id"])}
    missing = [p for p in pairs_ids if p[0] not in index or p[1] not in index]
    if missing:
        raise NarError(f"{len(missing)} pair members are not in the corpus (e.g. {missing[0]})")
    ia = [index[a] for a, _ in pairs_ids]
    ib = [index[b] for _, b in pairs_ids]
    return {name: spearman(pair_cosines(v[ia], v[ib]), scores) for name, v in spaces(cols).items()}


def frame_share(E: torch.Tensor, teacher_dim: int, projection_seed: int = 0) -> float:
    """Mean share of e's squared norm inside the teacher subspace of the corpus frame (Q's rows); a random
    vector has teacher_dim / D there, a pinned e all but its fitted complement."""
    from nar.losses import teacher_projection

    Q = teacher_projection(teacher_dim, E.shape[1], projection_seed)
    ok = torch.isfinite(E).all(1)
    return float(((E[ok] @ Q.T).pow(2).sum(1) / E[ok].pow(2).sum(1)).mean())


# ----------------------------------------------------------------------------------------------
# Experiments (used by `nar analyze semantics`)

NO_PIN = dict(frame_pin=0.0)
STS_VARIANTS = {
    "none": ("no RD, random init (plain fitting)", dict(rd_weight=0.0, **NO_PIN), dict(init="embed_std")),
    "batch": ("batch RD, random init", dict(rd_weight=1.0, rd_bank=0, **NO_PIN), dict(init="embed_std")),
    "bank": ("bank RD (256), random init", dict(rd_weight=1.0, rd_bank=256, **NO_PIN), dict(init="embed_std")),
    "teacher": ("teacher init, no RD", dict(rd_weight=0.0, **NO_PIN), dict(init="teacher")),
    "teacher_batch": ("teacher init + batch RD", dict(rd_weight=1.0, rd_bank=0, **NO_PIN), dict(init="teacher")),
    "teacher_bank": ("teacher init + bank RD (the corpus default without the frame pin)",
                     dict(rd_weight=1.0, rd_bank=256, **NO_PIN), dict(init="teacher")),
    "default": ("build-corpus default (64-dim frame pin + teacher init + bank RD)", {}, dict(init="teacher")),
    "pin1": ("frame pin 1 token norm + bank RD", dict(rd_weight=1.0, rd_bank=256, frame_pin=1.0, frame_dims=0),
             dict(init="teacher")),
    "pin2": ("frame pin 2 token norms + bank RD", dict(rd_weight=1.0, rd_bank=256, frame_pin=2.0, frame_dims=0),
             dict(init="teacher")),
    "pin2_nord": ("frame pin 2 token norms, no RD", dict(rd_weight=0.0, frame_pin=2.0, frame_dims=0),
                  dict(init="teacher")),
    "efixed2": ("e fixed at the frame (2 token norms), only m fitted",
                dict(rd_weight=0.0, frame_pin=2.0, frame_dims=0), dict(init="teacher", train_e=False)),
    "pin2_k64": ("frame pin 2 token norms, 64-dim sketch + bank RD",
                 dict(rd_weight=1.0, rd_bank=256, frame_pin=2.0, frame_dims=64), dict(init="teacher")),
}


def sts_experiment(out_dir: str | Path, *, llm, teacher, pairs: int = 100, max_steps: int = 200,
                   variants=("none", "teacher_bank"), stsb: str | Path, precision: str = "auto",
                   show_progress: bool = False, on_row=None, slots: int = 8) -> list[dict]:
    """STS-B pairs split across batches (all first sentences, then all second ones), one corpus per variant
    under out_dir (reused if present: the build resumes). Spearman of cos(x_a, x_b) with the human scores."""

    from nar.build import build_corpus
    from nar.config import BuildConfig, FitConfig

    sample = load_stsb(stsb, n=pairs, seed=0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / f"stsb-{pairs}.jsonl"
    rows = [{"id": f"a{i}", "text": a} for i, (a, _, _) in enumerate(sample)]
    rows += [{"id": f"b{i}", "text": b} for i, (_, b, _) in enumerate(sample)]
    atomic_write_jsonl(src, rows)
    ids = [(f"a{i}", f"b{i}") for i in range(len(sample))]
    scores = [s for _, _, s in sample]
    results = []
    for key in variants:
        if key not in STS_VARIANTS:
            raise NarError(f"unknown variant {key!r}; choose from {sorted(STS_VARIANTS)}")
        name, bkw, fkw = STS_VARIANTS[key]
        cdir = out / f"{key}-{pairs}-{max_steps}"
        s = build_corpus(BuildConfig(input=str(src), out=str(cdir), **bkw),
                         FitConfig(max_steps=max_steps, max_tokens=64, precision=precision, num_slots=slots,
                                   sort_by_length=False, **fkw),  # keep A's and B's in separate batches
                         llm=llm,
                         teacher=teacher, show_progress=show_progress)
        cols = corpus_columns(cdir)
        row = {"variant": name, "key": key, "pairs": len(sample),
               **{f"sts_{k}": round(v, 3) for k, v in pairs_spearman(cols, ids, scores).items()},
               **{f"agree_{k}": round(v, 3)
                  for k, v in teacher_agreement(cols["e"], cols["m"], cols["teacher"]).items()},
               "e_frame_share": round(frame_share(cols["e"], teacher.dim), 3),
               "mean_acc": round(float(cols["accuracy"].mean()), 3), "converged": int(cols["converged"].sum()),
               "texts": len(cols["id"]), "fitted_now": s["fitted"], "corpus": str(cdir)}
        results.append(row)
        if on_row:
            on_row(row)
    return results


AUGMENT_SETTINGS = {"plain": ("embed_std", 0.0, 0.0), "default": ("teacher", 1.0, BuildConfig.frame_pin)}
"""Augmentation fits (init, RD weight, frame pin): Paper B's plain fitting and build-corpus's default."""


def augmentation(llm, teacher, triples: list[dict], out_dir: str | Path, *, max_steps: int = 300,
                 precision: str = "auto", init: str = "teacher", rd_weight: float = 1.0,
                 frame_pin: float = BuildConfig.frame_pin, png_name: str = "augmentation") -> dict:
    """Original vs lexical vs semantic change: cosine distances in e, m, [e; m] and teacher space, and a
    PCA plot of e. Fitted as one corpus (build-corpus with the given init and RD weight)."""

    import numpy as np

    from nar.analysis.report import figure
    from nar.build import build_corpus
    from nar.config import BuildConfig, FitConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / "augment-input.jsonl"
    kinds = ("original", "lexical", "semantic")
    atomic_write_jsonl(src, [{"id": f"{t['id']}/{k}", "text": t[k]} for t in triples for k in kinds])
    cdir = out / f"augment-{init}-rd{rd_weight:g}{f'-pin{frame_pin:g}' if frame_pin else ''}-{max_steps}"
    build_corpus(BuildConfig(input=str(src), out=str(cdir), rd_weight=rd_weight, frame_pin=frame_pin),
                 FitConfig(max_steps=max_steps, precision=precision, init=init, max_tokens=64), llm=llm,
                 teacher=teacher, show_progress=False)
    cols = corpus_columns(cdir)
    pos = {k: i for i, k in enumerate(cols["id"])}
    space = spaces(cols)
    rows = []
    for t in triples:
        o, lx, se = (pos[f"{t['id']}/{k}"] for k in kinds)
        row = {"id": t["id"]}
        for name, v in space.items():
            row[f"{name}_dist_lexical"] = float(1 - pair_cosines(v[o], v[lx]))
            row[f"{name}_dist_semantic"] = float(1 - pair_cosines(v[o], v[se]))
        rows.append(row)
    summary = {name: {"lexical": float(np.mean([r[f"{name}_dist_lexical"] for r in rows])),
                      "semantic": float(np.mean([r[f"{name}_dist_semantic"] for r in rows])),
                      "semantic_farther_frac": float(np.mean([r[f"{name}_dist_semantic"] > r[f"{name}_dist_lexical"]
                                                              for r in rows]))}
               for name in space}
    # PCA of e (and m) coloured by triple, marker by kind
    plt = figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, name in zip(axes, ("e", "m")):
        x = F.normalize(space[name].float(), dim=-1).numpy()
        x = x - x.mean(0)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        xy = x @ vt[:2].T
        for j, t in enumerate(triples):
            for k, mk in zip(kinds, ("o", "s", "x")):
                p = xy[pos[f"{t['id']}/{k}"]]
                ax.scatter(p[0], p[1], color=f"C{j % 10}", marker=mk, s=40)
        ax.set_title(f"PCA of {name} (o original, s lexical, x semantic; colour = triple)")
    fig.tight_layout()
    fig.savefig(out / f"{png_name}.png", dpi=120)
    plt.close(fig)
    return {"summary": summary, "rows": rows, "corpus": str(cdir), "png": str(out / f"{png_name}.png")}


def run_semantics(out_dir: str | Path, cfg: SemanticsConfig, *, llm, teacher, show_progress: bool = True) -> dict:
    """The `nar analyze semantics` job: STS-B Spearman per variant + the augmentation experiment, the latter
    for plain fitting and for the build-corpus default (AUGMENT_SETTINGS), augment_steps (or max_steps) each."""
    import json

    from nar.analysis.report import figure, write_report
    from nar.assets import path

    out, pairs, max_steps, precision = Path(out_dir), cfg.pairs, cfg.max_steps, cfg.precision
    augment_steps = cfg.augment_steps
    augment_file = {"none": None, "bundled": path("augment.jsonl")}.get(cfg.augment, cfg.augment)
    sts = sts_experiment(out, llm=llm, teacher=teacher, pairs=pairs, max_steps=max_steps, variants=cfg.variants,
                         stsb=cfg.stsb, precision=precision, show_progress=show_progress, slots=cfg.slots)
    plt = figure()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    keys = ["sts_e", "sts_m", "sts_em", "sts_teacher"]
    w = 0.8 / len(sts)
    for j, r in enumerate(sts):
        ax.bar([i + j * w for i in range(len(keys))], [r[k] for k in keys], width=w, label=r["variant"])
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(keys))], ["e", "m", "[e; m]", "teacher"])
    ax.set_ylabel("Spearman with human score")
    ax.set_title(f"STS-B dev, {pairs} pairs, sentences of a pair in different batches")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "semantics.png", dpi=120)
    plt.close(fig)
    aug = None
    if augment_file is not None:
        triples = [json.loads(x) for x in Path(augment_file).read_text().splitlines() if x.strip()]
        aug = {key: augmentation(llm, teacher, triples, out, max_steps=augment_steps or max_steps, precision=precision,
                                 init=init, rd_weight=rd, frame_pin=pin, png_name=f"augmentation-{key}")
               for key, (init, rd, pin) in AUGMENT_SETTINGS.items()}
    summary = {"config": cfg.to_dict(), "pairs": pairs, "max_steps": max_steps,
               "augment_steps": augment_steps or max_steps,
               "augmentation": aug and {key: a["summary"] for key, a in aug.items()}}
    files = write_report(out, "semantics", summary, sts)
    return {**summary, "rows": sts, "files": {**files, "png": str(out / "semantics.png")}}

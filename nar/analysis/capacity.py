"""How many tokens can two proto-tokens carry? Accuracy vs N (Paper A's capacity curve).

Each long text is cut to its first N tokens for every N of the grid and fitted with the same recipe, in two
modes (Paper A's two tables):

- 'per-text': every (text, N) has its own e and m (continuous batching, `nar.fit.fit_stream`);
- 'shared': for each N, one m serves every text and only the e's are per text (one joint fit).

For each text the largest N reconstructed at >= threshold token accuracy (in bf16 and in fp32 when the fit runs
in bf16) is reported. The job is resumable: every finished fit is appended to `capacity-rows.jsonl` in the
output folder at once, and a re-run with the same settings skips what is there (long grids are CPU-hours); the
fits in progress are saved every 50 steps (`capacity-inflight-*.pt`) and go on from there.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path

import torch

from nar.analysis.report import RowLog, figure, save_figure, write_report
from nar.config import CapacityConfig, FitConfig
from nar.fit import FitItem, fit_stream, fp32_checked, init_vector, initial_vectors, lr_at, make_layout
from nar.llm import FrozenLLM
from nar.losses import reconstruction_loss


def _row(mode: str, text: int, n: int, acc: float, steps: int, seconds: float, threshold: float) -> dict:
    return {"mode": mode, "text": text, "n": n, "accuracy": round(float(acc), 4), "steps": steps,
            "seconds": round(seconds, 1), "reconstructed": float(acc) >= threshold}


def capacity(llm: FrozenLLM, texts: list[str], ns: list[int], cfg: FitConfig, threshold: float = 0.99,
             on_result=None, skip: set[tuple[int, int]] = frozenset(), resume: dict | None = None,
             on_snapshot=None, snapshot_every: int = 50) -> list[dict]:
    """Per-text mode: one row per (text, N) with N <= the text's length, (text, N) in `skip` left out;
    on_result(row) as each fit finishes; `resume`/`on_snapshot`: `nar.fit.fit_stream`'s mid-fit states."""
    items = []
    for i, t in enumerate(texts):
        ids = llm.encode(t)
        for n in ns:
            if n <= len(ids) and (i, n) not in skip:
                items.append(FitItem(key=f"{i}/{n}", ids=ids[:n], init_key=f"{t}#{n}"))
    rows = []
    for r in fit_stream(llm, items, cfg, resume=resume, on_snapshot=on_snapshot, snapshot_every=snapshot_every):
        i, n = (int(x) for x in r.key.split("/"))
        rows.append(_row("per-text", i, n, r.accuracy, r.steps, r.seconds, threshold))
        if on_result:
            on_result(rows[-1])
    return sorted(rows, key=lambda x: (x["text"], x["n"]))


def fit_shared_m(llm: FrozenLLM, targets: list[list[int]], cfg: FitConfig, key: str, *, resume: dict | None = None,
                 on_snapshot=None, snapshot_every: int = 50) -> tuple[list[float], int, float]:
    """One m for all targets, one e per target, fitted jointly (the sum of the texts' mean CEs) with cfg's
    optimiser and schedule until every text reaches cfg.target_acc (checked in fp32 too under bf16) or
    cfg.max_steps. Returns (each text's accuracy at the best joint state, steps, seconds).

    Every `snapshot_every` steps on_snapshot gets the fit's whole state; `resume` (such a state) goes on from it,
    making the same updates as an uninterrupted fit."""
    layout, dev, t0 = make_layout(llm, cfg), llm.device, time.perf_counter()
    starts = [initial_vectors(llm, FitItem(key=f"{key}/{j}", ids=ids), cfg) for j, ids in enumerate(targets)]
    E = torch.stack([e for e, _ in starts]).to(dev).requires_grad_(True)
    m0 = torch.stack([m for _, m in starts]).mean(0) if cfg.init == "tokens" else 0
    m = (m0 + init_vector(f"{key}/shared-m", cfg.seed, llm.hidden_size, llm.embed_std)).to(dev)[None]
    m.requires_grad_(True)
    opt = torch.optim.AdamW([E, m], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    best, best_acc, start = -1.0, [0.0] * len(targets), 0
    if resume is not None:
        with torch.no_grad():
            E.copy_(resume["E"])
            m.copy_(resume["m"])
        opt.load_state_dict(copy.deepcopy(resume["opt"]))
        best, best_acc, start, t0 = resume["best"], list(resume["best_acc"]), resume["step"], t0 - resume["seconds"]
    step = start
    for step in range(start, cfg.max_steps + 1):
        if on_snapshot is not None and step > start and step % snapshot_every == 0:
            on_snapshot({"E": E.detach().cpu().clone(), "m": m.detach().cpu().clone(),
                         "opt": copy.deepcopy(opt.state_dict()), "best": best, "best_acc": list(best_acc),
                         "step": step, "seconds": time.perf_counter() - t0})
        rec = reconstruction_loss(llm, E, m, targets, layout, cfg.precision)
        acc = rec.acc.cpu()
        if float(acc.min()) >= cfg.target_acc:  # all there in the fit's pass: do they hold in fp32 too?
            acc = fp32_checked(llm, E, m, targets, layout, cfg, acc)
        if float(acc.mean()) > best:
            best, best_acc = float(acc.mean()), acc.tolist()
        if float(acc.min()) >= cfg.target_acc or step == cfg.max_steps:
            break
        opt.zero_grad(set_to_none=True)
        rec.ce.sum().backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(cfg, step)
        opt.step()
    return best_acc, step, time.perf_counter() - t0


def capacity_shared(llm: FrozenLLM, texts: list[str], ns: list[int], cfg: FitConfig, threshold: float = 0.99,
                    on_result=None, skip: set[int] = frozenset(), resume: dict | None = None,
                    on_snapshot=None, snapshot_every: int = 50) -> list[dict]:
    """Shared-m mode: for each N not in `skip`, every text at least N tokens long fitted with one m. `resume`
    ({"n": N, "fit": a `fit_shared_m` state}) goes on with N's fit; on_snapshot gets such dicts."""
    ids = [llm.encode(t) for t in texts]
    rows = []
    for n in ns:
        which = [i for i, x in enumerate(ids) if n <= len(x)]
        if n in skip or not which:
            continue
        saved = resume["fit"] if resume and resume.get("n") == n else None
        snap = (lambda st, n=n: on_snapshot({"n": n, "fit": st})) if on_snapshot else None
        accs, steps, secs = fit_shared_m(llm, [ids[i][:n] for i in which], cfg, key=f"shared/{n}", resume=saved,
                                         on_snapshot=snap, snapshot_every=snapshot_every)
        for i, a in zip(which, accs):
            rows.append(_row("shared", i, n, a, steps, secs, threshold))
            if on_result:
                on_result(rows[-1])
    return rows


def largest_n(rows: list[dict]) -> dict[int, int]:
    """{text: largest N reconstructed (0: none)} over the given rows (one mode)."""
    out: dict[int, int] = {}
    for r in rows:
        if r["reconstructed"]:
            out[r["text"]] = max(out.get(r["text"], 0), r["n"])
        else:
            out.setdefault(r["text"], 0)
    return out


def plot_capacity(rows: list[dict], path: str | Path, threshold: float) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (mode, ls) in (("per-text", "-"), ("shared", "--")):
        for t in sorted({r["text"] for r in rows if r["mode"] == mode}):
            pts = sorted((r["n"], r["accuracy"]) for r in rows if r["text"] == t and r["mode"] == mode)
            ax.plot(*zip(*pts), marker="o", ls=ls, color=f"C{t % 10}", label=f"text {t}, {mode} m")
    ax.axhline(threshold, color="grey", ls=":", label=f"{threshold}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (tokens)")
    save_figure(fig, path, ylabel="token accuracy")


def run_capacity(out_dir: str | Path, cfg: CapacityConfig = CapacityConfig(), *, llm: FrozenLLM,
                 texts: list[str] | None = None, fit: FitConfig | None = None, on_result=None,
                 snapshot_every: int = 50) -> dict:
    """The `nar analyze capacity` job: `cfg.texts` long bundled texts (or `texts`), fitted with cfg's fit
    settings (or `fit`) at every N of cfg.ns, in cfg.m's modes; resumes from the rows already in out_dir, and
    the fits that were in progress from their state at the last multiple of `snapshot_every` steps."""
    from nar.data import long_texts

    ns, threshold, fit = list(cfg.ns), cfg.threshold, fit or cfg.fit_config()
    texts = texts or long_texts(llm, cfg.texts, max(ns))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RowLog(out, "capacity", [llm.fingerprint, texts, fit.to_dict(), threshold])
    done = log.rows()

    def record(row: dict) -> None:
        log.record(row)
        if on_result:
            on_result(row)

    def keep(tag: str):
        return lambda state: log.save_state(tag, state)

    modes = ("per-text", "shared") if cfg.m == "both" else (cfg.m,)
    if "per-text" in modes:
        capacity(llm, texts, ns, fit, threshold, on_result=record,
                 skip={(r["text"], r["n"]) for r in done if r["mode"] == "per-text"},
                 resume=log.load_state("per-text"), on_snapshot=keep("per-text"), snapshot_every=snapshot_every)
        log.clear_state("per-text")
    if "shared" in modes:
        capacity_shared(llm, texts, ns, fit, threshold, on_result=record,
                        skip={r["n"] for r in done if r["mode"] == "shared"},
                        resume=log.load_state("shared"), on_snapshot=keep("shared"), snapshot_every=snapshot_every)
        log.clear_state("shared")
    rows = sorted(log.rows(), key=lambda x: (x["mode"], x["text"], x["n"]))
    plot_capacity(rows, out / "capacity.png", threshold)
    per_mode = {mode: largest_n([r for r in rows if r["mode"] == mode]) for mode in modes}
    summary = {"llm": llm.fingerprint, "config": cfg.to_dict(), "texts": len(texts), "ns": ns, "threshold": threshold,
               "fit_config": fit.to_dict(), "resumed_rows": len(done),
               **{f"largest_n_per_text{'' if mode == 'per-text' else '_shared'}": best
                  for mode, best in per_mode.items()},
               **{f"largest_n_{stat}{'' if mode == 'per-text' else '_shared'}": (f(best.values()) if best else None)
                  for mode, best in per_mode.items() for stat, f in (("median", statistics.median), ("max", max))}}
    files = write_report(out, "capacity", summary, rows)
    return {**summary, "rows": rows, "files": {**files, "png": str(out / "capacity.png"), "rows": str(log.path)}}

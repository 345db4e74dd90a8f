"""Are two solutions of the same text connected? (Paper A: the straight line between two solutions
fails, a quadratic Bezier curve with a trained control point connects them.)

theta = (e, m). Line: theta(t) = (1-t) theta_a + t theta_b.
Curve: theta(t) = (1-t)^2 theta_a + 2 t (1-t) c + t^2 theta_b, with c trained (AdamW) to minimise the
mean reconstruction cross-entropy at random t in [0, 1], starting at the midpoint of the line, until every
grid point of the curve decodes the text exactly (checked every `check_every` steps) or the step budget ends.
Accuracies along both paths are those of the default decoding (fp32). Texts are done one at a time and each
finished one is appended to `connectivity-rows.jsonl` in the output folder, so a killed job resumes where it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nar.analysis.report import RowLog, figure, save_figure, write_report
from nar.config import ConnectivityConfig, FitConfig
from nar.decode import decode_ids, token_accuracy
from nar.fit import FitItem, fit_stream, make_layout
from nar.llm import FrozenLLM, Layout
from nar.losses import reconstruction_loss


def bezier(a: torch.Tensor, c: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """a, c, b: (D,); t: (K,) -> (K, D)."""
    t = t[:, None]
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t**2 * b


def train_control_point(llm: FrozenLLM, ids: list[int], a: tuple, b: tuple, layout: Layout, *, steps: int = 200,
                        lr: float = 1e-2, samples: int = 8, precision: str = "auto", seed: int = 0,
                        grid: int = 11, check_every: int = 50) -> tuple:
    """The control point (c_e, c_m) of a Bezier curve joining solutions a=(e, m) and b=(e, m), and the steps
    trained: stops early once all `grid` points of the curve reconstruct the text (fp32)."""
    g = torch.Generator().manual_seed(seed)
    dev = llm.device
    ce_p = ((a[0] + b[0]) / 2).clone().to(dev).requires_grad_(True)
    cm_p = ((a[1] + b[1]) / 2).clone().to(dev).requires_grad_(True)
    opt = torch.optim.AdamW([ce_p, cm_p], lr=lr, betas=(0.9, 0.9), weight_decay=0.0)
    ae, am, be, bm = (x.to(dev) for x in (*a, *b))
    ts = torch.linspace(0, 1, grid).to(dev)
    step = 0
    for step in range(1, steps + 1):
        t = torch.rand(samples, generator=g).to(dev)
        E, M = bezier(ae, ce_p, be, t), bezier(am, cm_p, bm, t)
        loss = reconstruction_loss(llm, E, M, [ids] * samples, layout, precision).ce.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % check_every == 0 and min(path_accuracy(llm, ids, bezier(ae, ce_p.detach(), be, ts),
                                                         bezier(am, cm_p.detach(), bm, ts), layout)) >= 1.0:
            break
    return ce_p.detach().cpu(), cm_p.detach().cpu(), step


def path_accuracy(llm: FrozenLLM, ids: list[int], E: torch.Tensor, M: torch.Tensor, layout: Layout,
                  precision: str = "fp32") -> list[float]:
    pred = decode_ids(llm, E, M, [len(ids)] * E.shape[0], layout, precision=precision)
    return [token_accuracy(p, ids) for p in pred]


def connectivity(llm: FrozenLLM, texts: list[str], cfg: FitConfig, layout: Layout, *, seeds=(0, 1),
                 grid: int = 11, curve_steps: int = 200, skip: set[int] = frozenset(), on_result=None) -> list[dict]:
    """For each text (its index not in `skip`): fit two solutions from different seeds, then accuracy along the
    line and the curve; on_result(row) as each text finishes (one text at a time, so a long job can resume)."""
    ts = torch.linspace(0, 1, grid)
    rows = []
    for i, text in enumerate(texts):
        if i in skip:
            continue
        items = [FitItem(key=f"{i}/{s}", ids=llm.encode(text), init_key=f"{text}#seed{s}") for s in seeds]
        sols = {r.key: r for r in fit_stream(llm, items, cfg)}
        ra, rb = sols[f"{i}/{seeds[0]}"], sols[f"{i}/{seeds[1]}"]
        ids = ra.token_ids
        line_e = (1 - ts)[:, None] * ra.e + ts[:, None] * rb.e
        line_m = (1 - ts)[:, None] * ra.m + ts[:, None] * rb.m
        line = path_accuracy(llm, ids, line_e, line_m, layout)
        c_e, c_m, used = train_control_point(llm, ids, (ra.e, ra.m), (rb.e, rb.m), layout, steps=curve_steps,
                                             precision=cfg.precision, grid=grid)
        curve = path_accuracy(llm, ids, bezier(ra.e, c_e, rb.e, ts), bezier(ra.m, c_m, rb.m, ts), layout)
        rows.append({"index": i, "text": text, "n_tokens": len(ids), "acc_a": ra.accuracy, "acc_b": rb.accuracy,
                     "cos_e_ab": float(F.cosine_similarity(ra.e, rb.e, dim=0)),
                     "cos_m_ab": float(F.cosine_similarity(ra.m, rb.m, dim=0)),
                     "line_min_acc": min(line), "curve_min_acc": min(curve), "curve_steps": used,
                     "connected": min(curve) >= 1.0 and min(ra.accuracy, rb.accuracy) >= 1.0,
                     "line": line, "curve": curve})
        if on_result:
            on_result(rows[-1])
    return rows


def plot_paths(rows: list[dict], path: str | Path) -> None:
    plt = figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, r in enumerate(rows):
        ts = np.linspace(0, 1, len(r["line"]))
        ax.plot(ts, r["line"], "--", color=f"C{k}", label=f"text {k}: line")
        ax.plot(ts, r["curve"], "-", color=f"C{k}", label=f"text {k}: Bezier")
    ax.set_xlabel("t (solution a -> solution b)")
    save_figure(fig, path, ylabel="token accuracy")


def run_connectivity(out_dir: str | Path, cfg: ConnectivityConfig = ConnectivityConfig(), *, llm: FrozenLLM,
                     texts: list[str] | None = None, fit: FitConfig | None = None) -> dict:
    """The `nar analyze connectivity` job: the first cfg.texts lines of cfg.file (or `texts`), fitted with
    cfg's settings (or `fit`)."""
    from nar.assets import path

    fit = fit or cfg.fit_config()
    if texts is None:
        file = path("demo.txt") if cfg.file is None else Path(cfg.file)
        texts = [x for x in file.read_text(encoding="utf-8").splitlines() if x.strip()][: cfg.texts]
    layout = make_layout(llm, fit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = RowLog(out, "connectivity", [llm.fingerprint, texts, fit.to_dict(), cfg.grid, cfg.curve_steps])
    connectivity(llm, texts, fit, layout, grid=cfg.grid, curve_steps=cfg.curve_steps,
                 skip={r["index"] for r in log.rows()}, on_result=log.record)
    rows = sorted(log.rows(), key=lambda r: r["index"])
    plot_paths(rows, out / "connectivity.png")
    summary = {"texts": len(rows), "resumed_rows": log.resumed, "llm": llm.fingerprint, "config": cfg.to_dict(),
               "fit_config": fit.to_dict(),
               "mean_line_min_acc": float(np.mean([r["line_min_acc"] for r in rows])),
               "mean_curve_min_acc": float(np.mean([r["curve_min_acc"] for r in rows])),
               "connected": sum(r["connected"] for r in rows)}
    flat = [{k: v for k, v in r.items() if k not in ("line", "curve")} for r in rows]
    files = write_report(out, "connectivity", {**summary, "paths": rows}, flat)
    return {**summary, "rows": flat, "files": {**files, "png": str(out / "connectivity.png"), "rows": str(log.path)}}

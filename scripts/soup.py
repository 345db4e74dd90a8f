"""A model soup: average the weights of encoder checkpoints fine-tuned from the same start.

(docs/ENCODER.md, "Sixteenth session".) Fine-tunes of one checkpoint that differ only in seed or in a small option
often sit in one basin, where the average of their weights can score above each of them (Wortsman et al., 2022).

    python scripts/soup.py OUT CHECKPOINT CHECKPOINT [CHECKPOINT ...]

Every checkpoint must hold the same tensors with the same shapes (the same encoder layout); non-float tensors
(token-shape tables, masks) must be equal and are copied. OUT gets the first checkpoint's config.json and the
averaged model.safetensors, so `nar eval-encoder OUT` and scripts/generalisation_probe.py read it as any checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def soup(tensors: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    first = tensors[0]
    for i, other in enumerate(tensors[1:], 1):
        if other.keys() != first.keys():
            raise SystemExit(f"checkpoint {i} holds other tensors than checkpoint 0: "
                             f"{sorted(other.keys() ^ first.keys())[:5]}")
    out = {}
    for name, ref in first.items():
        if any(t[name].shape != ref.shape for t in tensors):
            raise SystemExit(f"{name}: shapes differ between checkpoints")
        if ref.is_floating_point():
            out[name] = torch.stack([t[name].float() for t in tensors]).mean(0).to(ref.dtype)
        elif all(torch.equal(t[name], ref) for t in tensors):
            out[name] = ref
        else:
            raise SystemExit(f"{name}: a non-float tensor differs between checkpoints, cannot average it")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("checkpoints", type=Path, nargs="+")
    args = ap.parse_args()
    if len(args.checkpoints) < 2:
        raise SystemExit("a soup needs at least two checkpoints")
    tensors = [load_file(str(c / "model.safetensors")) for c in args.checkpoints]
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(soup(tensors), str(args.out / "model.safetensors"))
    shutil.copy(args.checkpoints[0] / "config.json", args.out / "config.json")
    print(f"{args.out}: mean of {len(tensors)} checkpoints")


if __name__ == "__main__":
    main()

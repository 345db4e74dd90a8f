"""A model soup: average the weights of encoder checkpoints fine-tuned from the same start.

(docs/ENCODER.md, "Sixteenth session".) Fine-tunes of one checkpoint that differ only in seed or in a small option
often sit in one basin, where the average of their weights can score above each of them (Wortsman et al., 2022).

    python scripts/soup.py OUT CHECKPOINT CHECKPOINT [CHECKPOINT ...]

Every checkpoint must have the same encoder options, LLM, reader and layout (config.json) and hold the same tensors
with the same shapes; non-float tensors (known-token masks, word shapes) must be equal and are copied. OUT gets the
averaged model.safetensors and the first checkpoint's config.json with `soup_of` (the paths) in place of its
training state, so `nar eval-encoder OUT` and scripts/generalisation_probe.py read it as any checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nar.artifacts import atomic_dir

SAME = ("encoder_config", "llm", "reader", "layout", "stop_at_eos")
"""config.json entries that must agree between the checkpoints of a soup."""


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
    configs = [json.loads((c / "config.json").read_text()) for c in args.checkpoints]
    for c, cfg in zip(args.checkpoints[1:], configs[1:]):
        differ = [k for k in SAME if cfg.get(k) != configs[0].get(k)]
        if differ:
            raise SystemExit(f"{c} differs from {args.checkpoints[0]} in {', '.join(differ)}: not one model to average")
    tensors = [load_file(str(c / "model.safetensors")) for c in args.checkpoints]
    config = {k: v for k, v in configs[0].items() if k != "train_state"}
    config["soup_of"] = [str(c) for c in args.checkpoints]

    def write(tmp: Path) -> None:
        save_file(soup(tensors), str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")

    atomic_dir(args.out, write)
    print(f"{args.out}: mean of {len(tensors)} checkpoints")


if __name__ == "__main__":
    main()

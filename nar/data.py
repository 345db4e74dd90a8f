"""Reading inputs through `datasets`: files, saved datasets, hub names; columns and ids; the (source, target)
pairs the encoder trains and is evaluated on; the STS-B sentence sets."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nar import corpus as corpus_store
from nar.config import BuildConfig, TrainConfig
from nar.errors import NarError
from nar.llm import FrozenLLM, Layout

log = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
             ".txt": "text"}


@dataclass
class Row:
    id: str
    source: str
    target: str


@dataclass
class ReadStats:
    rows: int = 0
    skipped_empty: int = 0
    skipped_missing: int = 0
    skipped_duplicate: int = 0
    other_ranks: int = 0
    counts: dict = field(default_factory=dict)


def load_dataset_any(spec: str, split: str = "train"):
    """A `datasets.Dataset` from a local file, a folder saved with `save_to_disk`, or a hub name (without
    `datasets`' own progress bars: nar reports progress, and a --json run keeps stderr to one line on error)."""
    import datasets

    was = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return _load_dataset(spec, split)
    finally:
        if not was:
            datasets.enable_progress_bars()


def _load_dataset(spec: str, split: str):
    import datasets

    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise NarError(f"{spec} has splits {sorted(ds)}, not {split!r}; pass --split")
                ds = ds[split]
            return ds
        if path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise NarError(f"cannot read {spec}: unknown file type {path.suffix!r} "
                               f"(use one of {sorted(_BUILDERS)})")
            if builder != "parquet":
                check_text_file(path)
            kwargs = {"delimiter": "\t", "quoting": 3} if path.suffix.lower() == ".tsv" else {}
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        if spec.startswith((".", "/", "~")) or path.suffix.lower() in _BUILDERS:
            raise NarError(f"cannot read {spec}: no such file or folder")
        return datasets.load_dataset(spec, split=split)
    except NarError:
        raise
    except Exception as exc:  # datasets raises many types (DatasetNotFoundError, ArrowInvalid, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NarError(f"cannot read {spec}: {first}") from exc


def check_text_file(path: Path) -> None:
    """Refuse, with the file and line, what `datasets` would fail on obscurely: an empty file, bytes that are not
    UTF-8. Streams the file line by line (no second copy of a large input in memory)."""
    seen_text = False
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                seen_text = bool(line.decode("utf-8").strip()) or seen_text
            except UnicodeDecodeError as exc:
                raise NarError(f"{path}:{line_no}:{exc.start + 1}: byte 0x{line[exc.start]:02x} is not UTF-8; convert "
                               f"the file, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}") from None
    if not seen_text:
        raise NarError(f"{path} is empty: there are no rows to read")


def row_id(source: str, target: str) -> str:
    """Stable id of a row without an id column, so reruns skip it (resume)."""
    return hashlib.sha1(f"{source}\x1f{target}".encode()).hexdigest()[:16]


def read_rows(cfg: BuildConfig) -> tuple[list[Row], ReadStats]:
    """Rows for this worker (rank), with empty and duplicate rows skipped and counted."""
    ds = load_dataset_any(cfg.input, cfg.split)
    cols = list(ds.column_names)
    if cfg.source_column is not None:
        src_col, tgt_col = cfg.source_column, cfg.target_column
    else:
        src_col = tgt_col = cfg.text_column or "text"
    for c in {src_col, tgt_col}:
        if c not in cols:
            hint = ("" if cfg.text_column or cfg.source_column
                    else " (pass --text-column, or --source-column with --target-column)")
            raise NarError(f"{cfg.input} has no column {c!r}; its columns are {cols}{hint}")
    id_col = cfg.id_column or ("id" if "id" in cols else None)
    if id_col is not None and id_col not in cols:
        raise NarError(f"{cfg.input} has no id column {id_col!r}; its columns are {cols}")
    if cfg.limit is not None:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    sources, targets = ds[src_col], ds[tgt_col]
    ids = ds[id_col] if id_col else [None] * len(ds)
    for col, values in {src_col: sources, tgt_col: targets}.items():
        if getattr(ds.features[col], "dtype", None) in ("string", "large_string"):
            continue  # one type per column (Arrow): only a non-text column needs its first bad row found
        bad = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if bad is not None:
            raise NarError(f"{cfg.input}: row {bad + 1}: column {col!r} holds {type(values[bad]).__name__} "
                           f"{values[bad]!r}, not text; quote it in the file if it is meant as text")
    stats = ReadStats()
    rows, seen = [], set()
    for i, (s, t, k) in enumerate(zip(sources, targets, ids)):
        stats.rows += 1
        if i % cfg.world_size != cfg.rank:
            stats.other_ranks += 1
            continue
        if t is None:
            stats.skipped_missing += 1
            continue
        if not t.strip():
            stats.skipped_empty += 1
            continue
        s = "" if s is None else str(s)
        rid = str(k) if k is not None else row_id(s, str(t))
        if rid in seen:
            stats.skipped_duplicate += 1
            continue
        seen.add(rid)
        rows.append(Row(rid, s, str(t)))
    if stats.skipped_missing:
        log.warning("%s: %d of %d rows have no %r value (missing or null) and were skipped; check the column name",
                    cfg.input, stats.skipped_missing, stats.rows, tgt_col)
    return rows, stats


def bundled_texts() -> list[dict]:
    """The 320 bundled texts ({id, text, group?}; see nar/assets/README.md)."""
    import json

    from nar.assets import path

    return [json.loads(x) for x in path("texts.jsonl").read_text().splitlines() if x.strip()]


def long_texts(llm, k: int, min_tokens: int) -> list[str]:
    """k texts of at least `min_tokens` tokens, each the bundled texts joined in order (for capacity)."""
    rows = [r["text"] for r in bundled_texts()]
    out, cur = [], []
    for t in rows:
        cur.append(t)
        if len(llm.encode(" ".join(cur))) >= min_tokens:
            out.append(" ".join(cur))
            cur = []
            if len(out) == k:
                return out
    raise NarError(f"the bundled texts give only {len(out)} texts of {min_tokens}+ tokens")


def stsb_sentences(stsb_dir: str | Path, out_dir: str | Path) -> dict:
    """Unique STS Benchmark sentences for autoencoding: train.tsv -> stsb-train.jsonl, dev.tsv -> stsb-dev.jsonl
    (dev sentences that also occur in train are dropped, so held-out means unseen). Returns the counts."""
    import csv
    import json

    stsb_dir, out_dir = Path(stsb_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    counts = {}
    for split in ("train", "dev"):
        path = stsb_dir / f"{split}.tsv"
        try:
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        except OSError as exc:
            raise NarError(f"cannot read {path}: {exc.strerror}") from exc
        if not rows or not {"sentence1", "sentence2"} <= set(rows[0]):
            raise NarError(f"{path} is not an STS Benchmark file (no sentence1/sentence2 columns)")
        texts = []
        for r in rows:
            for s in (r["sentence1"], r["sentence2"]):
                s = (s or "").strip()
                if s and s not in seen:
                    seen.add(s)
                    texts.append(s)
        out = out_dir / f"stsb-{split}.jsonl"
        tmp = out.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
        tmp.replace(out)
        counts[split] = len(texts)
    return {"out": str(out_dir), **counts}


# ----------------------------------------------------------------------------------------------
# Encoder training and evaluation data: (source, target) pairs from a file or a corpus folder


@dataclass
class Pairs:
    """Training or evaluation texts: sources, target token ids (EOS appended when the run uses it), and,
    from a corpus folder, the fitted proto-tokens."""

    ids: list[str]
    sources: list[str]
    targets: list[str]
    token_ids: list[list[int]]
    e: torch.Tensor | None = None
    m: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)

    def take(self, idx: list[int]) -> Pairs:
        def pick(t):
            return (None if t is None else t[idx])
        return Pairs([self.ids[i] for i in idx], [self.sources[i] for i in idx], [self.targets[i] for i in idx],
                     [self.token_ids[i] for i in idx], pick(self.e), pick(self.m), self.stats)

    def __len__(self) -> int:
        return len(self.ids)


def is_corpus(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def load_pairs(path: str | Path, llm: FrozenLLM, cfg: TrainConfig) -> Pairs:
    """Pairs from a data file (any format nar.data reads) or a corpus folder; targets over max_tokens skipped."""
    if is_corpus(path):
        return _corpus_pairs(path, cfg)
    ds = load_dataset_any(str(path))
    src_col, tgt_col = (cfg.source_column, cfg.target_column) if cfg.source_column else (cfg.text_column,) * 2
    for c in {src_col, tgt_col}:
        if c not in ds.column_names:
            raise NarError(f"{path} has no column {c!r}; its columns are {ds.column_names} (pass --text-column, "
                           "or --source-column with --target-column)")
    eos = llm.eos_id if cfg.append_eos else None
    if cfg.append_eos and eos is None:
        raise NarError(f"model {llm.name} has no EOS token; drop --append-eos")
    rows, empty = {}, 0
    for s, t in zip(ds[src_col], ds[tgt_col]):
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            empty += 1
        else:
            rows.setdefault(row_id(s, t), (s, t))
    # one batched call: the tokenizer is the slow part of reading 10k+ texts one by one
    all_ids = llm.tokenizer([t for _, t in rows.values()], add_special_tokens=False).input_ids if rows else []
    out, long = Pairs([], [], [], []), 0
    for (key, (s, t)), ids in zip(rows.items(), all_ids):
        ids = list(ids) + ([eos] if eos is not None else [])
        if len(ids) > cfg.max_tokens:
            long += 1
            continue
        out.ids.append(key)
        out.sources.append(s)
        out.targets.append(t)
        out.token_ids.append(ids)
    out.stats = {"read": len(ds), "kept": len(out), "skipped_long": long, "skipped_empty": empty,
                 "skipped_duplicate": len(ds) - len(out) - long - empty}
    if len(out) < 2:
        raise NarError(f"{path}: {len(out)} usable texts of <= {cfg.max_tokens} tokens; need at least 2")
    return out


def _corpus_pairs(path: str | Path, cfg: TrainConfig) -> Pairs:
    cols = corpus_store.columns(path, ("id", "source", "target", "token_ids", "accuracy", "e", "m"), rows="ok")
    keep = [i for i, a in enumerate(cols["accuracy"]) if a >= cfg.min_accuracy - 1e-6]
    if len(keep) < 2:
        raise NarError(f"corpus {path} has {len(keep)} rows at accuracy >= {cfg.min_accuracy}; need at least 2")
    return Pairs(ids=[cols["id"][i] for i in keep], sources=[cols["source"][i] or cols["target"][i] for i in keep],
                 targets=[cols["target"][i] for i in keep], token_ids=[list(cols["token_ids"][i]) for i in keep],
                 e=torch.as_tensor(cols["e"][keep]).float(), m=torch.as_tensor(cols["m"][keep]).float(),
                 stats={"read": len(cols["id"]), "kept": len(keep)})


def llm_for(data: str | Path | None, model: str, device: str = "auto") -> FrozenLLM:
    """The frozen LLM a training or evaluation run uses: a corpus folder's own, else `model`."""
    if data is not None and is_corpus(data):
        from nar.frame import corpus_llm

        return corpus_llm(data, device=device)[0]
    from nar.llm import load_llm

    return load_llm(model, device=device)


def split(n: int, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(val_frac * n))
    return sorted(order[n_val:]), sorted(order[:n_val])


def run_layout(llm: FrozenLLM, data: str | Path) -> tuple[Layout, bool]:
    """The layout to train for: a corpus's own, else Paper A's with the BOS prefix (nar's fitting default)."""
    if is_corpus(data):
        from nar.frame import corpus_llm

        _, layout, _ = corpus_llm(data, llm)
        return layout, bool(corpus_store.read_manifest(data).get("fit_config", {}).get("append_eos"))
    return Layout(prefix_ids=llm.resolve_prefix("bos")), False


def train_val_splits(data: str | Path, llm: FrozenLLM, cfg: TrainConfig) -> tuple[Pairs, Pairs]:
    """(training pairs, held-out pairs) of a run: the val_data file or the seeded val_frac split, and, with
    cfg.limit, a seeded subset of the training pairs. Training and evaluation both take them from here."""
    pairs = load_pairs(data, llm, cfg)
    if cfg.val_data:
        train, val = pairs, load_pairs(cfg.val_data, llm, cfg)
    else:
        tr, va = split(len(pairs), cfg.val_frac, cfg.seed)
        train, val = pairs.take(tr), pairs.take(va)
    if cfg.limit is not None and cfg.limit < len(train):
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        train = train.take(sorted(order[: cfg.limit]))
    return train, val


def checkpoint_splits(meta: dict, llm: FrozenLLM) -> tuple[Pairs, Pairs, TrainConfig]:
    """(training pairs, held-out pairs, training config) exactly as an encoder checkpoint's run used them."""
    tcfg = TrainConfig.from_dict(meta["train_config"])
    return (*train_val_splits(meta["data"]["train"], llm, tcfg), tcfg)

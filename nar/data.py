"""Reading inputs through `datasets`: files, saved datasets, hub names; columns and ids; the (source, target)
pairs the encoder trains and is evaluated on; the STS-B sentence sets."""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nar import corpus as corpus_store
from nar.artifacts import atomic_write_jsonl
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


STSB_GENRES = {"main-news": "news", "main-captions": "captions", "main-forums": "forums"}
"""STS-B's genre column (GLUE layout: the first column) -> the genre nar reports by."""


def text_key(text: str) -> str:
    """The de-duplication key of a sentence: lower-cased, every character that is not a letter or digit dropped
    (the key the shared training texts were de-duplicated against STS-B dev and test with)."""
    return "".join(c for c in text.lower() if c.isalnum() and c.isascii())


def bundled_data(name: str) -> Path:
    """A text file shipped in the repository's data/ folder (data/NAME/NAME.txt.gz; data/README.md), found from
    the working directory as recipes are (commands run from the repository root)."""
    path = Path("data") / name / f"{name}.txt.gz"
    if not path.is_file():
        raise NarError(f"{path} is missing: the bundled text sets live in the repository's data/ folder; run from "
                       "the repository root, give the file, or pass --no-bundled")
    return path


def _stsb_rows(path: Path) -> list[dict]:
    import csv

    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as exc:
        raise NarError(f"cannot read {path}: {exc.strerror}") from exc
    head = rows[0] if rows else []
    if not {"sentence1", "sentence2"} <= set(head):
        raise NarError(f"{path} is not an STS Benchmark file (no sentence1/sentence2 columns)")
    a, b = head.index("sentence1"), head.index("sentence2")
    g = head.index("genre") if "genre" in head else None
    out = []
    for r in rows[1:]:
        genre = STSB_GENRES.get(r[g], r[g]) if g is not None and g < len(r) else ""
        for k in (a, b):
            if k < len(r):
                out.append({"text": r[k].strip(), "genre": genre})
    return out


def _lines(path: str | Path) -> list[str]:
    import gzip

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [x.strip() for x in f]
    except OSError as exc:
        raise NarError(f"cannot read {path}: {exc.strerror or exc}") from exc


def make_data(out_dir: str | Path, *, stsb: str | Path | None = None, texts: dict[str, str | Path] | None = None,
              per_source: int | None = None) -> dict:
    """The encoder's training and evaluation text, as .jsonl files under `out_dir`:

    - with `stsb` (a folder holding STS-B's train.tsv and dev.tsv): stsb-dev.jsonl (unique dev sentences not in
      train, with their genre: news, captions, forums) and stsb-train.jsonl (unique train sentences);
    - for each (name, file) of `texts` (one text per line, .txt or .txt.gz): NAME.jsonl, at most `per_source`
      lines of it (the files are shuffled, so the first lines are a random sample);
    - encoder-train.jsonl: the union of every training set above, in that order, each sentence once.
    No training file holds a sentence equal (case and punctuation ignored, `text_key`) to an STS-B dev sentence, so
    any of them, or the union, can be trained on and judged on stsb-dev.jsonl. Returns the counts written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    held: set[str] = set()
    union: list[dict] = []
    seen: set[str] = set()

    def add(rows: list[dict], name: str) -> None:  # rows of a training file: non-empty, none held out already
        kept = 0
        for r in rows:
            k = text_key(r["text"])
            if k not in seen:
                seen.add(k)
                union.append({"text": r["text"], "source": name})
                kept += 1
        counts[f"{name} (in encoder-train)"] = kept

    if stsb is not None:
        stsb = Path(stsb)
        train, dev = _stsb_rows(stsb / "train.tsv"), _stsb_rows(stsb / "dev.tsv")
        train_texts = {r["text"] for r in train}
        dev_rows, dev_seen = [], set()
        for r in dev:
            if r["text"] and r["text"] not in train_texts and r["text"] not in dev_seen:
                dev_seen.add(r["text"])
                dev_rows.append(r)
        held = {text_key(r["text"]) for r in dev_rows}
        train_rows = list({r["text"]: {"text": r["text"], "genre": r["genre"]}
                           for r in train if r["text"] and text_key(r["text"]) not in held}.values())
        atomic_write_jsonl(out_dir / "stsb-train.jsonl", train_rows)
        atomic_write_jsonl(out_dir / "stsb-dev.jsonl", dev_rows)
        counts["stsb-train"], counts["stsb-dev"] = len(train_rows), len(dev_rows)
        add(train_rows, "stsb")
    for name, path in (texts or {}).items():
        rows = [{"text": t} for t in _lines(path) if t and text_key(t) not in held][:per_source]
        atomic_write_jsonl(out_dir / f"{name}.jsonl", rows)
        counts[name] = len(rows)
        add(rows, name)
    if not union:
        raise NarError("nothing to write: give --stsb and/or text files (--flickr8k, --headlines, --forums)")
    atomic_write_jsonl(out_dir / "encoder-train.jsonl", union)
    counts["encoder-train"] = len(union)
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
    groups: list[str] | None = None
    """Each text's group (a 'genre' column of the data file, e.g. STS-B dev's news / captions / forums), or None."""

    def take(self, idx: list[int]) -> Pairs:
        def pick(t):
            return (None if t is None else t[idx])
        return Pairs([self.ids[i] for i in idx], [self.sources[i] for i in idx], [self.targets[i] for i in idx],
                     [self.token_ids[i] for i in idx], pick(self.e), pick(self.m), self.stats,
                     None if self.groups is None else [self.groups[i] for i in idx])

    def __len__(self) -> int:
        return len(self.ids)


def is_corpus(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def columns_of(cfg: TrainConfig) -> tuple[str, str]:
    """(source column, target column) of a run: the target is the source itself unless given."""
    return cfg.source_column, cfg.target_column or cfg.source_column


def load_pairs(path: str | Path, llm: FrozenLLM, cfg: TrainConfig) -> Pairs:
    """Pairs from a data file (any format nar.data reads) or a corpus folder, in memory (held-out and evaluation
    sets; training reads a `TextMixture`); duplicate rows dropped, targets over max_tokens skipped."""
    if is_corpus(path):
        return _corpus_pairs(path)
    ds = load_dataset_any(str(path))
    src_col, tgt_col = columns_of(cfg)
    for c in {src_col, tgt_col}:
        if c not in ds.column_names:
            raise NarError(f"{path} has no column {c!r}; its columns are {ds.column_names} (pass --source-column, "
                           "and --target-column for pairs)")
    rows, empty = {}, 0
    genres = ds["genre"] if "genre" in ds.column_names else [None] * len(ds)
    for s, t, g in zip(ds[src_col], ds[tgt_col], genres):
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            empty += 1
        else:
            rows.setdefault(row_id(s, t), (s, t, g))
    out = _tokenised(list(rows), [r[0] for r in rows.values()], [r[1] for r in rows.values()], llm, cfg)
    if "genre" in ds.column_names:
        out.groups = [str(rows[k][2]) for k in out.ids]
    long = len(rows) - len(out)
    out.stats = {"read": len(ds), "kept": len(out), "skipped_long": long, "skipped_empty": empty,
                 "skipped_duplicate": len(ds) - len(rows) - empty}
    if len(out) < 2:
        raise NarError(f"{path}: {len(out)} usable texts of <= {cfg.max_tokens} tokens; need at least 2")
    return out


def _tokenised(ids: list[str], sources: list[str], targets: list[str], llm: FrozenLLM, cfg: TrainConfig) -> Pairs:
    """Pairs of the rows whose target (+ EOS with append_eos) has 1 .. max_tokens tokens."""
    eos = llm.eos_id if cfg.append_eos else None
    if cfg.append_eos and eos is None:
        raise NarError(f"model {llm.name} has no EOS token; drop --append-eos")
    # one batched call: the tokenizer is the slow part of reading 10k+ texts one by one
    all_ids = llm.tokenizer(targets, add_special_tokens=False).input_ids if targets else []
    out = Pairs([], [], [], [])
    for key, s, t, x in zip(ids, sources, targets, all_ids):
        x = list(x) + ([eos] if eos is not None else [])
        if 1 <= len(x) <= cfg.max_tokens:
            out.ids.append(key)
            out.sources.append(s)
            out.targets.append(t)
            out.token_ids.append(x)
    return out


def _corpus_pairs(path: str | Path, min_accuracy: float = 0.99) -> Pairs:
    """The rows of a corpus folder fitted to at least `min_accuracy`, with their fitted proto-tokens."""
    cols = corpus_store.columns(path, ("id", "source", "target", "token_ids", "accuracy", "e", "m"), rows="ok")
    keep = [i for i, a in enumerate(cols["accuracy"]) if a >= min_accuracy - 1e-6]
    if len(keep) < 2:
        raise NarError(f"corpus {path} has {len(keep)} rows at accuracy >= {min_accuracy}; need at least 2")
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


def run_layout(llm: FrozenLLM, data: str | Path) -> tuple[Layout, bool]:
    """The layout to train for: a corpus's own, else Paper A's with the BOS prefix (nar's fitting default)."""
    if is_corpus(data):
        from nar.frame import corpus_llm

        _, layout, _ = corpus_llm(data, llm)
        return layout, bool(corpus_store.read_manifest(data).get("fit_config", {}).get("append_eos"))
    return Layout(prefix_ids=llm.resolve_prefix("bos")), False


# ----------------------------------------------------------------------------------------------
# Training text at scale: several sources, mixed by weight, read lazily


VAL_SHARE, VAL_MAX = 0.1, 2000
"""Without val_data: this share of the first source's usable rows (at most VAL_MAX) is held out."""


def expand(specs: tuple[str, ...] | list[str]) -> list[list[str]]:
    """Each data argument as the files (or the one folder) it names: a glob is expanded and sorted."""
    import glob

    out = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            files = sorted(glob.glob(str(Path(spec).expanduser())))
            if not files:
                raise NarError(f"--data {spec}: the pattern matches no file")
            out.append(files)
        else:
            out.append([spec])
    return out


def _open_source(files: list[str]):
    """A memory-mapped `datasets.Dataset` over the files of one data argument (Arrow cache on disk: rows are read
    when drawn, so memory does not grow with the data), or a saved dataset folder."""
    import datasets

    if len(files) == 1:
        return load_dataset_any(files[0])
    kinds = {_builder(Path(f)) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise NarError(f"one data argument must name files of one known type; got {sorted(map(str, kinds))}")
    for f in files:
        if not Path(f).is_file():
            raise NarError(f"cannot read {f}: no such file")
    was = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(kinds.pop(), data_files=files, split="train")
    except Exception as exc:
        raise NarError(f"cannot read {files[0]} ...: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        if not was:
            datasets.enable_progress_bars()


def _builder(path: Path) -> str | None:
    suffixes = [x.lower() for x in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst"):
        suffixes = suffixes[:-1]
    return _BUILDERS.get(suffixes[-1]) if suffixes else None


@dataclass
class Source:
    """One data argument: its rows (memory-mapped), and each row's target length in tokens (0: unusable)."""

    spec: str
    ds: object
    lengths: np.ndarray
    weight: float


class TextMixture:
    """The training text of `nar train-encoder`: several sources, each drawn with its weight, rows read lazily.

    On opening, one streaming pass tokenises every target once for its length (2 bytes a row are kept) and counts
    tokens (for `unk_below` and `novel_tokens`); batches then draw (source, row) pairs from a generator seeded by
    (seed, step), so the draw of a step is the same in every process, after a resume, at any number of processes.
    """

    def __init__(self, specs, weights, llm: FrozenLLM, cfg: TrainConfig, *, hold_out: bool = False,
                 show_progress: bool = False):
        if not specs:
            raise NarError("no training data: give one or more data files (or --config with data)")
        self.llm, self.cfg = llm, cfg
        self.src_col, self.tgt_col = columns_of(cfg)
        self.eos = llm.eos_id if cfg.append_eos else None
        if cfg.append_eos and self.eos is None:
            raise NarError(f"model {llm.name} has no EOS token; drop --append-eos")
        weights = list(weights) or [1.0] * len(specs)
        if len(weights) != len(specs):
            raise NarError(f"give one weight per data source ({len(specs)} sources, {len(weights)} weights)")
        self.target_counts = np.zeros(len(llm.tokenizer), dtype=np.int64)
        self.sources: list[Source] = []
        for spec, files, w in zip(specs, expand(specs), weights):
            ds = _open_source(files)
            for c in {self.src_col, self.tgt_col}:
                if c not in ds.column_names:
                    raise NarError(f"{spec} has no column {c!r}; its columns are {ds.column_names} (pass "
                                   "--source-column, and --target-column for pairs)")
            self.sources.append(Source(spec, ds, self._lengths(ds, spec, show_progress), float(w)))
        self.held = np.zeros(0, dtype=np.int64)
        if hold_out:  # rows of the first source kept out of every draw
            usable = np.flatnonzero(self.sources[0].lengths)
            n = min(VAL_MAX, max(1, round(VAL_SHARE * len(usable))))
            rng = np.random.default_rng(cfg.seed)
            self.held = np.sort(rng.choice(usable, size=n, replace=False))
            self._count([t for x in self.held_out().token_ids for t in x[: len(x) - bool(self.eos is not None)]], -1)
            self.sources[0].lengths[self.held] = 0
        total = sum(s.weight for s in self.sources if s.lengths.any())
        self.p = np.array([s.weight / total if s.lengths.any() else 0.0 for s in self.sources])
        if total == 0:
            raise NarError(f"no usable text in {', '.join(specs)}: every target is empty or longer than "
                           f"{cfg.max_tokens} tokens")
        self._pools: dict[int, list[np.ndarray]] = {}

    def _count(self, flat: list[int], sign: int) -> None:
        if flat:
            v = len(self.target_counts)
            self.target_counts += sign * np.bincount(flat, minlength=v)[:v]

    def _lengths(self, ds, spec: str, show_progress: bool) -> np.ndarray:
        from rich.progress import Progress

        out = np.zeros(len(ds), dtype=np.uint16)
        extra = 1 if self.eos is not None else 0
        with Progress(disable=not show_progress, transient=True) as prog:
            task = prog.add_task(f"reading {spec}", total=len(ds))
            for lo in range(0, len(ds), 8192):
                texts = ds[lo:lo + 8192][self.tgt_col]
                ok = [isinstance(t, str) and bool(t.strip()) for t in texts]
                ids = self.llm.tokenizer([t if k else "" for t, k in zip(texts, ok)],
                                         add_special_tokens=False).input_ids
                n = np.array([len(x) + extra if k else 0 for x, k in zip(ids, ok)])
                n[n > self.cfg.max_tokens] = 0
                out[lo:lo + len(texts)] = n
                flat = [t for x, k, m in zip(ids, ok, n) if k and m for t in x]
                self._count(flat, +1)
                prog.update(task, advance=len(texts))
        return out

    @property
    def stats(self) -> dict:
        return {"sources": [{"data": s.spec, "rows": len(s.lengths), "usable": int(np.count_nonzero(s.lengths)),
                             "weight": s.weight, "share": round(float(p), 4)} for s, p in zip(self.sources, self.p)],
                "read": sum(len(s.lengths) for s in self.sources),
                "kept": sum(int(np.count_nonzero(s.lengths)) for s in self.sources),
                "held_out": len(self.held)}

    def __len__(self) -> int:
        return self.stats["kept"]

    def pools(self, cap: int) -> list[np.ndarray]:
        """Per source, the rows whose target has at most `cap` tokens."""
        if cap not in self._pools:
            self._pools[cap] = [np.flatnonzero((s.lengths > 0) & (s.lengths <= cap)) for s in self.sources]
        return self._pools[cap]

    def draw(self, n: int, seed: int, cap: int | None = None) -> list[tuple[int, int]]:
        """n (source, row) pairs: a source by weight, then a row of it uniformly, among targets of <= cap tokens
        (a source with none is skipped). Depends on (n, seed, cap) only."""
        pools = self.pools(cap or self.cfg.max_tokens)
        p = np.array([pi if len(pool) else 0.0 for pi, pool in zip(self.p, pools)])
        if p.sum() == 0:  # the curriculum's first caps may hold nothing: take the shortest targets
            return self.draw(n, seed, None if cap is None else cap + 1)
        rng = np.random.default_rng(seed)
        which = rng.choice(len(self.sources), size=n, p=p / p.sum())
        return [(int(k), int(pools[k][rng.integers(len(pools[k]))])) for k in which]

    def pairs(self, refs: list[tuple[int, int]]) -> Pairs:
        """The drawn rows as Pairs (read from the memory-mapped sources, targets tokenised in one call)."""
        rows = [self.sources[k].ds[i] for k, i in refs]
        sources = [str(r[self.src_col]) for r in rows]
        targets = [str(r[self.tgt_col]) for r in rows]
        return _tokenised([row_id(s, t) for s, t in zip(sources, targets)], sources, targets, self.llm, self.cfg)

    def held_out(self) -> Pairs:
        return self.pairs([(0, int(i)) for i in self.held])

    def all_rows(self) -> Pairs:
        """Every usable row, in memory (evaluation over the training text)."""
        return self.pairs([(k, int(i)) for k, s in enumerate(self.sources) for i in np.flatnonzero(s.lengths)])

    def source_counts(self, tokenizer) -> torch.Tensor:
        """(V,) token counts of every usable source text under `tokenizer` (`EncoderConfig.unk_below`); the
        target counts when sources are targets and the tokenizer is the LLM's."""
        if self.src_col == self.tgt_col and tokenizer is self.llm.tokenizer:
            return torch.from_numpy(self.target_counts.copy())
        counts = np.zeros(len(tokenizer), dtype=np.int64)
        for s in self.sources:
            rows = np.flatnonzero(s.lengths)
            for lo in range(0, len(rows), 8192):
                texts = s.ds.select(rows[lo:lo + 8192])[self.src_col]
                flat = [t for x in tokenizer([str(t) for t in texts], add_special_tokens=False).input_ids for t in x]
                if flat:
                    counts += np.bincount(flat, minlength=len(counts))[: len(counts)]
        return torch.from_numpy(counts)


def training_data(cfg: TrainConfig, llm: FrozenLLM, show_progress: bool = False
                  ) -> tuple[TextMixture | Pairs, Pairs]:
    """(training data, held-out pairs) of a run: a TextMixture over cfg.data (or a corpus folder's Pairs), and the
    val_data file or rows held out of the first source. Training and evaluation both take them from here."""
    if len(cfg.data) == 1 and is_corpus(cfg.data[0]):
        pairs = _corpus_pairs(cfg.data[0])
        if cfg.val_data:
            return pairs, load_pairs(cfg.val_data, llm, cfg)
        order = list(range(len(pairs)))
        random.Random(cfg.seed).shuffle(order)
        n_val = min(VAL_MAX, max(1, round(VAL_SHARE * len(pairs))))
        return pairs.take(sorted(order[n_val:])), pairs.take(sorted(order[:n_val]))
    if any(is_corpus(d) for d in cfg.data):
        raise NarError("a corpus folder trains alone: give it as the only data source")
    mix = TextMixture(cfg.data, cfg.weights, llm, cfg, hold_out=not cfg.val_data, show_progress=show_progress)
    return mix, (load_pairs(cfg.val_data, llm, cfg) if cfg.val_data else mix.held_out())


def checkpoint_splits(meta: dict, llm: FrozenLLM) -> tuple[Pairs, Pairs, TrainConfig]:
    """(training pairs, held-out pairs, training config) as an encoder checkpoint's run used them (every usable
    training row, in memory)."""
    tcfg = TrainConfig.from_dict(meta["train_config"])
    if not tcfg.data:  # checkpoints that recorded their one training file under data.train
        tcfg = tcfg.replace(data=(meta["data"]["train"],))
    train, held = training_data(tcfg, llm)
    return (train.all_rows() if isinstance(train, TextMixture) else train), held, tcfg

"""The corpus store: a folder of Parquet shards of fitted proto-tokens plus `manifest.json`.

    CORPUS_DIR/
      manifest.json            LLM + teacher fingerprints, layout, every hyperparameter, counts
      shards/*.parquet         one row per text (schema below); written atomically (temp + rename)

Writes are crash-safe: every finished text is written as soon as it leaves its slot, as a small shard
(temp file, then `os.replace`), so a `kill -9` loses only the texts still being fitted. At the end
of a run the small shards are compacted into shards of `shard_size` rows (merged shard written
first, small ones removed after), and readers de-duplicate by id, so an interrupted compaction can
never produce duplicates.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nar import __version__
from nar.errors import NarError

FORMAT = "nar-corpus/1"
MANIFEST = "manifest.json"
SHARDS = "shards"

COLUMNS = ["id", "source", "target", "token_ids", "n_tokens", "e", "m", "accuracy", "steps", "loss",
           "seconds", "converged", "failed", "teacher", "rank"]


def schema(dim: int, teacher_dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()), ("source", pa.string()), ("target", pa.string()),
        ("token_ids", pa.list_(pa.int32())), ("n_tokens", pa.int32()),
        ("e", pa.list_(pa.float32(), dim)), ("m", pa.list_(pa.float32(), dim)),
        ("accuracy", pa.float32()), ("steps", pa.int32()), ("loss", pa.float32()), ("seconds", pa.float32()),
        ("converged", pa.bool_()), ("failed", pa.bool_()),
        ("teacher", pa.list_(pa.float32(), teacher_dim)), ("rank", pa.int32()),
    ])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(path: str | Path) -> dict:
    p = Path(path) / MANIFEST
    if not p.is_file():
        raise NarError(f"{path} is not a nar corpus (no {MANIFEST})")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise NarError(f"{p} is not valid JSON: {exc}") from exc


def write_manifest(path: str | Path, manifest: dict) -> None:
    manifest = dict(manifest, format=FORMAT, nar_version=__version__, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_bytes(Path(path) / MANIFEST, json.dumps(manifest, indent=2).encode())


def shard_files(path: str | Path) -> list[Path]:
    # temp files of an interrupted write start with "." and are never read
    return sorted(f for f in (Path(path) / SHARDS).glob("*.parquet") if not f.name.startswith("."))


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every row of every shard, de-duplicated by id (first occurrence kept)."""
    files = shard_files(path)
    if not files:
        return pa.table({c: [] for c in (columns or ["id"])})
    cols = None if columns is None else list(dict.fromkeys(["id", *columns]))
    table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files])
    ids = table.column("id").to_pylist()
    seen: set[str] = set()
    keep = [i for i, x in enumerate(ids) if not (x in seen or seen.add(x))]
    if len(keep) < len(ids):
        table = table.take(pa.array(keep))
    return table


def done_ids(path: str | Path) -> set[str]:
    if not Path(path).exists():
        return set()
    return set(read_table(path, ["id"]).column("id").to_pylist())


def load(path: str | Path):
    """The corpus as a `datasets.Dataset` with torch formatting (e, m, teacher are float tensors)."""
    import datasets
    from datasets.table import InMemoryTable

    read_manifest(path)
    table = read_table(path)
    if table.num_rows == 0:
        raise NarError(f"corpus {path} is empty")
    return datasets.Dataset(InMemoryTable(table)).with_format(
        "torch", columns=["e", "m", "teacher", "token_ids", "n_tokens", "accuracy", "steps", "loss", "seconds"],
        output_all_columns=True)


class ShardWriter:
    """Writes rows for one worker (`rank`), each batch as its own atomically renamed shard."""

    def __init__(self, path: str | Path, dim: int, teacher_dim: int, rank: int = 0):
        self.dir = Path(path) / SHARDS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema = schema(dim, teacher_dim)
        self.rank = rank
        self.run = uuid.uuid4().hex[:8]
        self.seq = 0
        self.written = 0

    def write(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=self.schema)
        path = self.dir / f"r{self.rank:03d}-{self.run}-{self.seq:06d}.parquet"
        atomic_write_table(path, table)
        self.seq += 1
        self.written += len(rows)
        return path

    def compact(self, shard_size: int) -> int:
        """Merge this rank's shards smaller than `shard_size` rows; returns how many files were merged."""
        return compact(self.dir.parent, shard_size, rank=self.rank)


def compact(path: str | Path, shard_size: int = 1024, rank: int | None = None) -> int:
    """Merge small shards into shards of at most `shard_size` rows (crash-safe, see module doc)."""
    prefix = f"r{rank:03d}-" if rank is not None else "r"
    small = [f for f in shard_files(path) if f.name.startswith(prefix) and not f.name.endswith("-c.parquet")
             and pq.ParquetFile(f).metadata.num_rows < shard_size]
    if len(small) < 2:
        return 0
    table = pa.concat_tables([pq.read_table(f) for f in small])
    ids = table.column("id").to_pylist()
    seen: set[str] = set()
    table = table.take(pa.array([i for i, x in enumerate(ids) if not (x in seen or seen.add(x))]))
    run = uuid.uuid4().hex[:8]
    r = rank if rank is not None else 0
    for k, lo in enumerate(range(0, table.num_rows, shard_size)):
        atomic_write_table(Path(path) / SHARDS / f"r{r:03d}-{run}-{k:06d}-c.parquet",
                            table.slice(lo, shard_size))
    for f in small:
        f.unlink(missing_ok=True)
    return len(small)


def info(path: str | Path, teacher_agreement: bool = True) -> dict:
    """Counts, accuracy distribution, provenance and hyperparameters of a corpus, and (optionally) the
    Spearman correlation between pairwise proto-token cosines and the teacher's (how well the space
    mirrors meaning), for e, m and [e; m], over up to 200k pairs of non-failed rows."""
    import statistics

    man = read_manifest(path)
    table = read_table(path, ["accuracy", "steps", "converged", "failed", "n_tokens"])
    raw_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(path))
    acc = table.column("accuracy").to_pylist() if table.num_rows else []
    steps = table.column("steps").to_pylist() if table.num_rows else []
    ntok = table.column("n_tokens").to_pylist() if table.num_rows else []
    target = man.get("fit_config", {}).get("target_acc", 1.0)
    conv = sum(a >= target - 1e-6 for a in acc)
    edges = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]
    hist = {f"<{hi}": sum(lo <= a < hi for a in acc) for lo, hi in zip(edges, edges[1:])}
    hist["=1.0"] = sum(a >= 1.0 for a in acc)
    return {
        "path": str(path), "count": table.num_rows, "converged": conv, "unique_ids": table.num_rows,
        "rows_on_disk": raw_rows, "shards": len(shard_files(path)),
        "failed": sum(table.column("failed").to_pylist()) if table.num_rows else 0,
        "mean_accuracy": round(sum(acc) / len(acc), 4) if acc else None,
        "median_steps": statistics.median(steps) if steps else None,
        "median_tokens": statistics.median(ntok) if ntok else None,
        "accuracy_histogram": hist,
        "llm_fingerprint": man.get("llm", {}).get("fingerprint"), "teacher": man.get("teacher", {}),
        "layout": man.get("layout"), "fit_config": man.get("fit_config"), "build_config": man.get("build_config"),
        "runs": man.get("runs", []), "nar_version": man.get("nar_version"),
        "teacher_spearman": _teacher_agreement(path) if teacher_agreement and table.num_rows > 2 else None,
    }


def _teacher_agreement(path: str | Path) -> dict:
    import torch

    from nar.analysis.semantics import teacher_agreement

    t = read_table(path, ["e", "m", "teacher", "failed"])
    keep = [i for i, f in enumerate(t.column("failed").to_pylist()) if not f]
    cols = {c: torch.tensor(t.column(c).to_pylist(), dtype=torch.float32)[keep] for c in ("e", "m", "teacher")}
    return {k: round(v, 4) for k, v in teacher_agreement(cols).items()}

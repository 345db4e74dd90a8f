"""The corpus store: a folder of Parquet shards of fitted proto-tokens plus `manifest.json`.

    CORPUS_DIR/
      manifest.json            LLM + teacher records, layout, every hyperparameter, each run, counts
      shards/*.parquet         one row per text (schema below); written atomically (temp + rename)
      runs/*.json              each worker's summary of each run (merged into the manifest)

Writes are crash-safe: every finished text is written as soon as it leaves its slot, as a small shard
(`nar.artifacts.atomic_write`), so a `kill -9` loses only the texts still being fitted. At the end
of a run the small shards are compacted into shards of `shard_size` rows (merged shard written
first, small ones removed after), and readers de-duplicate by id, so an interrupted compaction can
never produce duplicates. `columns` reads whole columns at once (vectors as (N, D) arrays).
"""

from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nar import __version__, faults
from nar.artifacts import (
    TMP_PREFIX,
    atomic_write,
    atomic_write_json,
    check_llm,
    check_teacher,
    llm_record,
    read_json,
    teacher_record,
)
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


def result_row(r, rank: int) -> dict:
    """The stored row of a `nar.fit.FitResult` whose payload carries source, target and teacher."""
    p = r.payload
    return {"id": r.key, "source": p["source"], "target": p["target"], "token_ids": r.token_ids,
            "n_tokens": r.n_tokens, "e": r.e.tolist(), "m": r.m.tolist(), "accuracy": r.accuracy,
            "steps": r.steps, "loss": r.loss, "seconds": r.seconds, "converged": r.converged,
            "failed": r.failed, "teacher": p["teacher"].tolist(), "rank": rank}


def _write_table(path: Path, table: pa.Table) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp), suffix=".parquet")


# ----------------------------------------------------------------------------------------------
# Manifest and provenance


def read_manifest(path: str | Path) -> dict:
    if not (Path(path) / MANIFEST).is_file():
        raise NarError(f"{path} is not a nar corpus (no {MANIFEST})")
    man = read_json(Path(path) / MANIFEST)
    if man.get("format", FORMAT) != FORMAT:
        raise NarError(f"{path} is a corpus in format {man['format']!r}; this nar ({__version__}) reads {FORMAT!r}: "
                       "rebuild it with this version, or use the nar that wrote it")
    return man


def write_manifest(path: str | Path, manifest: dict) -> None:
    manifest = dict(manifest, format=FORMAT, nar_version=__version__, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(Path(path) / MANIFEST, manifest)


def open_corpus(out: str | Path, llm, teacher, layout: dict, fit_config: dict, build_config: dict) -> dict:
    """Create the corpus folder, or check that the existing one was made with the same models and layout.
    Returns its manifest."""
    import logging

    out = Path(out)
    if (out / MANIFEST).is_file():
        man = read_manifest(out)
        check_llm(man, llm, str(out), hint="; use another --out folder")
        check_teacher(man, teacher, str(out), hint="; use another --out folder")
        if man.get("layout") != layout:
            raise NarError(f"{out} uses layout {man.get('layout')}, this run {layout} (--prefix/--first differ)")
        changed = {k: (man["fit_config"].get(k), v) for k, v in fit_config.items() if man["fit_config"].get(k) != v}
        if changed:
            logging.getLogger(__name__).warning(
                "resuming %s with different fit options %s; each run's options are kept in the manifest", out, changed)
        return man
    if out.exists() and any(not f.name.startswith(".lock-") for f in out.iterdir()):
        raise NarError(f"{out} exists, is not empty and holds no nar corpus; choose another --out")
    man = {"llm": llm_record(llm), "teacher": teacher_record(teacher), "layout": layout, "fit_config": fit_config,
           "build_config": build_config, "runs": [], "counts": {}}
    write_manifest(out, man)
    return man


# ----------------------------------------------------------------------------------------------
# Reading


def shard_files(path: str | Path) -> list[Path]:
    # temp files of an interrupted write start with "." and are never read
    return sorted(f for f in (Path(path) / SHARDS).glob("*.parquet") if not f.name.startswith(TMP_PREFIX[0]))


def _dedupe(table: pa.Table) -> pa.Table:
    """The first row of each id."""
    ids = table.column("id").to_pylist()
    seen: set[str] = set()
    keep = [i for i, x in enumerate(ids) if not (x in seen or seen.add(x))]
    return table if len(keep) == len(ids) else table.take(pa.array(keep, pa.int64()))


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Every row of every shard, de-duplicated by id (first occurrence kept)."""
    files = shard_files(path)
    if not files:
        return pa.table({c: [] for c in (columns or ["id"])})
    cols = None if columns is None else list(dict.fromkeys(["id", *columns]))
    return _dedupe(pa.concat_tables([pq.read_table(f, columns=cols) for f in files]))


ROWS = ("all", "ok", "converged")
"""Which rows `columns` returns: every row, the rows that did not fail, the converged rows."""


def columns(source: str | Path | pa.Table, names: list[str] | tuple[str, ...], rows: str = "all") -> dict:
    """Whole columns at once: fixed-size vectors (e, m, teacher) as float32 arrays (N, D), numbers and flags as
    arrays (N,), strings and token-id lists as Python lists. `source` is a corpus folder or a table."""
    if rows not in ROWS:
        raise NarError(f"rows must be one of {ROWS}, not {rows!r}")
    need = {"all": [], "ok": ["failed"], "converged": ["failed", "converged"]}[rows]
    table = source if isinstance(source, pa.Table) else read_table(source, [*names, *need])
    if table.num_rows and rows != "all":
        mask = pc.invert(table.column("failed"))
        if rows == "converged":
            mask = pc.and_(mask, table.column("converged"))
        table = table.filter(mask)
    out = {}
    for name in names:
        col = table.column(name).combine_chunks() if table.num_rows else None
        if col is None:
            out[name] = np.zeros((0,), np.float32) if name in ("e", "m", "teacher") else []
        elif pa.types.is_fixed_size_list(col.type):
            out[name] = np.array(col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size))
        elif pa.types.is_list(col.type) or pa.types.is_string(col.type):
            out[name] = col.to_pylist()
        else:
            out[name] = np.array(col.to_numpy(zero_copy_only=False))
    return out


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


# ----------------------------------------------------------------------------------------------
# Writing


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
        _write_table(path, table)
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
    table = _dedupe(pa.concat_tables([pq.read_table(f) for f in small]))
    kept = [f for f in shard_files(path) if f not in small]
    if kept:  # rows a compaction killed after its merged write already stored: not stored twice
        stored = pa.concat_arrays([pq.read_table(f, columns=["id"])["id"].combine_chunks() for f in kept])
        table = table.filter(pc.invert(pc.is_in(table["id"], value_set=stored)))
    run = uuid.uuid4().hex[:8]
    r = rank if rank is not None else 0
    for k, lo in enumerate(range(0, table.num_rows, shard_size)):
        _write_table(Path(path) / SHARDS / f"r{r:03d}-{run}-{k:06d}-c.parquet", table.slice(lo, shard_size))
    faults.point("compact.merged")
    for f in small:
        f.unlink(missing_ok=True)
    return len(small)


def write_run(out: str | Path, run: dict) -> None:
    """Each worker's summary of each run, as its own file (merged into the manifest by `merge`)."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9:09d}-r{run['rank']:03d}.json"
    atomic_write_json(Path(out) / "runs" / name, run)


def merge(out: str | Path, shard_size: int = 1024) -> dict:
    """Compact every worker's small shards and rebuild the manifest's runs and counts from disk.

    Called by rank 0 at the end of every build; also `nar corpus-merge` after an interrupted
    multi-process run. Idempotent."""
    out = Path(out)
    man = read_manifest(out)
    for r in sorted({int(f.name[1:4]) for f in (out / SHARDS).glob("r*.parquet")}):
        compact(out, shard_size, rank=r)
    runs = [read_json(f) for f in sorted((out / "runs").glob("*.json"))]
    cols = columns(out, ["converged", "rank"])
    ranks, per_rank = np.unique(np.asarray(cols["rank"], dtype=np.int64), return_counts=True)
    man["runs"] = runs
    man["counts"] = {"rows": len(cols["rank"]), "converged": int(np.sum(cols["converged"])),
                     "rows_per_rank": {str(k): int(v) for k, v in zip(ranks, per_rank)}}
    write_manifest(out, man)
    return man["counts"]


# ----------------------------------------------------------------------------------------------
# Summary


def info(path: str | Path, teacher_agreement: bool = True) -> dict:
    """Counts, accuracy distribution, provenance and hyperparameters of a corpus, and (optionally) the
    Spearman correlation between pairwise proto-token cosines and the teacher's (how well the space
    mirrors meaning), for e, m and [e; m], over up to 200k pairs of non-failed rows."""
    man = read_manifest(path)
    files = shard_files(path)
    on_disk = pa.concat_tables([pq.read_table(f, columns=["id"]) for f in files]) if files else None
    c = columns(path, ["accuracy", "steps", "failed", "n_tokens"])
    c = {k: np.asarray(v, dtype=np.float64) for k, v in c.items()}  # (an empty corpus gives empty lists)
    acc, n = c["accuracy"], len(c["accuracy"])
    target = man.get("fit_config", {}).get("target_acc", 1.0)
    edges = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0]
    hist = {f"<{hi}": int(np.sum((acc >= lo) & (acc < hi))) for lo, hi in zip(edges, edges[1:])}
    hist["=1.0"] = int(np.sum(acc >= 1.0))
    agreement = None
    if teacher_agreement and n > 2:
        import torch

        from nar.space import teacher_agreement as agree

        v = {k: torch.from_numpy(x) for k, x in columns(path, ["e", "m", "teacher"], rows="ok").items()}
        agreement = {k: round(x, 4) for k, x in agree(v["e"], v["m"], v["teacher"]).items()}
    return {
        "path": str(path), "count": n, "converged": int(np.sum(acc >= target - 1e-6)),
        "unique_ids": int(pc.count_distinct(on_disk.column("id")).as_py()) if on_disk else 0,
        "rows_on_disk": on_disk.num_rows if on_disk else 0, "shards": len(files),
        "failed": int(np.sum(c["failed"])),
        "mean_accuracy": round(float(np.mean(acc, dtype=np.float64)), 4) if n else None,
        "median_steps": statistics.median(c["steps"].astype(int).tolist()) if n else None,
        "median_tokens": statistics.median(c["n_tokens"].astype(int).tolist()) if n else None,
        "accuracy_histogram": hist,
        "llm_fingerprint": man.get("llm", {}).get("fingerprint"), "teacher": man.get("teacher", {}),
        "layout": man.get("layout"), "fit_config": man.get("fit_config"), "build_config": man.get("build_config"),
        "runs": man.get("runs", []), "nar_version": man.get("nar_version"), "teacher_spearman": agreement,
    }



def fingerprint(path: str | Path) -> str:
    """Changes whenever rows are added or the corpus is rebuilt: `count@hash` of the LLM fingerprint and the
    sorted ids (an index or an encoder records it)."""
    import hashlib

    man = read_manifest(path)
    ids = sorted(read_table(path, ["id"]).column("id").to_pylist())
    h = hashlib.blake2b(digest_size=8)
    h.update(str(man.get("llm", {}).get("fingerprint")).encode())
    h.update("\x1f".join(ids).encode())
    return f"{len(ids)}@{h.hexdigest()}"

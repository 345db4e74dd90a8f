"""What every artifact on disk shares: atomic writes, JSON metadata, provenance records and their checks.

Writes: every file nar leaves behind (corpus shards and manifest, index, proto-token files, encoder
checkpoints, reports of runs) goes through `atomic_write`: the bytes go to a temp file in the same folder
(named `.tmp-*`, which readers skip), are fsynced, then renamed over the target, so a reader or a crash
sees the old file or the new one, never half of one.

Provenance: an artifact records the fingerprints of the models it was made with (`llm_record`,
`teacher_record`); a loader calls `check_fingerprint` (or `check_llm` / `check_teacher` on a record)
before it trusts the artifact, and mismatches fail loudly with a NarError.

Fingerprints: `weights_hash` is the one hash of a module's weights (LLM and teacher alike).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from nar.errors import NarError

TMP_PREFIX = ".tmp-"
"""Temp files of interrupted writes start with this; every reader skips them."""


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = "") -> Path:
    """Call `write(tmp_path)` to produce the file, then fsync it and rename it onto `path`.

    `write` may use any library's writer (pyarrow, safetensors, faiss, torch.save): it only has to create
    the file it is given. `suffix` is kept on the temp name for writers that insist on an extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with reporting_disk_full(path):
            write(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def disk_full(exc: BaseException, path: str | Path) -> NarError | None:
    """The user-facing error for a write that ran out of space (errno ENOSPC or EDQUOT), else None."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NarError(f"disk full while writing {path}: free some space and run the same command again "
                        "(everything written before is intact; the run resumes)")
    return None


@contextlib.contextmanager
def reporting_disk_full(path: str | Path) -> Iterator[None]:
    """Inside: a write's ENOSPC/EDQUOT becomes the user-facing NarError of `disk_full`; other errors pass."""
    try:
        yield
    except OSError as exc:
        err = disk_full(exc, path)
        if err is None:
            raise
        raise err from exc


def atomic_dir(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a whole folder so that a crash leaves the old complete folder or the new one, never a mix.

    `write(tmp)` fills `<path>.partial/`; then `<path>` is moved to `<path>.old`, the new folder into place,
    and the old one removed. `recover_dir` (called by every loader) finishes or undoes an interrupted swap."""
    from nar import faults

    path = Path(path)
    tmp, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
    recover_dir(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with reporting_disk_full(path):
            write(tmp)
            atomic_write_bytes(tmp / COMPLETE, b"")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    faults.point("checkpoint.files")
    if path.exists():
        os.replace(path, old)
    faults.point("checkpoint.swap")
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


COMPLETE = ".complete"
"""Marker written last into a folder being built by `atomic_dir`."""


def recover_dir(path: str | Path) -> None:
    """Undo the traces of an `atomic_dir` interrupted by a crash: an unfinished new folder is dropped; a
    finished one whose swap was cut short is moved into place; failing that, the old one is put back."""
    path = Path(path)
    tmp, old = path.with_name(path.name + ".partial"), path.with_name(path.name + ".old")
    if not path.exists():
        if (tmp / COMPLETE).is_file():
            os.replace(tmp, path)
        elif old.exists():
            os.replace(old, path)
    if path.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: str | Path, name: str, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder/.lock-<name>` (flock: released by the OS when the process dies, so a
    crash never leaves a stale lock). A second holder gets a NarError naming the first one's pid and host."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): no protection, as before
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / f".lock-{name}"
    f = open(lock, "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise NarError(f"{folder} is in use by {holder} ({what}); wait for it to finish, or run several "
                           "workers with accelerate launch / torchrun (each takes its own share)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    return atomic_write_bytes(path, json.dumps(obj, indent=indent, default=_jsonable).encode())


def atomic_write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in rows))


def _jsonable(x):
    if hasattr(x, "tolist"):  # numpy and torch scalars/arrays
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def read_json(path: str | Path, what: str = "") -> dict:
    """A JSON file, or a NarError that names it (missing, or not valid JSON)."""
    path = Path(path)
    if not path.is_file():
        raise NarError(f"{what or path} is missing ({path})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NarError(f"{path} is not valid JSON: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# Provenance


def weights_hash(state_dict: dict, h=None) -> str:
    """blake2b-64 over every tensor's name and float32 bytes, in name order; tied weights count once."""
    import torch

    h = h or hashlib.blake2b(digest_size=8)
    seen = set()
    for key, tensor in sorted(state_dict.items()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def llm_record(llm) -> dict:
    """What an artifact records about the frozen LLM it was made with."""
    return {"name": llm.name, "fingerprint": llm.fingerprint, "hidden_size": llm.hidden_size,
            "dtype": str(llm.dtype).replace("torch.", "")}


def teacher_record(teacher) -> dict:
    """What an artifact records about the sentence-embedding teacher it was made with."""
    return {"name": teacher.name, "fingerprint": teacher.fingerprint, "dim": teacher.dim}


def check_fingerprint(recorded: str | None, actual: str, what: str, kind: str = "LLM", verb: str = "built with",
                      hint: str = "") -> None:
    """Refuse an artifact (`what`) made with another model: `what was <verb> <kind> X, not Y`.
    A record without a fingerprint (None) is accepted: nothing to compare."""
    if recorded is not None and recorded != actual:
        raise NarError(f"{what} was {verb} {kind} {recorded}, not {actual}{hint}")


def check_llm(meta: dict, llm, what: str, verb: str = "built with", hint: str = "") -> None:
    """`meta["llm"]["fingerprint"]` (an artifact's record) against the loaded LLM."""
    check_fingerprint((meta.get("llm") or {}).get("fingerprint"), llm.fingerprint, what, "LLM", verb, hint)


def check_teacher(meta: dict, teacher, what: str, verb: str = "built with", hint: str = "") -> None:
    """`meta["teacher"]["fingerprint"]` against the loaded teacher."""
    check_fingerprint((meta.get("teacher") or {}).get("fingerprint"), teacher.fingerprint, what, "teacher", verb,
                      hint)

"""Fault injection for the reliability suite (tests/test_reliability.py, docs/RELIABILITY.md).

`NAR_FAULT=<point>[@<n>]` makes this process kill itself with SIGKILL the n-th time (default: the first) it
reaches the named point, so a test can crash a real run exactly where a crash hurts most, without sleeps.
Unset (always, outside tests), `point` costs one dictionary lookup.

Points: fit.written (a finished text's shard is on disk), compact.merged (merged shards written, small ones
not yet removed), index.faiss (the FAISS file written, its JSON not yet), checkpoint.files (an encoder
checkpoint's files written to its temp folder), checkpoint.swap (the old checkpoint moved aside, the new not yet
in place), pairs.batch (a batch of generated pairs appended to the partial file), train.step (an encoder
training step taken, before its checkpoint, if any).
"""

from __future__ import annotations

import os
import signal

POINTS = ("fit.written", "compact.merged", "index.faiss", "checkpoint.files", "checkpoint.swap", "pairs.batch",
          "train.step")
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Die here (SIGKILL, no cleanup, no atexit) if NAR_FAULT names this point and this is its n-th visit."""
    spec = os.environ.get("NAR_FAULT")
    if not spec:
        return
    want, _, nth = spec.partition("@")
    if want != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)

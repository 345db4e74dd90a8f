"""Where every analysis puts its results: numbers as JSON and CSV, figures as PNG, in one folder."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from nar.artifacts import atomic_write, atomic_write_text


def write_report(out_dir: str | Path, name: str, summary: dict, rows: list[dict]) -> dict[str, str]:
    """`<name>.json` (summary + rows) and `<name>.csv` (rows); returns the paths written."""
    out = Path(out_dir)
    jpath, cpath = out / f"{name}.json", out / f"{name}.csv"
    atomic_write_text(jpath, json.dumps({**summary, "rows": rows}, indent=2, default=float))
    if rows:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(cpath, buf.getvalue())
    return {"json": str(jpath), "csv": str(cpath)}


class RowLog:
    """The rows a long analysis has finished, one JSON line each in `<out>/<name>-rows.jsonl`, appended as each
    finishes, so a killed job loses at most the rows in progress (and with `save_state` only their last steps).
    Rows carry the hash of the settings they were made with (`settings`: anything JSON can hold that decides the
    results); a re-run with other settings ignores the old rows instead of mixing them in."""

    def __init__(self, out_dir: str | Path, name: str, settings) -> None:
        self.path, self.name = Path(out_dir) / f"{name}-rows.jsonl", name
        blob = json.dumps(settings, sort_keys=True, default=str)
        self.key = hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()
        self.resumed = len(self.rows())

    def rows(self) -> list[dict]:
        """Every row of these settings on disk (without the settings hash), in the order written."""
        if not self.path.is_file():
            return []
        rows = [json.loads(x) for x in self.path.read_text().splitlines() if x.strip()]
        return [{k: v for k, v in r.items() if k != "settings"} for r in rows if r.get("settings") == self.key]

    def record(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({**row, "settings": self.key}, default=float) + "\n")

    def state_path(self, tag: str) -> Path:
        return self.path.with_name(f"{self.name}-inflight-{tag}.pt")

    def save_state(self, tag: str, state) -> None:
        """Keep the state of the fits in progress (`torch.save`-able), written atomically, so a killed job
        resumes them mid-fit instead of from their start. The file carries these settings' hash."""
        import torch

        atomic_write(self.state_path(tag), lambda tmp: torch.save({"settings": self.key, "state": state}, tmp),
                     suffix=".pt")

    def load_state(self, tag: str):
        """The in-flight state saved under these settings, or None (none saved, or saved under others)."""
        import torch

        path = self.state_path(tag)
        if not path.is_file():
            return None
        blob = torch.load(path, map_location="cpu", weights_only=True)
        return blob["state"] if blob.get("settings") == self.key else None

    def clear_state(self, tag: str) -> None:
        """Drop the in-flight state once every fit it could resume is a finished row."""
        self.state_path(tag).unlink(missing_ok=True)


def figure():
    """A fresh matplotlib figure on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, ylabel: str | None = None) -> None:
    """Finish a single-axes line plot (grid, legend, optional y label) or any figure, write it, free it."""
    import matplotlib.pyplot as plt

    for ax in fig.axes[:1] if ylabel else []:
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

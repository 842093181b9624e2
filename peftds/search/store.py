"""A stage's trials.csv: one row per (stage, option, design index, task), appended under a file lock by an
atomic rewrite (a kill never leaves a half-written row or a duplicate)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peftds.files import file_lock, write_text_atomic
from peftds.model.strategies import strategy_label
from peftds.search.trial import Trial, effective_status

ROW_FIELDS = [
    "stage", "option", "index", "task", "trial_id", "design", "design_hash", "design_file", "group_sizes", "tuned",
    "allocation", "strategies", "sizes", "trainable_params", "budget_params", "metrics", "score", "epoch_scores",
    "epochs", "seed", "wall_time_s", "device", "status", "error",
]  # fmt: skip
RowKey = tuple[str, str, int, str]


class TrialTable:
    """A CSV table of runs with a key per row: by default trials.csv of a stage, keyed by
    (stage, option, index, task); other tables name their `fields` and `key_columns` (compared as strings)."""

    def __init__(self, path: Path, fields: Sequence[str] = ROW_FIELDS, key_columns: Sequence[str] | None = None):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.fields = list(fields)
        self.key_columns = tuple(key_columns) if key_columns else None

    @staticmethod
    def key(row: Mapping[str, Any]) -> RowKey:
        return (str(row["stage"]), str(row["option"]), int(row["index"]), str(row["task"]))

    def row_key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The key of a row of this table."""
        if self.key_columns is None:
            return self.key(row)
        return tuple(str(row[c]) for c in self.key_columns)

    def read(self) -> list[dict[str, str]]:
        """The well-formed rows (a truncated or corrupted row is left out here; `repair` sets it aside)."""
        return self.parse()[0]

    def parse(self) -> tuple[list[dict[str, str]], list[str]]:
        """(well-formed rows, raw lines of malformed ones). A row is malformed when its field count is not the
        header's, its key does not parse, or it is the last line and lacks its newline (a cut write: every
        write of the table ends with one)."""
        if not self.path.exists():
            return [], []
        with open(self.path, newline="") as fh:
            lines = fh.read().splitlines(keepends=True)
        good, bad = [], []
        header = next(csv.reader(lines[:1]), None)
        for i, line in enumerate(lines[1:], start=1):
            if not line.strip():
                continue
            values = next(csv.reader([line]), [])
            row = dict(zip(header or [], values))
            cut = i == len(lines) - 1 and not line.endswith("\n")
            if cut or header is None or len(values) != len(header) or not self.well_keyed(row):
                bad.append(line.rstrip("\r\n"))
            elif row.get(self.fields[0]):
                good.append(row)
        return good, bad

    def well_keyed(self, row: Mapping[str, Any]) -> bool:
        try:
            self.row_key(row)
        except (KeyError, TypeError, ValueError):
            return False
        return True

    def repair(self) -> int:
        """Set malformed rows aside (appended to <table>.malformed, never silently dropped) and rewrite the table
        without them; returns how many. Their runs' result.json files bring them back on the next reconcile."""
        with file_lock(self.lock_path):
            rows, bad = self.parse()
            if bad:
                with open(self.path.with_name(self.path.name + ".malformed"), "a") as fh:
                    fh.write("".join(line + "\n" for line in bad))
                self.write(rows)
            return len(bad)

    def keys(self) -> set[tuple[Any, ...]]:
        return {self.row_key(r) for r in self.read()}

    def write(self, rows: list[Mapping[str, Any]]) -> None:
        """Replace the whole table (callers hold the lock)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in self.fields})
        write_text_atomic(self.path, buf.getvalue())

    def remove(self, keys: set[tuple[Any, ...]]) -> int:
        """Drop the rows with these keys; returns how many went."""
        with file_lock(self.lock_path):
            rows = self.read()
            keep = [r for r in rows if self.row_key(r) not in keys]
            if len(keep) != len(rows):
                self.write(keep)
            return len(rows) - len(keep)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is not in the table yet; returns how many were added."""
        rows = list(rows)
        if not rows:
            return 0
        with file_lock(self.lock_path):
            existing = self.read()
            have = {self.row_key(r) for r in existing}
            new = []
            for r in rows:
                k = self.row_key(r)
                if k not in have:
                    have.add(k)
                    new.append(r)
            if not new:
                return 0
            self.write(existing + new)
            return len(new)


def trial_row(key: RowKey, trial: Trial, rec: Mapping[str, Any], epochs: int, seed: int) -> dict[str, Any]:
    """The table row of a finished trial for one of its keys (an ok run with a non-finite score is failed)."""
    stage, opt, idx, task = key
    sample = trial.sample
    status = effective_status(rec)
    error = rec.get("error") or ""
    score = rec.get("score")
    if rec.get("status") == "ok" and status != "ok":
        error = f"non-finite score ({score})"
    best = rec.get("best") or {}
    metrics = {k: v for k, v in best.items() if k not in ("epoch", "score")}
    return {
        "stage": stage,
        "option": opt,
        "index": idx,
        "task": task,
        "trial_id": trial.trial_id,
        "design": sample.compact,
        "design_hash": sample.digest,
        "design_file": sample.design_file,
        "group_sizes": "-".join(map(str, sample.groups)),
        "tuned": ",".join(map(str, sample.tuned)),
        "allocation": sample.allocation,
        "strategies": " | ".join(strategy_label(s) if s else "-" for s in sample.strategies),
        "sizes": sample.sizes,
        "trainable_params": rec.get("trainable_params") or sample.trainable_params,
        "budget_params": sample.budget_params,
        "metrics": json.dumps(metrics, sort_keys=True) if metrics else "",
        "score": f"{score:.4f}" if status == "ok" else "",
        # the held-out score after each epoch: a stage can be replayed at a lower fidelity afterwards
        "epoch_scores": json.dumps([round(float(e["score"]), 4) for e in rec.get("epochs") or [] if "score" in e])
        if status == "ok"
        else "",
        "epochs": epochs,
        "seed": seed,
        "wall_time_s": f"{float(rec.get('wall_time_s') or 0):.1f}",
        "device": rec.get("device") or "",
        "status": status,
        "error": str(error).replace("\n", " ")[:500],
    }

"""The paper's reported numbers (published.yaml) as extra table rows where a table's setting matches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftds.config.compose import conf_dir
from peftds.data.tasks import task_set

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")


@dataclass
class PaperRows:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # "paper: <name>" -> column id -> value
    notes: list[str] = field(default_factory=list)


def load_published(path: Path = PUBLISHED_FILE) -> list[dict[str, Any]]:
    return list(yaml.safe_load(Path(path).read_text()) or [])


def matching_column(entry: dict[str, Any], columns: Sequence[Any], tasks: Sequence[str]) -> str | None:
    """The id of the table column an entry's numbers belong in, None when the setting differs."""
    if entry.get("column") == "avg":
        want = task_set(entry["task_set"], conf_dir())
        ok = sorted(want) == sorted(tasks) and any(c.id == "avg" for c in columns)
        return "avg" if ok else None
    for c in columns:
        if c.task != entry.get("task"):
            continue
        if c.metric == entry.get("metric") or (c.metric == "score" and list(c.score_metrics) == [entry.get("metric")]):
            return c.id
    return None


def paper_rows(
    model: str, columns: Sequence[Any], tasks: Sequence[str], entries: Sequence[dict] | None = None
) -> PaperRows:
    """The paper rows of a table on `model` with these columns (nothing where no entry matches)."""
    out = PaperRows()
    for entry in load_published() if entries is None else entries:
        if model not in entry.get("models", []):
            continue
        col = matching_column(entry, columns, tasks)
        if col is None:
            continue
        for name, value in entry["rows"].items():
            out.rows.setdefault(f"paper: {name}", {})[col] = float(value)
        if entry.get("note"):
            out.notes.append(entry["note"])
    return out

"""The run record: result.json of a training run, rewritten atomically as the run goes."""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peftds.files import RESULT_FILE, write_json_atomic, write_text_atomic


class RunRecord:
    """result.json, rewritten atomically on every update so an interrupted run keeps what it had."""

    def __init__(self, run_dir: Path, **fields: Any) -> None:
        self.path = run_dir / RESULT_FILE
        run_dir.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {"status": "running", "error": None, "run_dir": str(run_dir), **fields}
        self.flush()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.flush()

    def flush(self) -> None:
        write_json_atomic(self.path, self.data)


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_predictions(path: Path, predictions: Sequence[Any], references: Sequence[Any], epoch: int) -> None:
    """One JSON line per scored example (index, prediction, reference): what paired significance tests read."""
    rows = (
        json.dumps({"index": i, "prediction": p, "reference": r, "epoch": epoch})
        for i, (p, r) in enumerate(zip(predictions, references, strict=True))
    )
    write_text_atomic(path, "\n".join(rows) + "\n")


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows `write_predictions` wrote, in example order."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def summary_line(rec: Mapping[str, Any]) -> str:
    if rec.get("status") != "ok":
        return f"peftds train: {rec.get('status')}: {rec.get('error')} (record: {rec.get('run_dir')}/{RESULT_FILE})"
    best = rec.get("best") or {}
    return (
        f"task={rec['task']} design={rec['design']} model={rec.get('model')} "
        f"params={rec['trainable_params']:,} ({rec['trainable_pct']:.3f}%) "
        f"{rec['eval_split']} score={rec['score']:.2f} (best epoch {best.get('epoch')}, "
        f"last {rec['last']['score']:.2f}) time={rec['wall_time_s']:.0f}s -> {rec['run_dir']}"
    )

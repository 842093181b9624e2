"""One search trial: the Hydra task function that trains a sampled design on one task, and its record.

Hydra launchers dispatch `trial_job` (joblib pickles it: it stays a module-level function); it runs an
ordinary `peftds train` job (peftds.train.job.train_job) in the Hydra job dir and leaves result.json there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftds.config.schema import convert
from peftds.config.sections import SearchConfig
from peftds.files import RESULT_FILE, read_json
from peftds.search.designs import Sample
from peftds.train.launched import run_launched

FINISHED = ("ok", "failed", "diverged")  # failed and diverged at every fidelity, ok up to its epochs
RETURNED_KEYS = (
    "status", "error", "score", "best", "wall_time_s", "trainable_params", "device", "run_dir", "epochs_trained",
    "complete",
)  # fmt: skip


@dataclass
class Trial:
    """A (design, task) training; `keys` are the table rows it fills (a design may recur across options/stages)."""

    trial_id: str
    task: str
    sample: Sample
    keys: list[tuple[str, str, int, str]] = field(default_factory=list)


def trial_id(digest: str, task: str, seed: int, regime_hash: str) -> str:
    """A trial's identity: design digest, task, seed and training regime (existing search dirs depend on it).
    The regime holds the schedule's horizon (train.epochs) but not the fidelity (train.stop_epoch): a trial
    stopped after epoch k and the same trial continued to the end are one trial, one dir, one checkpoint."""
    return f"{digest}-{task}-s{seed}-r{regime_hash}"


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    """A trial's result.json (None while missing or unreadable)."""
    return read_json(Path(trial_dir) / RESULT_FILE)


def trained_epochs(rec: Mapping[str, Any]) -> float:
    """Epochs a record's run has trained (a record older than checkpoints trained its whole schedule)."""
    if rec.get("complete", True):
        return math.inf
    return float(rec.get("epochs_trained") or 0)


def finished_result(trial_dir: Path, epochs: int | None = None) -> dict[str, Any] | None:
    """The record of a trial finished at fidelity `epochs` (None: its whole schedule), ok or failed; None for
    one not run yet, interrupted, or stopped before that epoch (train.stop_epoch, a preemption): running it
    again continues it from its checkpoint. A preempted run counts at the epochs it completed."""
    rec = read_result(trial_dir)
    status = None if rec is None else rec.get("status")
    if status in FINISHED and status != "ok":
        return rec
    if status == "ok" or (status == "preempted" and epochs is not None):
        return rec if trained_epochs(rec) >= (math.inf if epochs is None else epochs) else None
    return None


def effective_status(rec: Mapping[str, Any] | None) -> str | None:
    """A record's status as the search counts it: a diverged run, and an `ok` run whose score is missing or
    not finite, count as failed (the error says why)."""
    if rec is None:
        return None
    status = rec.get("status")
    if status == "diverged":
        return "failed"
    score = rec.get("score")
    if status == "ok" and not (isinstance(score, int | float) and math.isfinite(score)):
        return "failed"
    return status


def score_at_epoch(rec: Mapping[str, Any], k: int) -> float:
    """A trial's score at fidelity k (a record finished at epoch k or later): its best held-out score over
    epochs 1..k, what a trial stopped after epoch k reports (NaN: it failed)."""
    if effective_status(rec) not in ("ok", "preempted"):
        return math.nan
    scores = [e.get("score") for e in (rec.get("epochs") or [])[:k]]
    finite = [float(x) for x in scores if isinstance(x, int | float) and math.isfinite(x)]
    return max(finite) if len(finite) == k else math.nan


def trial_job(cfg: Any) -> dict[str, Any]:
    """The Hydra task function of a search trial: an ordinary peftds train job in the Hydra job dir, quiet
    (its output goes to trial.out), plus the device it ran on."""
    settings = convert(SearchConfig, cfg.get("search"))
    rec = run_launched(cfg, gpu_slots=settings.gpu_slots, threads=settings.trial_threads)
    return {k: rec.get(k) for k in RETURNED_KEYS}

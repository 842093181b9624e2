"""Is the best design of a column better than the second best? Two paired tests.

* Paired t-test over seeds (scipy.stats.ttest_rel): the two designs' scores of the same seed form a pair.
* Paired bootstrap over dev examples, from the runs' saved predictions. For one task, with the seeds
  both designs finished (s = 1..S) and n dev examples: draw n example indices with replacement (the same
  draw for every seed and both designs) and compute

      d* = mean over s of [ metric(best_s on the draw) - metric(second_s on the draw) ]

  with the task's metric (peftds.data.metrics.compute_metrics). For an average column d* is the mean of
  the tasks' d*, each task resampled on its own. With B draws, p = min(1, 2 * min(P(d* <= 0), P(d* >= 0)))
  where P(.) = (count + 1) / (B + 1): two-sided, and never exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftds.data.metrics import compute_metrics


def paired_t(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of a vs b (same seeds in the same order); None when undefined
    (fewer than 2 pairs, or every difference equal)."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b) or len(a) < 2 or np.ptp(a - b) < 1e-12:
        return None  # every pair differs by the same amount: the t statistic is undefined
    p = float(ttest_rel(a, b).pvalue)
    return None if math.isnan(p) else p


@dataclass
class PairedPredictions:
    """One task's dev predictions of the two designs, per common seed (same order)."""

    task: Any  # peftds.data.tasks.Task
    metric: str  # "score" or one of the task's metrics
    references: list[Any]
    best: list[list[Any]]  # per seed
    second: list[list[Any]]


def metric_function(task: Any, metric: str) -> Callable[[Sequence[Any], Sequence[Any]], float]:
    """The column's metric of (predictions, references)."""

    def fn(preds: Sequence[Any], refs: Sequence[Any]) -> float:
        return compute_metrics(task, preds, refs)[metric]

    return fn


def per_example(task: Any, metric: str) -> bool:
    """Whether the metric is a plain mean over examples (accuracy): then a resample is a mean of 0/1s."""
    names = list(task.score) if metric == "score" else [metric]
    return task.kind == "classification" and names == ["accuracy"]


def resampled_differences(pair: PairedPredictions, draws: np.ndarray) -> np.ndarray:
    """d* of every draw (rows of example indices) for one task."""
    refs = pair.references
    if per_example(pair.task, pair.metric):
        r = np.asarray(refs, dtype=np.int64)
        diff = np.mean([np.asarray(a, np.int64) == r for a in pair.best], axis=0, dtype=float) - np.mean(
            [np.asarray(b, np.int64) == r for b in pair.second], axis=0, dtype=float
        )
        return 100.0 * diff[draws].mean(axis=1)
    fn = metric_function(pair.task, pair.metric)
    out = np.empty(len(draws))
    for i, idx in enumerate(draws):
        rs = [refs[j] for j in idx]
        ds = [fn([a[j] for j in idx], rs) - fn([b[j] for j in idx], rs) for a, b in zip(pair.best, pair.second)]
        out[i] = float(np.mean(ds))
    return out


def paired_bootstrap(pairs: Sequence[PairedPredictions], resamples: int = 1000, seed: int = 0) -> float | None:
    """Two-sided p that the best and the second best differ (see the module docstring); None without data."""
    pairs = [p for p in pairs if p.best and p.second and p.references]
    if not pairs or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for pair in pairs:
        n = len(pair.references)
        if any(len(x) != n for x in [*pair.best, *pair.second]):
            return None  # runs scored on different dev sets cannot be paired
        total += resampled_differences(pair, rng.integers(0, n, size=(resamples, n)))
    total /= len(pairs)
    le = (np.sum(total <= 0) + 1) / (resamples + 1)
    ge = (np.sum(total >= 0) + 1) / (resamples + 1)
    return float(min(1.0, 2 * min(le, ge)))

"""Is the best design of a column better than the second best? Two paired tests.

* Paired t-test over seeds (scipy.stats.ttest_rel): the two designs' scores of the same seed form a pair.
* Paired bootstrap over dev examples, from the runs' saved predictions. For one task, with the seeds
  both designs finished (s = 1..S) and n dev examples: draw n example indices with replacement (the same
  draw for every seed and both designs) and compute

      d* = mean over s of [ metric(best_s on the draw) - metric(second_s on the draw) ]

  with the task's metric (peftds.data.metrics.compute_metrics). For an average column d* is the mean of
  the tasks' d*, each task resampled on its own. With B draws, p = min(1, 2 * min(P(d* <= 0), P(d* >= 0)))
  where P(.) = (count + 1) / (B + 1): two-sided, and never exactly 0.

  Accuracy, ROUGE-F and BLEU are computed once per run from per-example statistics (0/1 hits, each
  example's ROUGE F-measure, each segment's BLEU n-gram counts and lengths); a resample re-weights them by
  how often it draws each example, which gives exactly the metric of the resampled predictions. Other
  metrics (F1, MCC, correlations) are recomputed on every resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftds.data.metrics import ROUGE, bleu_from_statistics, bleu_statistics, compute_metrics, rouge_per_example


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


def metric_names(task: Any, metric: str) -> list[str]:
    """The task metrics a column's value is the mean of."""
    return list(task.score) if metric == "score" else [metric]


def decomposes(task: Any, metric: str) -> bool:
    """Whether the column's metric is a function of per-example statistics summed over the examples:
    accuracy and ROUGE-F (means over examples) and BLEU (sums of per-segment n-gram counts). Then every
    resample only re-weights statistics computed once per run."""
    ok = ("bleu", *ROUGE) + (("accuracy",) if task.kind == "classification" else ())
    return all(m in ok for m in metric_names(task, metric))


# (id of the prediction list, id of the reference list) -> (the two lists, metric name -> per-example statistics)
StatisticsCache = dict[tuple[int, int], tuple[Any, Any, dict[str, np.ndarray]]]


def example_statistics(name: str, preds: Sequence[Any], refs: Sequence[Any], cache: StatisticsCache) -> np.ndarray:
    """(n, k) statistics of every example for one metric (computed once per run: the cache keeps them)."""
    key = (id(preds), id(refs))
    if key not in cache:
        cache[key] = (preds, refs, {})  # the lists are kept, so their ids stay theirs
    stats = cache[key][2]
    if name not in stats:
        if name == "accuracy":
            stats[name] = 100.0 * (np.asarray(preds, np.int64) == np.asarray(refs, np.int64))[:, None]
        elif name == "bleu":
            stats[name] = bleu_statistics(preds, refs)
        else:  # one pass of the ROUGE scorer gives all three
            stats.update({k: v[:, None] for k, v in rouge_per_example(preds, refs).items()})
    return stats[name]


def value_from_sums(name: str, sums: np.ndarray, n: int) -> np.ndarray:
    """The metric of every resample from its summed statistics (B, k)."""
    if name == "bleu":
        return np.array([bleu_from_statistics(row) for row in sums])
    return sums[:, 0] / n


def draw_counts(draws: np.ndarray, n: int) -> np.ndarray:
    """(B, n): how often each example is in each draw."""
    b = len(draws)
    return np.bincount((draws + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n).astype(float)


def resampled_differences(
    pair: PairedPredictions, draws: np.ndarray, cache: StatisticsCache | None = None
) -> np.ndarray:
    """d* of every draw (rows of example indices) for one task."""
    refs = pair.references
    if decomposes(pair.task, pair.metric):
        cache = {} if cache is None else cache
        counts = draw_counts(draws, len(refs))
        names = metric_names(pair.task, pair.metric)

        def value(preds: Sequence[Any]) -> np.ndarray:
            return np.mean(
                [value_from_sums(m, counts @ example_statistics(m, preds, refs, cache), len(refs)) for m in names],
                axis=0,
            )

        return np.mean([value(a) - value(b) for a, b in zip(pair.best, pair.second)], axis=0)
    fn = metric_function(pair.task, pair.metric)
    out = np.empty(len(draws))
    for i, idx in enumerate(draws):
        rs = [refs[j] for j in idx]
        ds = [fn([a[j] for j in idx], rs) - fn([b[j] for j in idx], rs) for a, b in zip(pair.best, pair.second)]
        out[i] = float(np.mean(ds))
    return out


def paired_bootstrap(
    pairs: Sequence[PairedPredictions], resamples: int = 1000, seed: int = 0, cache: StatisticsCache | None = None
) -> float | None:
    """Two-sided p that the best and the second best differ (see the module docstring); None without data.
    `cache` keeps per-example statistics between calls (one table's columns share runs)."""
    pairs = [p for p in pairs if p.best and p.second and p.references]
    if not pairs or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for pair in pairs:
        n = len(pair.references)
        if any(len(x) != n for x in [*pair.best, *pair.second]):
            return None  # runs scored on different dev sets cannot be paired
        total += resampled_differences(pair, rng.integers(0, n, size=(resamples, n)), cache)
    total /= len(pairs)
    le = (np.sum(total <= 0) + 1) / (resamples + 1)
    ge = (np.sum(total >= 0) + 1) / (resamples + 1)
    return float(min(1.0, 2 * min(le, ge)))

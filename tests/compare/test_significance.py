"""The two paired tests on hand-made numbers and predictions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ttest_rel

from peftds.compare.significance import PairedPredictions, paired_bootstrap, paired_t
from peftds.data.tasks import load_task


def test_paired_t_is_scipys():
    a, b = [81.0, 83.5, 82.2, 84.0], [80.1, 82.0, 82.4, 81.9]
    assert paired_t(a, b) == pytest.approx(ttest_rel(a, b).pvalue)
    assert paired_t([1.0], [0.0]) is None  # one pair: undefined
    assert paired_t([2.0, 3.0], [1.0, 2.0]) is None  # the same difference every seed: undefined


def pairs(task_name, best, second, refs):
    return PairedPredictions(load_task(task_name), "score", refs, best, second)


def test_bootstrap_small_for_a_clear_difference_large_for_identical():
    rng = np.random.default_rng(0)
    refs = list(rng.integers(0, 2, 300))
    good = [[r if rng.random() < 0.9 else 1 - r for r in refs] for _ in range(3)]
    bad = [[r if rng.random() < 0.6 else 1 - r for r in refs] for _ in range(3)]
    assert paired_bootstrap([pairs("sst2", good, bad, refs)], 500) < 0.01
    assert paired_bootstrap([pairs("sst2", good, good, refs)], 500) == 1.0


def test_bootstrap_with_a_non_decomposable_metric():
    rng = np.random.default_rng(1)
    refs = list(rng.integers(0, 2, 120))
    good = [[r if rng.random() < 0.95 else 1 - r for r in refs] for _ in range(2)]
    bad = [[int(rng.integers(0, 2)) for _ in refs] for _ in range(2)]
    p = paired_bootstrap([pairs("mrpc", good, bad, refs), pairs("cola", good, bad, refs)], 100)
    assert p < 0.05


def summaries(rng, refs, keep):
    """Predictions that keep each reference word with probability `keep` (else a filler word)."""
    return [" ".join(w if rng.random() < keep else "the" for w in r.split()) for r in refs]


def real_xsum_summaries(data_dir, n):
    import json

    with open(data_dir / "xsum" / "xsum_test1000.jsonl") as fh:
        return [json.loads(line)["summary"] for line, _ in zip(fh, range(n))]


@pytest.mark.parametrize(("task_name", "metric"), [("xsum", "rouge2"), ("xsum", "score"), ("wmt16_en_ro", "bleu")])
def test_per_example_statistics_give_the_metric_of_every_resample(task_name, metric, data_dir):
    """Re-weighting per-example ROUGE-F / per-segment BLEU statistics is exactly the metric recomputed
    on the resampled predictions."""
    from peftds.compare.significance import metric_function, resampled_differences

    rng = np.random.default_rng(2)
    refs = real_xsum_summaries(data_dir, 60)
    task = load_task(task_name)
    pair = PairedPredictions(task, metric, refs, [summaries(rng, refs, 0.8)], [summaries(rng, refs, 0.5)])
    draws = rng.integers(0, len(refs), size=(5, len(refs)))
    fn = metric_function(task, metric)
    slow = []
    for d in draws:
        rs = [refs[j] for j in d]
        slow.append(fn([pair.best[0][j] for j in d], rs) - fn([pair.second[0][j] for j in d], rs))
    assert resampled_differences(pair, draws) == pytest.approx(slow, abs=1e-9)


def test_rouge_bootstrap_scores_each_example_once(monkeypatch, data_dir):
    """The bootstrap of a ROUGE column scores every prediction once, not once per resample."""
    from rouge_score import rouge_scorer

    calls = []
    score = rouge_scorer.RougeScorer.score
    monkeypatch.setattr(rouge_scorer.RougeScorer, "score", lambda self, t, p: calls.append(1) or score(self, t, p))
    rng = np.random.default_rng(3)
    refs = real_xsum_summaries(data_dir, 50)
    best = [summaries(rng, refs, 0.9) for _ in range(2)]
    second = [summaries(rng, refs, 0.4) for _ in range(2)]
    assert paired_bootstrap([pairs("xsum", best, second, refs)], 200) < 0.01
    assert len(calls) == 4 * len(refs)  # 2 seeds x 2 designs, each example once

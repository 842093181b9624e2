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

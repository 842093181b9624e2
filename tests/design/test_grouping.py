"""Grouping patterns (peftds.design.grouping, SPEC §2): the pattern rules, complete enumeration,
seeded sampling, errors; all_groupings and feasible_groupings agree."""

from __future__ import annotations

import itertools
import random

import pytest

from peftds.design.grouping import PATTERNS, all_groupings, feasible_groupings, sample_grouping, satisfies
from peftds.errors import InfeasibleDesign, PeftdsError


def test_feasible_groupings_unchanged():
    """The existing pattern enumeration keeps its behaviour (all_groupings only adds pattern=None)."""
    assert all_groupings(6, 4, "spindle") == feasible_groupings(6, 4, "spindle") == ((1, 2, 2, 1),)
    assert len(all_groupings(6, 4)) == 10  # C(5, 3)


@pytest.mark.parametrize(
    "sizes,pattern,ok",
    [
        ((4, 8, 8, 4), "spindle", True),
        ((4, 8, 4, 4), "spindle", False),  # an end group not strictly smaller than every middle one
        ((8, 4, 4, 8), "bottleneck", True),
        ((8, 4, 8, 8), "bottleneck", False),
        ((6, 6, 6, 6), "uniform", True),
        ((5, 6, 6, 7), "uniform", False),
        ((6, 7, 6, 5), "uniform", False),
        ((6, 7, 6, 6), "uniform", True),
        ((3, 5, 7, 9), "increasing", True),
        ((6, 6, 6, 6), "increasing", False),  # needs n_1 < n_K
        ((9, 7, 5, 3), "decreasing", True),
        ((3, 9, 6, 6), "decreasing", False),
    ],
)
def test_satisfies(sizes, pattern, ok):
    assert satisfies(sizes, pattern) is ok


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("num_layers,k", [(24, 4), (12, 4), (6, 4), (12, 3)])
def test_enumeration_is_complete_and_valid(pattern, num_layers, k):
    """Brute force over all K-tuples: enumeration == every composition satisfying the pattern."""
    brute = {
        s
        for s in itertools.product(range(1, num_layers + 1), repeat=k)
        if sum(s) == num_layers and satisfies(s, pattern)
    }
    assert set(feasible_groupings(num_layers, k, pattern)) == brute


def test_sampling_is_seeded_and_feasible():
    a = [sample_grouping(24, 4, "spindle", random.Random(s)) for s in range(20)]
    b = [sample_grouping(24, 4, "spindle", random.Random(s)) for s in range(20)]
    assert a == b
    assert all(satisfies(s, "spindle") and sum(s) == 24 for s in a)
    assert len(set(a)) > 5


def test_infeasible_pattern_names_l_k_and_pattern():
    with pytest.raises(InfeasibleDesign, match=r"'spindle'.*L=5.*K=4"):
        sample_grouping(5, 4, "spindle", random.Random(0))  # 1,? ,?,1 with middles > 1 needs >= 6 layers
    with pytest.raises(PeftdsError, match="unknown grouping pattern 'zigzag'"):
        feasible_groupings(24, 4, "zigzag")

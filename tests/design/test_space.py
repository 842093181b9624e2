"""Design spaces (peftds.design.space, SPEC §5): constraints, feasibility, round trips, and uniform
sampling over feasible groupings, tuned groups and strategy subsets."""

from __future__ import annotations

import collections
import random

import pytest

from peftds.design.grouping import all_groupings, nonempty_subsets
from peftds.design.space import Space
from peftds.errors import PeftdsError
from peftds.search.sampler import draw_seed

STRATS = ("adapter", "prefix", "bitfit", "lora")


# ----------------------------------------------------------------------------------- spaces
def test_space_defaults_are_unconstrained():
    s = Space.from_config({})
    assert (s.groups, s.grouping, s.allocation, s.tuned) == (4, None, None, None)
    assert s.strategies == (None,) * 4 and s.pool == STRATS


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"groupin": "spindle"}, r"unknown key\(s\) \['groupin'\]"),
        ({"grouping": "zigzag"}, "unknown grouping pattern 'zigzag'"),
        ({"grouping": [1, 2, 3]}, r"grouping sizes \[1, 2, 3\] must be 4 positive integers"),
        ({"allocation": "sideways"}, "unknown allocation 'sideways'"),
        ({"tuned": [0, 2]}, r"tuned groups \[0, 2\] must be within 1..4"),
        ({"tuned": []}, "tuned must be 'all' or a non-empty list"),
        ({"strategies": [["adapter"]]}, "one entry .* per group"),
        ({"strategies": [["adaptor"], None, None, None]}, "group 1 names unknown strategy 'adaptor'"),
        ({"strategies": [[], None, None, None]}, "strategies of group 1 is empty"),
        ({"pool": ["lora", "dora"]}, "pool names unknown strategy 'dora'"),
        ({"groups": "four"}, "groups must be an integer"),
    ],
)
def test_space_config_errors_name_the_key(cfg, match):
    with pytest.raises(PeftdsError, match=match):
        Space.from_config({"name": "bad", **cfg})


@pytest.mark.parametrize(
    "cfg,L,match",
    [
        ({"grouping": "spindle"}, 4, r"'spindle' is infeasible for L=4 layers in K=4"),
        ({"grouping": [1, 1, 1, 1]}, 6, r"do not sum to L=6"),
        ({"groups": 8}, 6, r"groups=8 exceeds the L=6-layer stack"),
        ({"tuned": [1], "allocation": "increasing"}, 6, r"allocation 'increasing' needs at least two tuned groups"),
        ({"tuned": [2, 3], "strategies": [["lora"], None, None, None]}, 6, r"fixed for group\(s\) \[1\] but tuned"),
    ],
)
def test_impossible_constraints_are_named(cfg, L, match):
    s = Space.from_config({"name": "imp", **cfg})
    with pytest.raises(PeftdsError, match=match):
        s.check(L)


def test_constrain_conflicts_and_roundtrip():
    s = Space.from_config({"grouping": "spindle"})
    assert s.constrain("grouping", "spindle") == s
    with pytest.raises(PeftdsError, match="already constrained to spindle; cannot also be uniform"):
        s.constrain("grouping", "uniform")
    s2 = s.constrain("strategies", ["adapter", "lora"], group=1).constrain("tuned", "all")
    with pytest.raises(PeftdsError, match="group 1 strategies are already fixed"):
        s2.constrain("strategies", ["lora"], group=1)
    again = Space.from_config(s2.to_config())
    assert again == s2 and again.digest() == s2.digest()
    assert s2.describe() == "K=4 grouping=spindle allocation=any tuned=[1,2,3,4] strategies=A+L | ? | ? | ?"


@pytest.mark.parametrize("pattern,L", [(None, 9), ("uniform", 10), ("increasing", 12), ("spindle", 14)])
def test_groupings_are_uniform_over_feasible_ones(pattern, L):
    """Chi-square goodness of fit of sampled groupings against the uniform law on the feasible set."""
    from scipy.stats import chisquare

    space = Space.from_config({"grouping": pattern})
    feasible = all_groupings(L, 4, pattern)
    assert len(feasible) >= 3
    n = 300 * len(feasible) if len(feasible) < 20 else 6000
    counts = collections.Counter(
        tuple(space.sample(L, random.Random(draw_seed(1, "chi", pattern, i)))["grouping"]["sizes"]) for i in range(n)
    )
    assert set(counts) == set(feasible)
    obs = [counts[g] for g in feasible]
    assert chisquare(obs).pvalue > 1e-3


def test_tuned_and_strategy_subsets_are_uniform():
    from scipy.stats import chisquare

    space = Space.from_config({})
    n = 6000
    tuned = collections.Counter(tuple(space.sample(8, random.Random(i))["tuned"]) for i in range(n))
    assert len(tuned) == 15 and chisquare(list(tuned.values())).pvalue > 1e-3
    fixed = Space.from_config({"tuned": "all"})
    subs = collections.Counter(tuple(fixed.sample(8, random.Random(i))["strategies"][0]) for i in range(n))
    assert set(subs) == set(nonempty_subsets(STRATS)) and chisquare(list(subs.values())).pvalue > 1e-3

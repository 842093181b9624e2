"""Design spaces and the sampler (issue #4 §1-2, SPEC §5): constraints, feasibility, reproducible
and distinct draws, uniformity over feasible groupings."""
from __future__ import annotations

import collections
import random

import pytest

from peftds.errors import PeftdsError
from peftds.search.runner import StageSpec, stage_chain
from peftds.design.grouping import all_groupings, feasible_groupings, nonempty_subsets, satisfies
from peftds.design.space import Space
from peftds.search.sampler import draw_seed, sample_designs

STRATS = ("adapter", "prefix", "bitfit", "lora")


@pytest.fixture(scope="module")
def model24(compose_cfg_module):
    """Layer shapes of the tiny T5 (24-layer stack like T5-base) on the meta device."""
    return _model_ctx(compose_cfg_module("model=tiny_t5"))


@pytest.fixture(scope="module")
def compose_cfg_module():
    from peftds.config.compose import compose

    return lambda *ov: compose(list(ov))


def _model_ctx(cfg):
    from peftds.design.apply import layer_shapes
    from peftds.model.backbones import Backbone, build_model
    from peftds.design.budget import budget_params
    from peftds.design.plan import Design

    bb = Backbone(build_model(cfg.model, num_labels=2, device="meta"))
    shapes = layer_shapes(bb)
    n = bb.backbone_params()
    budget = budget_params(float(cfg.budget.fraction), n)

    def resolve(design):
        return Design.from_config({"name": "t", **design}).resolve(shapes, n, budget)

    return {"L": len(shapes), "resolve": resolve, "budget": budget}


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


# ----------------------------------------------------------------------------------- sampler
OPTIONS = [
    ("grouping", "increasing", None), ("grouping", "uniform", None), ("grouping", "decreasing", None),
    ("grouping", "spindle", None), ("grouping", "bottleneck", None),
    ("allocation", "increasing", None), ("allocation", "uniform", None), ("allocation", "decreasing", None),
    ("tuned", [2], None), ("tuned", [1, 4], None), ("tuned", "all", None),
    ("strategies", ["adapter", "lora"], 1), ("strategies", ["prefix"], 3),
]


@pytest.mark.parametrize("dim,value,group", OPTIONS)
def test_every_draw_satisfies_its_option(model24, dim, value, group):
    space = Space.from_config({}).constrain(dim, value, group=group)
    stats = sample_designs(space, model24["L"], 12, model24["resolve"], seed=3, stage="t", option=str(value))
    assert len(stats.draws) == 12 and not stats.exhausted
    for d in stats.draws:
        des, plan = d.design, d.plan
        sizes = tuple(des["grouping"]["sizes"])
        assert sum(sizes) == model24["L"] and len(sizes) == 4 and min(sizes) >= 1
        tuned = des["tuned"]
        if dim == "grouping":
            assert satisfies(sizes, value) and des["grouping"]["pattern"] == value
        if dim == "allocation":
            assert des["allocation"] == value
        if dim == "tuned":
            assert tuned == ([1, 2, 3, 4] if value == "all" else value)
        if dim == "strategies":
            assert group in tuned and des["strategies"][group - 1] == list(value)
        for g, subset in enumerate(des["strategies"], 1):
            assert bool(subset) == (g in tuned)  # tuned groups get a non-empty subset, untuned none
        assert plan.trainable_params <= plan.budget_params  # feasible (SPEC §3)
        assert plan.groups == list(sizes)


def test_draws_are_reproducible_distinct_and_prefix_stable(model24):
    space = Space.from_config({"grouping": "spindle"})
    args = dict(seed=7, stage="grouping", option="spindle")
    a = sample_designs(space, model24["L"], 10, model24["resolve"], **args)
    b = sample_designs(space, model24["L"], 10, model24["resolve"], **args)
    assert [d.design for d in a.draws] == [d.design for d in b.draws]
    digests = [d.plan.digest() for d in a.draws]
    assert len(set(digests)) == 10
    short = sample_designs(space, model24["L"], 4, model24["resolve"], **args)
    assert [d.design for d in short.draws] == [d.design for d in a.draws[:4]]  # index i depends on (seed, stage, option, i)
    other = sample_designs(space, model24["L"], 10, model24["resolve"], seed=8, stage="grouping", option="spindle")
    assert [d.design for d in other.draws] != [d.design for d in a.draws]
    # a draw can be recomputed from (seed, stage, option, index, attempt) alone
    d3 = a.draws[3]
    assert space.sample(model24["L"], random.Random(draw_seed(7, "grouping", "spindle", 3, d3.attempt))) == d3.design


def test_infeasible_draws_are_redrawn_and_small_spaces_exhaust(model24):
    calls = []

    def picky(design):  # every design without LoRA in group 1 is "infeasible"
        from peftds.errors import InfeasibleDesign

        calls.append(design)
        if "lora" not in design["strategies"][0]:
            raise InfeasibleDesign("no lora in G1")
        return model24["resolve"](design)

    space = Space.from_config({"tuned": "all"})
    stats = sample_designs(space, model24["L"], 5, picky, seed=0, stage="s", option="o")
    assert len(stats.draws) == 5 and stats.infeasible > 0
    assert all("lora" in d.design["strategies"][0] for d in stats.draws)

    tiny = Space.from_config({"grouping": [4, 8, 8, 4], "allocation": "uniform", "tuned": "all",
                              "strategies": [["lora"], ["lora"], ["adapter"], ["bitfit"]]})
    stats = sample_designs(tiny, model24["L"], 3, model24["resolve"], seed=0, stage="s", option="o", max_draws=20)
    assert len(stats.draws) == 1 and stats.exhausted and stats.duplicates == 20


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


# ----------------------------------------------------------------------------------- stage configs
def test_stage_configs_of_the_repo(compose_cfg):
    specs, chain = stage_chain(compose_cfg("+stage=all").stage)
    assert chain and [s.name for s in specs] == ["grouping", "allocation", "tunable", "strategy"]
    by = {s.name: s for s in specs}
    assert list(by["grouping"].options) == ["increasing", "uniform", "decreasing", "spindle", "bottleneck"]
    assert list(by["allocation"].options) == ["increasing", "uniform", "decreasing"]
    assert len(by["tunable"].options) == 15 and by["tunable"].options["all"] == "all"
    assert len(by["strategy"].options) == 15 and by["strategy"].group == "each"
    assert sorted(map(tuple, by["strategy"].options.values())) == sorted(nonempty_subsets(STRATS))
    for s in specs:
        s.validate_values(4)
    g2, chain = stage_chain(compose_cfg("+stage=strategy_g2").stage)
    assert not chain and g2[0].group == 2 and g2[0].name == "strategy_g2"
    s0, _ = stage_chain(compose_cfg("+stage=s0").stage)
    assert s0[0].dimension is None and list(s0[0].options) == ["s0"]
    assert Space.from_config(compose_cfg("+space=s0").space) == Space.from_config({})
    s4 = Space.from_config(compose_cfg("+space=s4_t5base").space)
    s4.check(24)
    assert s4.grouping == "spindle" and s4.strategies[0] == ("adapter", "lora")


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"name": "x", "dimension": "grouping", "options": {"a": "zigzag"}}, "option 'a'.*unknown grouping pattern"),
        ({"name": "x", "dimension": "depth", "options": {"a": 1}}, "unknown dimension 'depth'"),
        ({"name": "x", "dimension": "grouping", "options": {}}, "non-empty mapping"),
        ({"name": "x", "dimension": "grouping", "option": {"a": "uniform"}}, r"unknown key\(s\) \['option'\]"),
        ({"name": "x", "dimension": "tuned", "options": {"a": [5]}}, "option 'a'.*within 1..4"),
        ({"name": "x", "dimension": "strategies", "group": 1, "options": {"a": ["dora"]}}, "unknown strategy 'dora'"),
        ({"name": "x", "dimension": "grouping", "options": {"a b": "uniform"}}, "option name 'a b'"),
    ],
)
def test_stage_config_errors(cfg, match):
    with pytest.raises(PeftdsError, match=match):
        StageSpec.from_config(cfg).validate_values(4)


def test_feasible_groupings_unchanged():
    """The existing pattern enumeration keeps its behaviour (all_groupings only adds pattern=None)."""
    assert all_groupings(6, 4, "spindle") == feasible_groupings(6, 4, "spindle") == ((1, 2, 2, 1),)
    assert len(all_groupings(6, 4)) == 10  # C(5, 3)

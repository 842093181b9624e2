"""The sampler (peftds.search.sampler, SPEC §5): every draw satisfies its option and is feasible;
draws are reproducible, distinct and prefix-stable; infeasible draws are redrawn."""

from __future__ import annotations

import collections
import random

import pytest

from peftds.design.grouping import satisfies
from peftds.design.space import Space
from peftds.search.sampler import draw_seed, sample_designs


@pytest.fixture(scope="module")
def model24():
    """Layer shapes of the tiny T5 (24-layer stack like T5-base) on the meta device."""
    from peftds.config.compose import compose
    from peftds.design.apply import layer_shapes
    from peftds.design.budget import budget_params
    from peftds.design.plan import Design
    from peftds.model.backbones import Backbone, build_model

    cfg = compose(["model=tiny_t5"])
    bb = Backbone(build_model(cfg.model, num_labels=2, device="meta"))
    shapes = layer_shapes(bb)
    n = bb.backbone_params()
    budget = budget_params(float(cfg.budget.fraction), n)

    def resolve(design):
        return Design.from_config({"name": "t", **design}).resolve(shapes, n, budget)

    return {"L": len(shapes), "resolve": resolve, "budget": budget}


OPTIONS = [
    ("grouping", "increasing", None), ("grouping", "uniform", None), ("grouping", "decreasing", None),
    ("grouping", "spindle", None), ("grouping", "bottleneck", None),
    ("allocation", "increasing", None), ("allocation", "uniform", None), ("allocation", "decreasing", None),
    ("tuned", [2], None), ("tuned", [1, 4], None), ("tuned", "all", None),
    ("strategies", ["adapter", "lora"], 1), ("strategies", ["prefix"], 3),
]  # fmt: skip


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
    assert [d.design for d in short.draws] == [
        d.design for d in a.draws[:4]
    ]  # index i depends on (seed, stage, option, i)
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

    tiny = Space.from_config(
        {
            "grouping": [4, 8, 8, 4],
            "allocation": "uniform",
            "tuned": "all",
            "strategies": [["lora"], ["lora"], ["adapter"], ["bitfit"]],
        }
    )
    stats = sample_designs(tiny, model24["L"], 3, model24["resolve"], seed=0, stage="s", option="o", max_draws=20)
    assert len(stats.draws) == 1 and stats.exhausted and stats.duplicates == 20


def stage_draws(model24, dim, options, n, seed, paired, group=None):
    """Per option value the sampler's draws for one stage (the stage's name keys the draws)."""
    out = {}
    for value in options:
        space = Space.from_config({}).constrain(dim, value, group=group)
        stats = sample_designs(
            space, model24["L"], n, model24["resolve"], seed=seed, stage=dim, option=str(value), paired=paired
        )
        out[str(value)] = stats.draws
    return out


def test_paired_designs_share_every_draw_their_option_does_not_fix(model24):
    patterns = ["increasing", "uniform", "decreasing", "spindle", "bottleneck"]
    draws = stage_draws(model24, "grouping", patterns, 12, seed=5, paired=True)
    exact = 0
    for i in range(12):
        designs = [next(d for d in draws[p] if d.index == i) for p in patterns]
        if len({d.attempt for d in designs}) > 1:
            continue  # an infeasible or repeated draw moved one option on: not an exact pair
        exact += 1
        shared = {(tuple(d.design["tuned"]), d.design["allocation"], str(d.design["strategies"])) for d in designs}
        assert len(shared) == 1, f"index {i}: {shared}"
        assert len({tuple(d.design["grouping"]["sizes"]) for d in designs}) > 1  # the option's own dimension
    assert exact >= 8
    # a strategies stage of group 1: grouping sizes and allocation are shared, and the other groups'
    # strategies wherever the tuned groups agree (group 1 is forced into `tuned` by its fixed strategies)
    draws = stage_draws(model24, "strategies", [["lora"], ["adapter"], ["prefix"]], 12, seed=5, paired=True, group=1)
    for i in range(12):
        a, b, c = (next(d for d in ds if d.index == i) for ds in draws.values())
        if a.attempt == b.attempt == c.attempt:
            assert a.design["grouping"] == b.design["grouping"] == c.design["grouping"]
            assert a.design["allocation"] == b.design["allocation"] == c.design["allocation"]
            if a.design["tuned"] == b.design["tuned"]:
                assert a.design["strategies"][1:] == b.design["strategies"][1:]
    # unpaired, the options draw independently: the shared dimensions rarely coincide
    draws = stage_draws(model24, "grouping", patterns, 12, seed=5, paired=False)
    same = sum(
        len({tuple(next(d for d in draws[p] if d.index == i).design["tuned"]) for p in patterns}) == 1
        for i in range(12)
    )
    assert same <= 2


def category_counts(values, keep):
    """Counts of each value in `keep`, the rest pooled into one cell."""
    counts = collections.Counter(v if v in keep else "other" for v in values)
    return [counts.get(k, 0) for k in [*keep, "other"]]


@pytest.mark.slow
def test_paired_sampler_draws_each_option_from_the_unpaired_distribution(model24):
    """Stated test: for options that constrain each dimension in turn (a grouping pattern, a non-uniform
    allocation, which forbids single tuned groups, and fixed strategies, which force a group into `tuned`),
    1000 paired and 1000 unpaired first designs (sampling seeds 0..999, index 0, after infeasible redraws)
    have the same distribution of each feature: chi-square tests of homogeneity, each at level 0.001/12
    (Bonferroni over the 4 features x 3 options: a false alarm on a correct sampler has probability <= 0.001)."""
    from scipy.stats import chi2_contingency

    n = 1000
    features = {
        "tuned": lambda d: tuple(d["tuned"]),
        "allocation": lambda d: d["allocation"],
        "sizes": lambda d: tuple(d["grouping"]["sizes"]),
        "strategies of group 2": lambda d: tuple(d["strategies"][1]),
    }
    for dim, value, group in (
        ("grouping", "spindle", None),
        ("allocation", "increasing", None),
        ("strategies", ["prefix"], 3),
    ):
        space = Space.from_config({}).constrain(dim, value, group=group)
        samples = {}
        for paired in (True, False):
            designs = []
            for seed in range(n):
                stats = sample_designs(
                    space, model24["L"], 1, model24["resolve"], seed=seed, stage=dim, option=str(value), paired=paired
                )
                designs.append(stats.draws[0].design)
            samples[paired] = designs
        for name, feature in features.items():
            paired_values = [feature(d) for d in samples[True]]
            unpaired_values = [feature(d) for d in samples[False]]
            common = collections.Counter(paired_values + unpaired_values)
            keep = [v for v, c in common.most_common() if c >= 10][:30]  # cells with expected counts >= 5
            table = [category_counts(paired_values, keep), category_counts(unpaired_values, keep)]
            table = [[a, b] for a, b in zip(*table) if a + b > 0]
            if len(table) < 2:
                continue  # a fixed feature (e.g. the allocation of an allocation option)
            p = chi2_contingency(list(zip(*table)))[1]
            assert p > 0.001 / 12, f"{dim}={value}: {name} differs (p={p:.2g})"

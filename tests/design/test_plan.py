"""Designs resolve into plans by the exact budget rules; property test over many random designs."""

import random

import pytest

from peftds.design.apply import apply_plan, build, layer_shapes
from peftds.design.budget import ALLOCATIONS, budget_params
from peftds.design.grouping import PATTERNS, satisfies
from peftds.design.plan import Design, Plan
from peftds.errors import InfeasibleDesign, PeftdsError
from peftds.model.backbones import Backbone, build_model, count_trainable
from peftds.model.strategies import NAMES, get_strategy
from tests.helpers import TINY_MODELS as FAMILIES
from tests.helpers import built_from


def random_design(rng: random.Random) -> dict:
    k = rng.choice([1, 2, 3, 4])
    tuned = sorted(rng.sample(range(1, k + 1), rng.randint(1, k)))
    subsets = [rng.sample(NAMES, rng.randint(1, 4)) for _ in range(k)]
    return {
        "name": "random",
        "grouping": {"groups": k, "pattern": rng.choice(PATTERNS)} if k > 1 else {"groups": 1},
        "tuned": tuned,
        "allocation": rng.choice(ALLOCATIONS),
        "strategies": subsets,
        "hparams": {
            "adapter": {
                "placement": rng.choice(["ffn", "attn", "both"]),
                "variant": rng.choice(["sequential", "parallel"]),
            },
            "prefix": {"reparam": rng.random() < 0.2},
            "lora": {"targets": rng.choice([["q", "v"], ["q", "k", "v", "o"], ["v"]])},
        },
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_property_random_designs(family, tiny_model_cfgs):
    """plan count == built requires_grad count, <= B, >= 95% of B when scalable, pattern respected."""
    cfg = tiny_model_cfgs[family]
    rng = random.Random(family)
    fraction = float(cfg.budget.fraction)
    checked = infeasible = 0
    while checked < 12:
        d = random_design(rng)
        try:
            built = build(cfg.model, d, fraction, num_labels=2, seed=rng.randrange(10**6), device="meta")
        except InfeasibleDesign:
            infeasible += 1
            assert infeasible < 200, "almost every random design is infeasible"
            continue
        plan = built.plan
        body, _ = count_trainable(built.model, built.backbone)
        assert body == plan.trainable_params <= plan.budget_params
        if any(get_strategy(n).scalable for lp in plan.layers for n in lp.modules):
            assert plan.trainable_params >= 0.95 * plan.budget_params
        assert sum(plan.groups) == len(built.backbone.layers)
        if d["grouping"].get("pattern"):
            assert satisfies(tuple(plan.groups), d["grouping"]["pattern"])
        for lp in plan.layers:  # untuned groups get nothing; tuned ones exactly their subset
            expected = set(d["strategies"][lp.group - 1]) if lp.group in d["tuned"] else set()
            assert set(lp.modules) == expected
        checked += 1


def test_real_model_count_matches_plan(tiny_model_cfgs):
    """On real (non-meta) tensors too, for the paper design on tiny T5."""
    from peftds.config.compose import compose

    cfg = compose(["model=tiny_t5", "design=spindle_t5base"])
    built = build(*built_from(cfg))
    assert built.plan.groups == [4, 8, 8, 4]
    assert built.trainable_params == built.plan.trainable_params
    trainable = {n for n, p in built.model.named_parameters() if p.requires_grad}
    assert trainable and all(("shared" not in n) for n in trainable)


def test_plan_mismatch_is_an_error(tiny_model_cfgs):
    cfg = tiny_model_cfgs["tiny_bert"]
    bb = Backbone(build_model(cfg.model, num_labels=2))
    design = Design.from_config({"name": "x", "grouping": {"groups": 1}, "strategies": [["lora"]]})
    plan = design.resolve(layer_shapes(bb), bb.backbone_params(), budget_params(0.02, bb.backbone_params()))
    plan.layers[0].params["lora"] += 1  # a formula that disagrees with what gets built
    with pytest.raises(PeftdsError, match=r"plans .* but the built model has"):
        apply_plan(bb, plan)


def test_design_errors_name_the_culprit():
    with pytest.raises(PeftdsError, match=r"unknown key.*'colour'"):
        Design.from_config({"name": "d", "colour": "red", "strategies": ["lora"], "grouping": {"groups": 1}})
    with pytest.raises(PeftdsError, match="unknown strategy 'dora'"):
        Design.from_config({"name": "d", "grouping": {"groups": 1}, "strategies": [["dora"]]})
    with pytest.raises(PeftdsError, match=r"unknown key.*design.hparams.lora.rank"):
        Design.from_config(
            {"name": "d", "grouping": {"groups": 1}, "strategies": [["lora"]], "hparams": {"lora": {"rank": 4}}}
        )
    with pytest.raises(PeftdsError, match="tuned groups \\[5\\]"):
        Design.from_config(
            {"name": "d", "grouping": {"groups": 4, "pattern": "uniform"}, "tuned": [5], "strategies": ["lora"]}
        )
    d = Design.from_config({"name": "d", "grouping": {"groups": 2, "sizes": [3, 4]}, "strategies": ["lora"]})
    with pytest.raises(InfeasibleDesign, match="do not split the L=6-layer stack"):
        d.resolve([None] * 6, 10**6, 5000)


def test_plan_round_trip_and_digest(tiny_model_cfgs):
    cfg = tiny_model_cfgs["tiny_t5"]
    from peftds.config.compose import compose

    _, d, _ = built_from(compose(["model=tiny_t5", "design=spindle"]))
    a = build(cfg.model, d, 0.02, seed=3, device="meta").plan
    b = build(cfg.model, d, 0.02, seed=3, device="meta").plan
    assert a.digest() == b.digest() and a.compact() == b.compact()
    again = Plan.from_dict(a.to_dict())
    assert again.to_dict() == a.to_dict()
    # the concrete design written from a plan resolves to the same plan (what the search emits)
    c = build(cfg.model, a.design_config(), 0.02, seed=99, device="meta").plan
    assert c.digest() == a.digest()


def test_fixed_sizes_set_every_layer_at_the_designs_own_budget(tiny_model_cfgs):
    """A design with fixed_sizes: its sizes, groups = runs of equal sizes, its own count as its budget (the
    command's budget plays no part), and the concrete design of its plan resolves back to the same plan."""
    model = tiny_model_cfgs["tiny_bert"].model
    design = {"name": "mine", "fixed_sizes": {"lora": [8, 8, 4, 0, 0, 4]}, "hparams": {"lora": {"targets": ["q"]}}}
    plan = build(model, design, 0.02, device="meta").plan
    assert [lp.modules.get("lora", 0) for lp in plan.layers] == [8, 8, 4, 0, 0, 4]
    assert plan.groups == [2, 1, 2, 1] and plan.tuned == [1, 2, 4] and plan.allocation == "fixed"
    assert plan.budget_params == plan.trainable_params == (8 + 8 + 4 + 4) * (64 + 64)  # r (d_in + d_out) on q
    assert build(model, design, 0.5, device="meta").plan.digest() == plan.digest()
    assert build(model, plan.design_config(), 0.02, device="meta").plan.digest() == plan.digest()
    with pytest.raises(InfeasibleDesign, match=r"fixed_sizes\.lora lists 3 layers, the model has 6"):
        build(model, {**design, "fixed_sizes": {"lora": [1, 2, 3]}}, 0.02, device="meta")
    with pytest.raises(PeftdsError, match="bitfit has no size"):
        Design.from_config({**design, "fixed_sizes": {"bitfit": [1] * 6}})
    with pytest.raises(PeftdsError, match="so grouping cannot be given"):
        Design.from_config({**design, "grouping": {"groups": 1}})

"""Budget rules (SPEC §3) on the real T5-base shape (built on the meta device: no weights)."""

import pytest

from peftds.design.apply import layer_shapes
from peftds.design.budget import budget_params, largest_size, layer_budgets, size_layers
from peftds.errors import InfeasibleDesign
from peftds.model.backbones import Backbone, build_model
from peftds.model.strategies import get_strategy

T5_BASE = {
    "arch": "t5",
    "pretrained": False,
    "shape": {
        "d_model": 768,
        "d_kv": 64,
        "num_heads": 12,
        "d_ff": 3072,
        "num_layers": 12,
        "num_decoder_layers": 12,
        "vocab_size": 32128,
    },
}


@pytest.fixture(scope="module")
def t5base():
    bb = Backbone(build_model(T5_BASE, device="meta"))
    return bb, layer_shapes(bb)


def test_t5_base_counts(t5base):
    bb, shapes = t5base
    assert bb.backbone_params() == 222_903_552  # the published T5-base size
    assert len(shapes) == 24 and shapes[0].stack == "encoder" and shapes[12].stack == "decoder"
    # SPEC §4: BitFit adds biases to every linear of every layer: about 0.09% of T5-base
    bitfit = sum(get_strategy("bitfit").cost(s, 0, {}) for s in shapes)
    assert bitfit == 12 * (4 * 768 + 3072 + 768) + 12 * (8 * 768 + 3072 + 768)
    assert 0.0009 < bitfit / bb.backbone_params() < 0.00092


def test_layer_budgets_allocations():
    groups = [1, 1, 2, 2, 2, 3, 4, 4]
    uni = layer_budgets(groups, [1, 2, 3, 4], "uniform", 800)
    assert uni == [100.0] * 8
    inc = layer_budgets(groups, [1, 2, 3, 4], "increasing", 1000)
    assert sum(inc) == pytest.approx(1000)
    per_group = {g: inc[groups.index(g)] for g in (1, 2, 3, 4)}
    assert per_group[1] < per_group[2] < per_group[3] < per_group[4]
    dec = layer_budgets(groups, [2, 4], "decreasing", 1000)
    assert dec[0] == dec[1] == dec[5] == 0  # untuned groups get nothing
    assert dec[2] > dec[6] > 0 and sum(dec) == pytest.approx(1000)
    with pytest.raises(InfeasibleDesign, match="at least two tuned groups"):
        layer_budgets(groups, [3], "increasing", 1000)


def test_largest_size_is_the_boundary(t5base):
    _, shapes = t5base
    for name in ("adapter", "prefix", "lora"):
        s = get_strategy(name)
        share = 20_000
        size = largest_size(name, shapes[13], s.defaults, share)
        assert s.cost(shapes[13], size, s.defaults) <= share < s.cost(shapes[13], size + 1, s.defaults)


def test_decoder_prefix_bitfit_lora_keeps_more_than_the_naive_split(t5base):
    """SPEC §3: integer sizes alone keep ~81% of a decoder layer's share; pooling recovers the rest."""
    bb, shapes = t5base
    hp = {n: get_strategy(n).defaults for n in ("prefix", "bitfit", "lora")}
    budget = budget_params(0.005, bb.backbone_params())
    dec = shapes[12:]
    per = [budget / len(dec)] * len(dec)
    sizes = size_layers(dec, [("prefix", "bitfit", "lora")] * len(dec), per, hp, budget)
    total = sum(get_strategy(n).cost(s, z, hp[n]) for s, sz in zip(dec, sizes) for n, z in sz.items())
    assert total <= budget
    steps = [
        get_strategy(n).cost(dec[0], 2, hp[n]) - get_strategy(n).cost(dec[0], 1, hp[n]) for n in ("prefix", "lora")
    ]
    assert budget - total < min(steps)  # within one (cheapest) step of B
    ranks = [sz["lora"] for sz in sizes]
    assert max(ranks) - min(ranks) <= 1  # spread as evenly as integer sizes allow


def test_unaffordable_size_one_is_infeasible(t5base):
    _, shapes = t5base
    hp = {"lora": get_strategy("lora").defaults}
    with pytest.raises(InfeasibleDesign, match="cannot afford lora at size 1"):
        size_layers(shapes[:2], [("lora",), ("lora",)], [100.0, 100.0], hp, 200)

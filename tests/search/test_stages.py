"""Stage configs (peftds.search.stages): the repo's stages and chain, and config errors."""

from __future__ import annotations

import pytest

from peftds.config.compose import plain
from peftds.design.grouping import nonempty_subsets
from peftds.design.space import Space
from peftds.errors import PeftdsError
from peftds.search.stages import StageSpec, safe_name, stage_chain

STRATS = ("adapter", "prefix", "bitfit", "lora")


# ----------------------------------------------------------------------------------- stage configs
def test_stage_configs_of_the_repo(compose_cfg):
    specs, chain = stage_chain(plain(compose_cfg("+stage=all").stage))
    assert chain and [s.name for s in specs] == ["grouping", "allocation", "tunable", "strategy"]
    by = {s.name: s for s in specs}
    assert list(by["grouping"].options) == ["increasing", "uniform", "decreasing", "spindle", "bottleneck"]
    assert list(by["allocation"].options) == ["increasing", "uniform", "decreasing"]
    assert len(by["tunable"].options) == 15 and by["tunable"].options["all"] == "all"
    assert len(by["strategy"].options) == 15 and by["strategy"].group == "each"
    assert sorted(map(tuple, by["strategy"].options.values())) == sorted(nonempty_subsets(STRATS))
    for s in specs:
        s.validate_values(4)
    g2, chain = stage_chain(plain(compose_cfg("+stage=strategy_g2").stage))
    assert not chain and g2[0].group == 2 and g2[0].name == "strategy_g2"
    s0, _ = stage_chain(plain(compose_cfg("+stage=s0").stage))
    assert s0[0].dimension is None and list(s0[0].options) == ["s0"]
    assert Space.from_config(plain(compose_cfg("+space=s0").space)) == Space.from_config({})
    s4 = Space.from_config(plain(compose_cfg("+space=s4_t5base").space))
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


def test_for_group_and_safe_names():
    spec = StageSpec.from_config({"name": "strategy", "dimension": "strategy", "options": {"L": ["lora"]}})
    assert spec.group == "each" and spec.dimension == "strategies"
    assert spec.for_group(3).name == "strategy_g3" and spec.for_group(3).for_group(2).name == "strategy_g2"
    assert spec.describe() == "stage strategy (strategies of group each, 1 options)"
    assert safe_name("a b/c") == "a_b_c"
    with pytest.raises(PeftdsError, match="no stage selected"):
        stage_chain({})
    with pytest.raises(PeftdsError, match="chain names stage 'nope'"):
        stage_chain({"name": "c", "chain": ["nope"], "stages": {}})

"""What a search reads from the config (peftds.search.settings): the search presets hold only their
differences from search/default and compose to the same values, settings validation, the regime hash."""

from __future__ import annotations

import pytest
import yaml

from peftds.config.compose import conf_dir, plain
from peftds.config.sections import SearchConfig
from peftds.errors import PeftdsError
from peftds.search.settings import (
    SearchSetup,
    config_hash,
    min_ok_count,
    race_settings,
    regime_of,
    search_settings,
)

SEARCH_KEYS = SearchConfig.keys()


def composed(compose_cfg, *overrides):
    cfg = compose_cfg(*overrides, "+stage=grouping", "+space=s0")
    return cfg, plain(cfg.search), plain(cfg.data), plain(cfg.train)


def test_demo_preset_composes_to_the_values_of_make_search_demo(compose_cfg):
    """`make search-demo` (spindle 78.8 > bottleneck 78.2 > ...) depends on exactly these values."""
    cfg, search, data, train = composed(compose_cfg, "+search=demo")
    assert {k: search[k] for k in ("n", "epochs", "task_set", "tasks", "seed", "min_ok", "bootstrap", "max_draws")} == {
        "n": 5, "epochs": 1, "task_set": "glue_search", "tasks": ["sst2"], "seed": 0, "min_ok": 3,
        "bootstrap": 2000, "max_draws": 200,
    }  # fmt: skip
    assert search["batch_size"] is None and search["retry_failed"] is False and search["report"] is True
    assert data["max_train_samples"] == 2000 and data["heldout"] == 200
    assert float(train["lr"]) == 2e-3 and train["max_source_len"] == 64
    assert cfg.model.name_or_path == compose_cfg("model=minilm_l6").model.name_or_path
    # train=default (search/default selects train=paper): every other train key is the default group's
    default_train = plain(compose_cfg("train=default").train)
    assert {k: v for k, v in train.items() if k not in ("lr", "max_source_len")} == {
        k: v for k, v in default_train.items() if k not in ("lr", "max_source_len")
    }


def test_tiny_preset_and_presets_hold_only_their_differences(compose_cfg):
    _, search, data, train = composed(compose_cfg, "+search=tiny")
    assert (search["n"], search["min_ok"], search["bootstrap"], search["max_draws"], search["tasks"]) == (
        1, 1, 200, 100, ["sst2"],
    )  # fmt: skip
    assert (data["max_train_samples"], data["heldout"], train["max_steps"], train["max_source_len"]) == (16, 16, 2, 32)
    _, default, data, _ = composed(compose_cfg, "+search=default")
    assert set(default) == set(SEARCH_KEYS) and data["max_train_samples"] is None
    for preset in ("demo", "tiny", "racing"):
        text = yaml.safe_load((conf_dir() / "search" / f"{preset}.yaml").read_text())
        assert text["defaults"][0] == "default" and set(text["search"]) < set(SEARCH_KEYS)
        assert "dir" not in text["search"] and "report" not in text["search"]


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"n": 0}, "search.n must be >= 1"),
        ({"epochs": 0}, "search.epochs must be >= 1"),
        ({"n": "many"}, "search.n must be an integer, got 'many'"),
        ({"n": "10"}, "search.n must be an integer, got '10'"),
        ({"bootstrap": None}, "search.bootstrap must be an integer"),
        ({"min_ok": 0}, "search.min_ok must be > 0"),
        ({"n_designs": 3}, r"unknown key\(s\) .*n_designs"),
        ({"racing_delta": 1.5}, "search.racing_delta must be < 1"),
        ({"racing_method": "z"}, "search.racing_method"),
        ({"racing_round_size": 0}, "search.racing_round_size must be >= 1"),
        ({"racing_min_designs": 1}, "search.racing_min_designs must be >= 2"),
    ],
)
def test_search_settings_errors_name_the_key(raw, match):
    with pytest.raises(PeftdsError, match=match):
        search_settings(raw)


def test_racing_preset_and_race_settings(compose_cfg):
    _, search, _, _ = composed(compose_cfg, "+search=racing")
    _, default, _, _ = composed(compose_cfg, "+search=default")
    assert search == {**default, "racing": True} and default["racing"] is False
    r = race_settings(search_settings(search))
    assert (r.method, r.delta, r.round_size, r.min_designs, r.fidelity) == ("t", 0.05, 2, 3, None)


def test_search_settings_values():
    s = search_settings({"n": 10, "min_ok": 0.25})
    assert s.n == 10 and min_ok_count(s) == 3 and s.epochs == 3 and s.task_set == "glue"  # ceil(0.25 * 10)
    assert min_ok_count(search_settings({"n": 10, "min_ok": 4})) == 4
    assert min_ok_count(search_settings({"n": 2, "min_ok": 0.1})) == 1


def test_regime_hash_is_stable(compose_cfg):
    """Trial ids carry this hash: a change makes existing search dirs re-run every trial."""
    assert config_hash({"a": 1}) == "e4ad4daa" and config_hash([1, "x"], 10) == "7e39f38061"
    cfg = compose_cfg("model=tiny_bert", "+search=tiny", "+stage=grouping", "+space=s0")
    config = SearchSetup.from_config(cfg)
    assert config.regime_hash == "3a173544"
    # racing keys are search keys: a race shares its trials (ids) with the full protocol
    racing = compose_cfg("model=tiny_bert", "+search=tiny", "+stage=grouping", "+space=s0", "search.racing=true",
                         "search.racing_delta=0.2", "search.racing_method=hoeffding")  # fmt: skip
    assert SearchSetup.from_config(racing).regime_hash == "3a173544"
    # cosmetic keys (progress bars, logging, where data is read from, the model config's name) are left out
    sections = {"model": {"arch": "bert", "name": "x"}, "budget": {"fraction": 0.02},
                "data": {"dir": "/a", "heldout": 16}, "train": {"lr": 1e-3, "progress": True}}  # fmt: skip
    other = {"model": {"arch": "bert"}, "budget": {"fraction": 0.02}, "data": {"dir": "/b", "heldout": 16},
             "train": {"lr": 1e-3, "logging_steps": 5}}  # fmt: skip
    assert regime_of(sections, 1) == regime_of(other, 1)
    assert regime_of(sections, 1)["train"] == {"lr": 1e-3, "epochs": 1, "eval_split": "heldout"}


def test_search_config_is_plain(compose_cfg):
    cfg = compose_cfg("model=tiny_bert", "+search=tiny", "+stage=all", "+space=s0", "search.tasks=[sst2,rte]")
    config = SearchSetup.from_config(cfg)
    assert config.tasks == ["sst2", "rte"] and config.seed == 42 and config.settings.n == 1
    for value in (config.model, config.space, config.stage, config.data, config.hparams, config.regime):
        assert type(value) is dict
    assert config.stage["chain"] == ["grouping", "allocation", "tunable", "strategy"]
    assert config.budget_fraction == float(cfg.budget.fraction) and config.launcher_target == ""

"""A stage's designs (peftds.search.designs) and its outcome (peftds.search.selection): per-option
spaces, the sampled design files, stage.json checks on resume, the next space."""

from __future__ import annotations

import pytest
import yaml

from peftds.design.space import Space
from peftds.errors import PeftdsError
from peftds.search.designs import ModelContext, StageDesigns, group_sizes_text, option_spaces
from peftds.search.selection import next_space, write_space_next
from peftds.search.settings import SearchSetup
from peftds.search.stages import StageSpec


@pytest.fixture(scope="module")
def config():
    from peftds.config.compose import compose

    return SearchSetup.from_config(compose(["model=tiny_bert", "+search=tiny", "+stage=grouping", "+space=s0"]))


ALLOC = StageSpec.from_config({"name": "allocation", "dimension": "allocation",
                               "options": {"increasing": "increasing", "uniform": "uniform"}})  # fmt: skip


def test_option_spaces_name_infeasible_options():
    space = Space.from_config({"tuned": [1]})
    spaces, infeasible = option_spaces(ALLOC, space, 6)
    assert list(spaces) == ["uniform"] and spaces["uniform"].allocation == "uniform"
    assert "needs at least two tuned groups" in infeasible["increasing"]


def test_sampled_design_files_and_stage_json_checks(tmp_path, config):
    model = ModelContext.build(config)
    designs = StageDesigns(config, tmp_path, model, echo=lambda *a: None)
    stage_dir = tmp_path / "allocation"
    stage_dir.mkdir()
    meta = designs.load_or_sample(ALLOC, Space.from_config({}), stage_dir)
    assert meta["planned"] == {"increasing": 1, "uniform": 1} and meta["regime"] == config.regime_hash
    sample = meta["samples"]["uniform"][0]
    design = yaml.safe_load((tmp_path / sample["design_file"]).read_text())
    assert design["defaults"] == ["base_hparams", "_self_"] and design["name"] == "allocation-uniform-000"
    assert sample["design_ref"] == "allocation/uniform-000" and design["allocation"] == "uniform"
    plan = model.resolve({k: v for k, v in design.items() if k not in ("defaults", "name")})
    assert plan.digest() == sample["digest"] and group_sizes_text(plan) == sample["sizes"]
    assert designs.load_or_sample(ALLOC, Space.from_config({}), stage_dir) == meta  # reloaded, not resampled
    with pytest.raises(PeftdsError, match="sampled from another space"):
        designs.load_or_sample(ALLOC, Space.from_config({"grouping": "uniform"}), stage_dir)


def test_next_space_adds_the_winner_and_its_history(tmp_path):
    stats = {"mean": 71.23456, "ci_low": 70.0, "ci_high": 72.5, "designs_ok": 5}
    summary = {"winner": "uniform", "overlap": False, "options": {"uniform": stats}}
    space = next_space(ALLOC, Space.from_config({}), summary)
    assert space.allocation == "uniform" and space.name == "after_allocation"
    assert space.history[-1] == {"stage": "allocation", "option": "uniform", "value": "uniform", "mean": 71.2346,
                                 "ci": [70.0, 72.5], "designs": 5, "overlap_runner_up": False, "verdict": None,
                                 "within_tolerance": [], "dimension_left_open": False}  # fmt: skip
    path = write_space_next(tmp_path, ALLOC, space, "uniform", tmp_path)
    assert Space.from_config(yaml.safe_load(path.read_text())) == space


def test_on_tie_open_leaves_the_dimension_free_unless_decided():
    stats = {"mean": 71.0, "ci_low": 70.0, "ci_high": 72.5, "designs_ok": 5}
    summary = {"winner": "uniform", "overlap": True, "options": {"uniform": stats}, "verdict": "equivalent",
               "decision": {"within": ["increasing"]}}  # fmt: skip
    kept = next_space(ALLOC, Space.from_config({}), summary, on_tie="leader")
    assert kept.allocation == "uniform" and kept.history[-1]["within_tolerance"] == ["increasing"]
    free = next_space(ALLOC, Space.from_config({}), summary, on_tie="open")
    assert free.allocation is None and free.history[-1]["dimension_left_open"]
    decided = next_space(ALLOC, Space.from_config({}), {**summary, "verdict": "decided"}, on_tie="open")
    assert decided.allocation == "uniform"

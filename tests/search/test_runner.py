"""The Search (peftds.search.runner) through Hydra's basic launcher with a stand-in for training (fast):
every stage config of the repo chained (stage=all), selection, next spaces, the final design, options
left infeasible, and input errors caught before any training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from peftds.errors import PeftdsError
from peftds.search.launch import run_search
from tests.helpers import built_from

from .helpers import S4, quiet, rows


def test_stage_all_chains_every_stage_to_a_final_design(tmp_path, fake_training, compose_cfg, args):
    calls, _ = fake_training
    # the repo's chain (stage=all), with fewer options for speed (test_search_space checks the full lists)
    trim = [
        f"~stage.stages.tunable.options.{o}"
        for o in ("G2", "G3", "G4", "G13", "G14", "G23", "G24", "G34", "G123", "G124", "G234")
    ]
    trim += [
        f"~stage.stages.strategy.options.{o}" for o in ("P", "B", "L", "AB", "PB", "PL", "BL", "APL", "ABL", "APBL")
    ]
    assert run_search(args(tmp_path, "stage=all", "search.report=false", *trim), echo=quiet) == 0
    sdir = tmp_path / "s"
    stages = ["grouping", "allocation", "tunable", "strategy_g1", "strategy_g2", "strategy_g3", "strategy_g4"]
    assert json.loads((sdir / "search.json").read_text())["stages_run"] == stages
    winners = {}
    for st in stages:
        summary = json.loads((sdir / st / "summary.json").read_text())
        assert summary["status"] == "ok"
        winners[st] = summary["winner"]
        table = rows(sdir / st / "trials.csv")
        meta = json.loads((sdir / st / "stage.json").read_text())
        assert len(table) == sum(meta["planned"].values())  # one row per design x task (1 task)
        assert len({(r["option"], r["index"], r["task"]) for r in table}) == len(table)
        for f in ("space_next.yaml", "best_design.yaml"):
            assert (sdir / st / f).stat().st_size > 0
    assert winners == {
        "grouping": "spindle",
        "allocation": "uniform",
        "tunable": "all",
        "strategy_g1": "AL",
        "strategy_g2": "AP",
        "strategy_g3": "APB",
        "strategy_g4": "PBL",
    }
    # each stage sampled from the previous one's space
    alloc_space = json.loads((sdir / "allocation" / "stage.json").read_text())["space"]
    assert alloc_space["grouping"] == "spindle" and alloc_space["allocation"] is None
    g3 = json.loads((sdir / "strategy_g3" / "stage.json").read_text())
    for samples in g3["samples"].values():
        for s in samples:
            assert s["strategies"][:2] == S4[:2] and s["tuned"] == [1, 2, 3, 4] and s["allocation"] == "uniform"
    final = yaml.safe_load((sdir / "space_final.yaml").read_text())
    assert final["strategies"] == S4 and [h["stage"] for h in final["history"]] == stages
    # the final design is concrete and accepted by `peftds train design=<file>`
    best = sdir / "best_design.yaml"
    cfg = compose_cfg("model=tiny_roberta", f"design={best}")
    from peftds.design.grouping import satisfies

    sizes = tuple(cfg.design.grouping.sizes)
    assert sum(sizes) == 12 and satisfies(sizes, "spindle") and [list(s) for s in cfg.design.strategies] == S4
    from peftds.design.apply import build

    built = build(*built_from(cfg), num_labels=2, device="meta")
    assert tuple(built.plan.groups) == sizes and built.plan.trainable_params <= built.plan.budget_params
    # trials ran as Hydra jobs in their own dirs, with the trial metadata in their config
    assert all(Path(c["run_dir"]).parent == sdir / "trials" for c in calls)
    assert (Path(calls[0]["run_dir"]) / ".hydra" / "overrides.yaml").exists()
    assert {"id", "stage", "option", "index", "design_hash", "regime"} <= set(calls[0]["trial"])
    # a finished trial is never trained twice, also when the same design recurs in a later stage
    assert len({c["run_dir"] for c in calls}) == len(calls)


def test_options_left_infeasible_by_the_space_are_reported(tmp_path, fake_training, args):
    """Increasing allocation leaves single-group options of the tunable stage infeasible: they are
    reported, the others run."""
    space = tmp_path / "sp.yaml"
    space.write_text("name: inc\ngrouping: uniform\nallocation: increasing\n")
    assert run_search(args(tmp_path, "stage=tunable", f"space={space}"), echo=quiet) == 0
    s = json.loads((tmp_path / "s" / "tunable" / "summary.json").read_text())
    assert [o for o, v in s["options"].items() if not v["feasible"]] == ["G1", "G2", "G3", "G4"]
    assert "needs at least two tuned groups" in s["options"]["G1"]["reason"]
    assert s["winner"] == "all"
    report = (tmp_path / "s" / "tunable" / "report.md").read_text()
    assert "infeasible: " in report and "**all** ★" in report
    for f in ("edf.png", "scores.png"):
        assert (tmp_path / "s" / "tunable" / f).stat().st_size > 0


@pytest.mark.parametrize(
    "extra,space,match",
    [
        ([], "name: typo\ngroups: 4\ngroupng: spindle\n", r"space 'typo': unknown key\(s\) \['groupng'\]"),
        (
            ["stage=tunable"],
            "name: imp\ntuned: [1]\nallocation: increasing\n",
            "allocation 'increasing' needs at least two tuned groups",
        ),
        (["stage=strategy_g2"], "name: g\ntuned: [1, 3]\n", "group 2 is not tuned in this space"),
        (["stage=grouping"], "name: g\ngrouping: uniform\n", "the space already constrains grouping"),
        (
            ["stage=grouping", "model.shape.num_hidden_layers=4", "~stage.options.uniform"],
            None,
            r"every option is infeasible for this model \(L=4, K=4\): increasing: .*infeasible for L=4",
        ),
        (["search.n=0"], None, "search.n must be >= 1"),
        (["search.tasks=[sst2,nope]"], None, r"unknown task\(s\) \['nope'\]"),
        (["stage.options.a=zigzag", "stage=grouping"], None, "Could not override|option 'a'"),
        (["+stage.options.a=zigzag", "stage=grouping"], None, "option 'a': unknown grouping pattern 'zigzag'"),
        (["design=lora"], None, "drop `design=lora`"),
        (["data.dir=/nonexistent"], None, r"task 'sst2': dataset .* is not available offline"),
    ],
)
def test_bad_input_fails_before_any_training(tmp_path, fake_training, extra, space, match, args):
    calls, _ = fake_training
    a = args(tmp_path, *extra)
    if space is not None:
        (tmp_path / "space.yaml").write_text(space)
        a.append(f"space={tmp_path / 'space.yaml'}")
    with pytest.raises(PeftdsError, match=match):
        run_search(a, echo=quiet)
    assert calls == []


def test_what_a_search_writes_carries_its_model_and_settings(tmp_path, fake_training, args):
    """best_design.yaml names the model it was made for (train selects it), and space_next.yaml prints a
    next-stage command that continues the same search (its dir keeps model, tasks, N, ...)."""

    from peftds.config.compose import with_design_model

    a = args(tmp_path, "stage=allocation", "search.n=2")
    assert run_search(a, echo=quiet) == 0
    sdir = (tmp_path / "s").resolve()
    best = sdir / "allocation" / "best_design.yaml"
    assert yaml.safe_load(best.read_text())["model"] == "tiny_roberta"
    assert with_design_model([f"design={best}", "task=sst2"])[0] == "model=tiny_roberta"
    space_next = sdir / "allocation" / "space_next.yaml"
    text = space_next.read_text()
    assert f"# next: peftds search search.dir={sdir} stage=<next stage> space={space_next}" in text
    assert "model=tiny_roberta" in text and "search.tasks=[sst2]" in text and "search.n=2" in text

"""The search loop through Hydra's basic launcher with a stand-in for training (fast): every stage
config of the repo chained (stage=all), selection, next spaces, the final design, failures and NaNs,
resume without re-running, and input errors caught before any training (issue #4 §1-6)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from peftds.errors import PeftdsError
from peftds.search.runner import run_search

S4 = [["adapter", "lora"], ["adapter", "prefix"], ["adapter", "prefix", "bitfit"], ["prefix", "bitfit", "lora"]]


def fake_score(design) -> float:
    """Deterministic scores with a known stage-by-stage optimum: spindle > uniform allocation > all
    groups tuned > the S4 strategy of G1 > G2 > G3 > G4 (each bonus beats all later ones combined)."""
    from peftds.design.grouping import satisfies

    sizes = tuple(design["grouping"]["sizes"])
    score = 64.0 * satisfies(sizes, "spindle") + 32.0 * (design["allocation"] == "uniform")
    score += 16.0 * (list(design["tuned"]) == [1, 2, 3, 4])
    score += sum(w for w, got, want in zip((8, 4, 2, 1), design["strategies"], S4) if list(got) == want)
    return score


@pytest.fixture()
def fake_training(monkeypatch):
    """Replace training.train_job (what a trial runs) by a stand-in writing the same result.json."""
    from omegaconf import OmegaConf

    import peftds.train.job as training
    from peftds.train.record import RunRecord

    calls: list[dict] = []
    rules: dict = {}

    def fake(cfg, run_dir=None):
        run_dir = Path(run_dir)
        design = OmegaConf.to_container(cfg.design, resolve=True)
        calls.append({"run_dir": str(run_dir), "design": design, "task": cfg.task.name, "trial": dict(cfg.trial)})
        rec = RunRecord(run_dir, task=cfg.task.name, design=design["name"], seed=int(cfg.seed),
                                 trial=OmegaConf.to_container(cfg.trial))
        assert cfg.train.eval_split == "heldout" and cfg.train.progress is False
        g1 = design["strategies"][0]
        if rules.get("crash") and rules["crash"](design):
            rec.update(status="failed", error="RuntimeError: simulated crash", wall_time_s=0.01)
            return rec.data
        if rules.get("raise") and rules["raise"](design):
            raise RuntimeError("crash outside train_job's own handler")
        score = float("nan") if (rules.get("nan") and rules["nan"](design)) else fake_score(design)
        best = {"epoch": 1, "accuracy": score, "score": score}
        rec.update(status="ok", score=score, best=best, last=best, epochs=[best], wall_time_s=0.01,
                   trainable_params=1000, g1=g1)
        return rec.data

    monkeypatch.setattr(training, "train_job", fake)
    return calls, rules


@pytest.fixture()
def args(tmp_path, data_dir):
    def make(tmp_path, *extra):
        return ["model=tiny_roberta", "search=tiny", f"data.dir={data_dir}", f"search.dir={tmp_path / 's'}",
                "search.tasks=[sst2]", *extra]

    return make


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def quiet(*a):
    pass


def test_stage_all_chains_every_stage_to_a_final_design(tmp_path, fake_training, compose_cfg, args):
    calls, _ = fake_training
    # the repo's chain (stage=all), with fewer options for speed (test_search_space checks the full lists)
    trim = [f"~stage.stages.tunable.options.{o}" for o in
            ("G2", "G3", "G4", "G13", "G14", "G23", "G24", "G34", "G123", "G124", "G234")]
    trim += [f"~stage.stages.strategy.options.{o}" for o in
             ("P", "B", "L", "AB", "PB", "PL", "BL", "APL", "ABL", "APBL")]
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
    assert winners == {"grouping": "spindle", "allocation": "uniform", "tunable": "all", "strategy_g1": "AL",
                       "strategy_g2": "AP", "strategy_g3": "APB", "strategy_g4": "PBL"}
    # each stage sampled from the previous one's space
    alloc_space = json.loads((sdir / "allocation" / "stage.json").read_text())["space"]
    assert alloc_space["grouping"] == "spindle" and alloc_space["allocation"] is None
    g3 = json.loads((sdir / "strategy_g3" / "stage.json").read_text())
    for opt, samples in g3["samples"].items():
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

    built = build(cfg.model, cfg.design, float(cfg.budget.fraction), num_labels=2, device="meta")
    assert tuple(built.plan.groups) == sizes and built.plan.trainable_params <= built.plan.budget_params
    # trials ran as Hydra jobs in their own dirs, with the trial metadata in their config
    assert all(Path(c["run_dir"]).parent == sdir / "trials" for c in calls)
    assert (Path(calls[0]["run_dir"]) / ".hydra" / "overrides.yaml").exists()
    assert {"id", "stage", "option", "index", "design_hash", "regime"} <= set(calls[0]["trial"])
    # a finished trial is never trained twice, also when the same design recurs in a later stage
    assert len({c["run_dir"] for c in calls}) == len(calls)


def test_resume_runs_nothing_finished_and_restores_missing_rows(tmp_path, fake_training, args):
    calls, _ = fake_training
    a = args(tmp_path, "stage=allocation", "search.n=2")
    assert run_search(a, echo=quiet) == 0
    table = tmp_path / "s" / "allocation" / "trials.csv"
    first = rows(table)
    assert len(first) == 6 and len(calls) == 6
    # rerun: nothing runs, the table is unchanged
    assert run_search(a, echo=quiet) == 0
    assert len(calls) == 6 and rows(table) == first
    # a kill after a trial finished but before its row was appended: the row comes back, nothing re-runs
    with open(table, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(first[0]))
        w.writeheader()
        w.writerows(first[:3])
    # a kill in the middle of a trial: result.json says running -> that trial (only) runs again
    victim = tmp_path / "s" / "trials" / first[4]["trial_id"] / "result.json"
    rec = json.loads(victim.read_text())
    rec["status"] = "running"
    victim.write_text(json.dumps(rec))
    table.write_text(table.read_text())
    log = []
    assert run_search(["search.dir=" + str(tmp_path / "s")], echo=log.append) == 0  # stored arguments
    assert len(calls) == 7 and Path(calls[-1]["run_dir"]).name == first[4]["trial_id"]
    again = rows(table)
    assert sorted((r["option"], r["index"]) for r in again) == sorted((r["option"], r["index"]) for r in first)
    assert any("recorded 2 row(s)" in str(x) for x in log)


def test_failed_and_nan_trials_are_recorded_and_left_out(tmp_path, fake_training, args):
    calls, rules = fake_training
    rules["crash"] = lambda d: d["strategies"][0] == ["prefix"]
    rules["raise"] = lambda d: d["strategies"][0] == ["adapter"]
    rules["nan"] = lambda d: d["strategies"][0] == ["bitfit"]
    space = tmp_path / "sp.yaml"
    space.write_text("name: t\ngroups: 4\ngrouping: uniform\nallocation: uniform\ntuned: all\n")
    trim = [f"~stage.options.{o}" for o in ("AP", "AB", "PB", "PL", "BL", "APB", "APL", "ABL", "PBL", "APBL")]
    rc = run_search(args(tmp_path, "stage=strategy_g1", f"space={space}", "search.n=2", "search.min_ok=1",
                         "search.report=false", *trim), echo=quiet)
    assert rc == 1  # P, A, B have no successful design: too few to pick a winner
    sdir = tmp_path / "s" / "strategy_g1"
    table = {(r["option"], int(r["index"])): r for r in rows(sdir / "trials.csv")}
    assert len(table) == 5 * 2
    assert table[("P", 0)]["status"] == "failed" and "simulated crash" in table[("P", 0)]["error"]
    assert table[("A", 1)]["status"] == "failed" and "crash outside" in table[("A", 1)]["error"]
    assert table[("B", 0)]["status"] == "failed" and "non-finite score" in table[("B", 0)]["error"]
    assert table[("L", 0)]["status"] == "ok" and float(table[("L", 0)]["score"]) >= 0
    s = json.loads((sdir / "summary.json").read_text())
    assert s["status"] == "insufficient" and s["winner"] is None
    assert "P (0)" in s["message"] and s["options"]["P"]["trials_failed"] == 2
    assert not (sdir / "space_next.yaml").exists()
    # the other options' statistics use their successful designs only
    assert s["options"]["AL"]["designs_ok"] == 2 and math.isfinite(s["options"]["AL"]["mean"])
    # a re-run keeps the failures (no retry unless asked) ...
    n = len(calls)
    run_search(["search.dir=" + str(tmp_path / "s")], echo=quiet)
    assert len(calls) == n
    # ... and search.retry_failed=true runs exactly the failed ones again
    rules.clear()
    assert run_search(["search.dir=" + str(tmp_path / "s"), "search.retry_failed=true"], echo=quiet) == 0
    assert len(calls) == n + 6
    s = json.loads((sdir / "summary.json").read_text())
    assert s["status"] == "ok" and s["winner"] == "AL" and len(rows(sdir / "trials.csv")) == 10


@pytest.mark.parametrize(
    "extra,space,match",
    [
        ([], "name: typo\ngroups: 4\ngroupng: spindle\n", r"space 'typo': unknown key\(s\) \['groupng'\]"),
        (["stage=tunable"], "name: imp\ntuned: [1]\nallocation: increasing\n",
         "allocation 'increasing' needs at least two tuned groups"),
        (["stage=strategy_g2"], "name: g\ntuned: [1, 3]\n", "group 2 is not tuned in this space"),
        (["stage=grouping"], "name: g\ngrouping: uniform\n", "the space already constrains grouping"),
        (["stage=grouping", "model.shape.num_hidden_layers=4", "~stage.options.uniform"], None,
         r"every option is infeasible for this model \(L=4, K=4\): increasing: .*infeasible for L=4"),
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


def test_cli_prints_one_error_line(tmp_path, fake_training, capsys, args):
    from peftds.cli import main

    (tmp_path / "space.yaml").write_text("name: typo\nallocaton: uniform\n")
    assert main(["search", *args(tmp_path), f"space={tmp_path / 'space.yaml'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["peftds: error: space 'typo': unknown key(s) ['allocaton'] (known: ['allocation', 'grouping', "
                   "'groups', 'history', 'name', 'note', 'pool', 'strategies', 'tuned'])"]


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

"""A racing stage (search.racing) with a stand-in for training: options clearly behind leave the race
with fewer designs, race.json and the report say why, a race extended into a full run, a killed race
resumes to the same decisions, per-epoch scores in every ok row and `peftds replay` on a full fake stage."""

from __future__ import annotations

import json

import pytest

from peftds.files import RACE_FILE, REPLAY_JSON
from peftds.search.launch import run_search
from peftds.search.replay_command import cmd_replay
from peftds.search.stage_run import StageRun

from .helpers import quiet, rows

# grouping options far apart (increasing, decreasing leave in round 1), one a little behind (uniform leaves
# later) and two within a point of each other (they race to the end)
BASE = {"spindle": 80.0, "bottleneck": 79.5, "uniform": 73.0, "increasing": 50.0, "decreasing": 40.0}
N = 8


def option_score(design, trial) -> float:
    """The option's base score plus a deterministic spread of 2 points from the design's hash."""
    return BASE[trial["option"]] + int(str(trial["design_hash"])[:6], 16) % 1000 / 500


def race_args(args, path, *extra):
    return args(path, "stage=grouping", f"search.n={N}", "search.racing=true", "search.batch_size=100", *extra)


def test_race_drops_options_clearly_behind(tmp_path, fake_training, args):
    calls, rules = fake_training
    rules["score"] = option_score
    log = []
    assert run_search(race_args(args, tmp_path), echo=log.append) == 0
    sdir = tmp_path / "s" / "grouping"
    race = json.loads((sdir / RACE_FILE).read_text())
    assert race["finished"] and race["winner"] == "spindle" and set(race["survivors"]) == {"spindle", "bottleneck"}
    assert race["designs"] == {"increasing": 3, "uniform": 5, "decreasing": 3, "spindle": N, "bottleneck": N}
    assert race["trial_epochs"] == (3 + 5 + 3 + N + N) * 1 * 1 and race["full_trial_epochs"] == 5 * N
    assert race["settings"]["method"] == "t" and race["settings"]["delta"] == 0.05
    first = race["rounds"][0]
    assert sorted(e["option"] for e in first["eliminated"]) == ["decreasing", "increasing"]
    for e in first["eliminated"]:
        assert e["leader"] == "spindle" and e["upper"] < e["leader_lower"]
        assert e["why"].startswith(f"{e['option']}: upper bound") and "of the leader spindle" in e["why"]
    assert [e["option"] for d in race["rounds"][1:] for e in d["eliminated"]] == ["uniform"]
    # only the designs the race asked for were trained: one row per design and task
    table = rows(sdir / "trials.csv")
    per_option = {o: sum(r["option"] == o for r in table) for o in BASE}
    assert per_option == race["designs"] and len(calls) == len(table)
    # every ok row keeps its per-epoch scores
    assert all(json.loads(r["epoch_scores"]) == [float(r["score"])] for r in table if r["status"] == "ok")
    # the summary ranks the survivors only and agrees with the race; eliminated options keep their stats
    s = json.loads((sdir / "summary.json").read_text())
    assert s["status"] == "ok" and s["winner"] == race["winner"] and s["runner_up"] == "bottleneck"
    assert s["eliminated"]["uniform"]["round"] == 2 and s["eliminated"]["increasing"]["round"] == 1
    assert s["options"]["increasing"]["designs_ok"] == 3 and s["options"]["increasing"]["trials_pending"] == 0
    assert s["options"]["increasing"]["designs_planned"] == N
    assert s["race"]["compute_fraction"] == pytest.approx(race["trial_epochs"] / (5 * N))
    report = (sdir / "report.md").read_text()
    assert "Racing (t intervals" in report and "increasing (out, round 1)" in report
    assert "| 1 | 3 | spindle |" in report and "upper bound" in report
    assert any("round 1: leader spindle" in str(x) for x in log) and any("race over" in str(x) for x in log)
    # a rerun trains nothing and decides the same
    n = len(calls)
    assert run_search(race_args(args, tmp_path), echo=quiet) == 0
    assert len(calls) == n and json.loads((sdir / RACE_FILE).read_text()) == race
    # extended into a full run (the same trial ids): only the designs the race skipped run now
    log.clear()
    full = ["search.dir=" + str(tmp_path / "s"), "search.racing=false", "search.sequential=false"]
    assert run_search(full, echo=log.append) == 0
    assert not (sdir / RACE_FILE).exists() and any(f"{RACE_FILE} removed" in str(x) for x in log)
    assert len(calls) == 5 * N and n < 5 * N
    s = json.loads((sdir / "summary.json").read_text())
    assert "eliminated" not in s and all(s["options"][o]["designs_ok"] == N for o in BASE)
    assert s["winner"] == "spindle" and "Racing" not in (sdir / "report.md").read_text()


def test_killed_race_resumes_to_the_same_decisions(tmp_path, fake_training, args, monkeypatch):
    calls, rules = fake_training
    rules["score"] = option_score
    assert run_search(race_args(args, tmp_path / "whole"), echo=quiet) == 0
    whole = json.loads((tmp_path / "whole" / "s" / "grouping" / RACE_FILE).read_text())
    n_whole = len(calls)
    calls.clear()

    launch = StageRun.launch
    batches = []

    def killed_in_round_two(self, batch, stop_at=None):
        """Round 1 runs; round 2 is killed after half of its trials."""
        batches.append(len(batch))
        if len(batches) == 1:
            return launch(self, batch, stop_at)
        launch(self, batch[: len(batch) // 2], stop_at)
        raise KeyboardInterrupt

    monkeypatch.setattr(StageRun, "launch", killed_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        run_search(race_args(args, tmp_path / "killed"), echo=quiet)
    sdir = tmp_path / "killed" / "s" / "grouping"
    partial = json.loads((sdir / RACE_FILE).read_text())
    assert batches[0] == 5 * 3 and not partial["finished"] and len(partial["rounds"]) == 1
    monkeypatch.setattr(StageRun, "launch", launch)
    assert run_search(["search.dir=" + str(tmp_path / "killed" / "s")], echo=quiet) == 0
    assert json.loads((sdir / RACE_FILE).read_text()) == whole
    assert len(calls) == n_whole  # nothing ran twice


def test_replay_of_a_full_fake_stage(tmp_path, fake_training, args, capsys):
    _, rules = fake_training
    rules["score"] = option_score
    a = args(
        tmp_path, "stage=grouping", "search.n=6", "search.epochs=2", "search.report=false", "search.sequential=false"
    )
    assert run_search(a, echo=quiet) == 0
    sdir = tmp_path / "s" / "grouping"
    table = rows(sdir / "trials.csv")
    assert len(table) == 5 * 6 and all(r["status"] == "ok" for r in table)
    for r in table:
        e1, e2 = json.loads(r["epoch_scores"])
        assert e2 == float(r["score"]) and e1 == pytest.approx(e2 - 0.5)
    capsys.readouterr()
    assert cmd_replay([str(sdir), "replays=20", "seed=1"]) == 0
    res = json.loads((sdir / REPLAY_JSON).read_text())
    assert res["full_n_winner"] == "spindle" and res["replays"] == 20
    assert "default decision" in capsys.readouterr().out

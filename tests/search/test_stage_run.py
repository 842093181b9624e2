"""One stage (peftds.search.stage_run) with a stand-in for training: resume without re-running,
restored rows, failed / crashed / NaN trials recorded and left out, retry_failed."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from peftds.search.launch import run_search

from .helpers import quiet, rows


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
    rc = run_search(
        args(
            tmp_path,
            "stage=strategy_g1",
            f"space={space}",
            "search.n=2",
            "search.min_ok=1",
            "search.report=false",
            *trim,
        ),
        echo=quiet,
    )
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


def test_resuming_with_another_seed_is_refused_before_anything_trains(tmp_path, fake_training, args):
    """The global seed decides what a trial computes: a search dir resumed with another one refuses in one
    line (before, the trials trained again and their rows were dropped as duplicates)."""
    import pytest

    from peftds.errors import PeftdsError

    calls, _ = fake_training
    a = args(tmp_path, "stage=allocation", "search.n=2")
    assert run_search(a, echo=quiet) == 0
    state = (tmp_path / "s" / "search.json").read_text()
    table = rows(tmp_path / "s" / "allocation" / "trials.csv")
    n = len(calls)
    with pytest.raises(PeftdsError, match=r"allocation was started with different seed \(42, now 2\)"):
        run_search([*a, "seed=2"], echo=quiet)
    assert len(calls) == n and (tmp_path / "s" / "search.json").read_text() == state
    assert rows(tmp_path / "s" / "allocation" / "trials.csv") == table

"""Selection statistics on a hand-made trials table, and the report (issue #4 §5, §7)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from peftds.search.report import (
    bootstrap_ci,
    design_scores,
    edf,
    edf_at,
    markdown_table,
    summarize,
    write_report,
)


def table(rows):
    """rows: (option, index, task, score or None for a failed trial)."""
    out = []
    for opt, idx, task, score in rows:
        out.append({"stage": "st", "option": opt, "index": idx, "task": task, "design_hash": f"{opt}{idx}",
                    "design": f"design {opt}{idx}", "score": float("nan") if score is None else score,
                    "status": "failed" if score is None else "ok", "wall_time_s": 36.0, "device": "cpu",
                    "error": "boom" if score is None else ""})
    return pd.DataFrame(out)


HAND = table([
    # option a: designs 0..3, two tasks; design scores 70, 80, 90, 60 -> mean 75
    ("a", 0, "t1", 60), ("a", 0, "t2", 80),
    ("a", 1, "t1", 80), ("a", 1, "t2", 80),
    ("a", 2, "t1", 100), ("a", 2, "t2", 80),
    ("a", 3, "t1", 50), ("a", 3, "t2", 70),
    # option b: design 2 has a failed task -> incomplete, left out; designs 50, 60, 58 -> mean 56
    ("b", 0, "t1", 40), ("b", 0, "t2", 60),
    ("b", 1, "t1", 60), ("b", 1, "t2", 60),
    ("b", 2, "t1", 99), ("b", 2, "t2", None),
    ("b", 3, "t1", 56), ("b", 3, "t2", 60),
])


def test_edf_is_share_of_designs_at_or_below_each_score():
    assert edf([3, 1, 2, 2]) == [(1.0, 0.25), (2.0, 0.75), (3.0, 1.0)]
    pts = edf([70, 80, 90, 60])
    assert edf_at(pts, 59) == 0 and edf_at(pts, 60) == 0.25 and edf_at(pts, 85) == 0.75 and edf_at(pts, 90) == 1.0


def test_bootstrap_interval():
    lo, hi = bootstrap_ci([70, 80, 90, 60], n_boot=4000, seed=1)
    assert 60 <= lo < 75 < hi <= 90
    assert bootstrap_ci([70, 80, 90, 60], n_boot=4000, seed=1) == (lo, hi)  # seeded
    assert bootstrap_ci([5.0], 100) == (5.0, 5.0)
    assert all(math.isnan(x) for x in bootstrap_ci([], 100))
    # the percentile interval of many equal-size resamples brackets the mean +- ~2 standard errors
    import numpy as np

    x = np.random.default_rng(0).normal(50, 10, size=400)
    lo, hi = bootstrap_ci(x, 2000, 0)
    se = x.std(ddof=1) / 20
    assert abs((hi - lo) - 2 * 1.96 * se) < 0.25 * 2 * 1.96 * se


def test_design_scores_mean_over_tasks_and_completeness():
    d = design_scores(HAND, ["t1", "t2"]).set_index(["option", "index"])
    assert d.loc[("a", 0), "score"] == 70 and bool(d.loc[("a", 0), "complete"])
    assert not bool(d.loc[("b", 2), "complete"]) and d.loc[("b", 2), "tasks_failed"] == 1


def test_summary_mean_interval_winner_and_overlap():
    s = summarize(HAND, ["a", "b"], ["t1", "t2"], min_ok=2, n_boot=2000, seed=0, planned={"a": 4, "b": 4})
    a, b = s["options"]["a"], s["options"]["b"]
    assert a["mean"] == pytest.approx(75.0) and b["mean"] == pytest.approx((50 + 60 + 58) / 3)
    assert a["designs_ok"] == 4 and b["designs_ok"] == 3 and b["designs_incomplete"] == 1
    assert b["trials_ok"] == 7 and b["trials_failed"] == 1 and b["trials_pending"] == 0
    assert a["per_task"] == {"t1": pytest.approx(72.5), "t2": pytest.approx(77.5)}
    assert b["per_task"]["t1"] == pytest.approx((40 + 60 + 99 + 56) / 4)  # per-task columns use every ok trial
    assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    assert a["edf"] == [(60.0, 0.25), (70.0, 0.5), (80.0, 0.75), (90.0, 1.0)]
    assert a["hours"] == pytest.approx(8 * 36 / 3600) and a["gpu_hours"] == 0
    assert s["status"] == "ok" and s["winner"] == "a" and s["runner_up"] == "b"
    assert s["overlap"] is False  # a's interval is well above b's
    assert a["best"]["index"] == 2 and a["best"]["score"] == 90


def test_overlapping_intervals_are_reported():
    t = table([("x", i, "t", v) for i, v in enumerate([50, 60, 70, 80])] +
              [("y", i, "t", v) for i, v in enumerate([52, 61, 69, 77])])
    s = summarize(t, ["x", "y"], ["t"], min_ok=2, n_boot=1000)
    assert s["winner"] == "x" and s["overlap"] is True and "overlaps the runner-up" in s["message"]


def test_ties_go_to_the_first_option_and_too_few_designs_pick_no_winner():
    t = table([("p", 0, "t", 60), ("q", 0, "t", 60)])
    assert summarize(t, ["q", "p"], ["t"], min_ok=1, n_boot=10)["winner"] == "q"
    s = summarize(HAND, ["a", "b"], ["t1", "t2"], min_ok=4, n_boot=10, planned={"a": 4, "b": 4})
    assert s["status"] == "insufficient" and s["winner"] is None
    assert "b (3) < min_ok=4" in s["message"]
    running = summarize(HAND, ["a", "b"], ["t1", "t2"], min_ok=1, n_boot=10, planned={"a": 5, "b": 4})
    assert running["status"] == "running" and running["winner"] is None and running["leader"] == "a"


def test_infeasible_options_are_kept_out():
    s = summarize(HAND, ["a", "b", "c"], ["t1", "t2"], min_ok=2, n_boot=10, infeasible={"c": "no room"})
    assert s["winner"] == "a" and not s["options"]["c"]["feasible"]
    md = markdown_table(s)
    assert "infeasible: no room" in md and "**a** ★" in md


def test_report_renders_markdown_and_plots(tmp_path, capsys):
    stage = tmp_path / "grouping"
    stage.mkdir()
    HAND.assign(stage="grouping").to_csv(stage / "trials.csv", index=False)
    (stage / "stage.json").write_text(json.dumps({
        "name": "grouping", "dimension": "grouping", "group": None, "options": {"a": "spindle", "b": "uniform"},
        "options_order": ["a", "b"], "tasks": ["t1", "t2"], "min_ok": 2, "bootstrap": 500, "seed": 0,
        "planned": {"a": 4, "b": 4}, "infeasible": {}, "space": {"describe": "K=4"},
    }))
    (tmp_path / "search.json").write_text(json.dumps({"stages_run": ["grouping"]}))
    from peftds.cli import main

    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| **a** ★ | spindle |" in out and "winner: a" in out
    for f in (tmp_path / "report.md", stage / "report.md", stage / "edf.png", stage / "scores.png"):
        assert f.exists() and f.stat().st_size > 0, f
    md = (tmp_path / "report.md").read_text()
    assert "Stage `grouping`" in md and "95% CI" in md and "grouping/edf.png" in md
    assert (stage / "edf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert write_report(stage, n_boot=10, echo=lambda *a: None) == stage / "report.md"

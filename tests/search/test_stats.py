"""Selection statistics (peftds.search.stats) on a hand-made trials table: EDFs, bootstrap intervals,
design scores, option means, the winner, overlaps, ties, infeasible options, the running leader."""

from __future__ import annotations

import math

import pytest

from peftds.search.report import markdown_table
from peftds.search.stats import (
    bootstrap_ci,
    current_leader,
    design_scores,
    edf,
    edf_at,
    finite,
    scaled_min_ok,
    summarize,
)

from .helpers import HAND, table


def test_edf_is_share_of_designs_at_or_below_each_score():
    assert edf([3, 1, 2, 2]) == [(1.0, 0.25), (2.0, 0.75), (3.0, 1.0)]
    pts = edf([70, 80, 90, 60])
    assert edf_at(pts, 59) == 0 and edf_at(pts, 60) == 0.25 and edf_at(pts, 85) == 0.75 and edf_at(pts, 90) == 1.0


def test_bootstrap_interval():
    eight = [70, 80, 90, 60, 72, 78, 88, 62]
    lo, hi = bootstrap_ci(eight, n_boot=4000, seed=1)
    assert 60 <= lo < 75 < hi <= 90
    assert bootstrap_ci(eight, n_boot=4000, seed=1) == (lo, hi)  # seeded
    for few in ([], [5.0], [70, 80], [70, 80, 90, 60, 72, 78, 88], [68.75] * 20):
        assert all(math.isnan(x) for x in bootstrap_ci(few, 100)), few  # n/a: too few designs, or no spread
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
    assert math.isnan(a["ci_low"]) and math.isnan(b["ci_high"])  # 4 and 3 designs: no interval
    assert a["edf"] == [(60.0, 0.25), (70.0, 0.5), (80.0, 0.75), (90.0, 1.0)]
    assert a["hours"] == pytest.approx(8 * 36 / 3600) and a["gpu_hours"] == 0
    assert s["status"] == "ok" and s["winner"] == "a" and s["runner_up"] == "b"
    assert s["overlap"] is None  # n/a intervals neither overlap nor separate
    assert a["best"]["index"] == 2 and a["best"]["score"] == 90


def test_overlapping_intervals_are_reported():
    t = table(
        [("x", i, "t", v) for i, v in enumerate([50, 60, 70, 80, 51, 61, 71, 81])]
        + [("y", i, "t", v) for i, v in enumerate([52, 61, 69, 77, 53, 60, 68, 76])]
    )
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


def test_current_leader_counts_designs_with_every_task_ok():
    rows = [
        {"option": "a", "index": "0", "task": "t1", "status": "ok", "score": "70"},
        {"option": "a", "index": "0", "task": "t2", "status": "ok", "score": "90"},
        {"option": "b", "index": "0", "task": "t1", "status": "ok", "score": "95"},  # t2 missing: not counted
        {"option": "b", "index": "1", "task": "t1", "status": "failed", "score": ""},
    ]
    assert current_leader(rows, 2) == ("a", 80.0, 1)
    assert current_leader(rows[2:], 2) is None


def reference_design_scores(df, tasks):
    """design_scores as it was before it became linear (every design masks every ok row): the reference."""
    import pandas as pd

    ok = df[(df["status"] == "ok") & df["score"].map(finite)]
    n_tasks = len(tasks) if tasks else df["task"].nunique()
    out = []
    for (opt, idx), g in df.groupby(["option", "index"], sort=False):
        gok = ok[(ok["option"] == opt) & (ok["index"] == idx)]
        tasks_ok = gok["task"].nunique()
        score = float(gok.groupby("task")["score"].mean().mean()) if tasks_ok else float("nan")
        out.append({"option": opt, "index": int(idx), "design_hash": str(g["design_hash"].iloc[0]),
                    "design": str(g["design"].iloc[0]) if "design" in g else "", "score": score,
                    "tasks_ok": int(tasks_ok), "tasks_failed": int(len(g) - len(gok)),
                    "complete": tasks_ok >= n_tasks})  # fmt: skip
    return pd.DataFrame(out, columns=list(out[0]))


def random_table(seed: int):
    """Shuffled rows of 4 options x 12 designs x 8 tasks: failed, running, repeated and missing trials."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for o in range(4):
        for i in rng.permutation(12):
            for t in rng.permutation(list("abcdefgh")):
                if rng.random() < 0.03:
                    continue  # not run yet
                for _ in range(2 if rng.random() < 0.05 else 1):
                    fail = rng.random() < 0.05
                    out.append((f"o{o}", int(i), t, None if fail else float(rng.normal(70, 5))))
    df = table(out)
    df.loc[df.sample(frac=0.02, random_state=seed).index, "status"] = "running"
    df.loc[df.sample(frac=0.01, random_state=seed + 1).index, "design_hash"] = float("nan")
    return df


def test_design_scores_are_those_of_the_reference_bit_for_bit():
    import pandas as pd

    cases = [(HAND, ["t1", "t2"]), (HAND, None), (HAND.drop(columns="design"), ["t1", "t2"])]
    cases += [(random_table(s), list("abcdefgh")) for s in range(4)] + [(random_table(9), None)]
    for df, tasks in cases:
        pd.testing.assert_frame_equal(design_scores(df, tasks), reference_design_scores(df, tasks), check_exact=True)
    assert design_scores(HAND.iloc[:0], None).empty


def race_record(finished=True, next_designs=None):
    """A race.json of HAND plus option c (two designs at 99, out in round 1)."""
    why = "c: upper bound 50.00 (mean 99.00, 2 designs) < lower bound 70.00 of the leader a"
    return {"finished": finished, "winner": "a" if finished else None, "designs": {"a": 4, "b": 4, "c": 2},
            "next_designs": next_designs or {}, "trial_epochs": 20, "full_trial_epochs": 24,
            "compute_fraction": 20 / 24,
            "rounds": [{"round_index": 0, "eliminated": [{"option": "c", "why": why}]}]}  # fmt: skip


def test_options_out_of_a_race_keep_their_statistics_but_are_not_ranked():
    import pandas as pd

    df = pd.concat([HAND, table([("c", i, t, 99) for i in (0, 1) for t in ("t1", "t2")])], ignore_index=True)
    kw = {"min_ok": 3, "n_boot": 10, "planned": {"a": 4, "b": 4, "c": 4}}
    s = summarize(df, ["a", "b", "c"], ["t1", "t2"], race=race_record(), **kw)
    c = s["options"]["c"]
    assert c["mean"] == 99 and c["designs_ok"] == 2 and c["designs_planned"] == 4 and c["trials_pending"] == 0
    assert s["status"] == "ok" and s["winner"] == "a" and s["runner_up"] == "b" and s["leader"] == "a"  # c: < min_ok
    assert s["eliminated"] == {"c": {"round": 1, "why": race_record()["rounds"][0]["eliminated"][0]["why"]}}
    assert s["race"]["winner"] == "a" and s["race"]["compute_fraction"] == pytest.approx(20 / 24)
    assert "| c (out, round 1) |" in markdown_table(s)
    # without the race, c would lead (and its missing designs would still be pending)
    assert summarize(df, ["a", "b", "c"], ["t1", "t2"], **kw)["leader"] == "c"
    # a race still running: only the designs of its next round are pending
    running = summarize(df, ["a", "b", "c"], ["t1", "t2"], race=race_record(False, {"a": 6, "b": 5}), **kw)
    assert [running["options"][o]["trials_pending"] for o in "abc"] == [4, 2, 0]
    assert running["status"] == "running" and "6 trial(s)" in running["message"] and running["winner"] is None
    waiting = summarize(df, ["a", "b", "c"], ["t1", "t2"], race=race_record(False, {"a": 4, "b": 4}), **kw)
    assert waiting["status"] == "running" and "round 2" in waiting["message"]


def test_min_ok_scales_with_the_designs_a_race_gave():
    assert scaled_min_ok(50, 100, 11) == 6 and scaled_min_ok(10, 12, 3) == 3 and scaled_min_ok(4, 8, 8) == 4
    assert scaled_min_ok(3, 8, None) == 3 and scaled_min_ok(1, 100, 3) == 1
    df = table([("a", i, "t", 70 + i) for i in range(3)] + [("b", i, "t", 10) for i in range(3)])
    race = {**race_record(), "designs": {"a": 3, "b": 3}, "rounds": [{"round_index": 0, "eliminated": []}]}
    race["rounds"][0]["eliminated"] = [{"option": "b", "why": "b: behind"}]
    s = summarize(df, ["a", "b"], ["t"], min_ok=5, n_boot=10, planned={"a": 10, "b": 10}, race=race)
    assert s["status"] == "ok" and s["winner"] == "a"  # a sole survivor with 3 of 10 designs: min_ok 5 -> 2


def test_separated_intervals_from_eight_designs():
    t = table(
        [("x", i, "t", v) for i, v in enumerate([80, 82, 84, 86, 81, 83, 85, 87])]
        + [("y", i, "t", v) for i, v in enumerate([60, 62, 64, 66, 61, 63, 65, 67])]
    )
    s = summarize(t, ["x", "y"], ["t"], min_ok=2, n_boot=1000)
    assert s["winner"] == "x" and s["overlap"] is False and s["tie"] is None
    assert s["options"]["x"]["ci_low"] > s["options"]["y"]["ci_high"]


def test_interval_coverage_by_simulation():
    """The stated guarantee: from MIN_INTERVAL_DESIGNS designs the 95% interval covers the true mean in
    >= 80% of simulated stages (normal and skewed design scores); at 3 designs it does not."""
    import numpy as np

    from peftds.search.stats import MIN_INTERVAL_DESIGNS

    rng = np.random.default_rng(0)
    draws = {"normal": (lambda n: rng.normal(70, 5, n), 70.0), "skewed": (lambda n: 70 - rng.exponential(5, n), 65.0)}
    for name, (draw, true_mean) in draws.items():
        for n, ok in ((MIN_INTERVAL_DESIGNS, True), (3, False)):
            hits = 0
            for i in range(400):
                x = draw(n)
                lo, hi = bootstrap_ci(x, 500, i) if n >= MIN_INTERVAL_DESIGNS else _percentile_interval(x, i)
                hits += lo <= true_mean <= hi
            assert bool(hits / 400 >= 0.80) == ok, (name, n, hits / 400)


def _percentile_interval(x, seed):
    """The same percentile bootstrap without the design floor (what a 3-design interval would be)."""
    import numpy as np

    means = x[np.random.default_rng(seed).integers(0, len(x), size=(500, len(x)))].mean(axis=1)
    return np.quantile(means, 0.025), np.quantile(means, 0.975)


def test_a_tie_is_named_with_how_it_was_broken():
    from peftds.search.report import markdown_table, verdict

    t = table([("p", i, "t", 68.75) for i in range(3)] + [("q", i, "t", 68.75) for i in range(3)])
    s = summarize(t, ["q", "p"], ["t"], min_ok=1, n_boot=10)
    assert s["winner"] == "q" and s["tie"] == ["q", "p"] and "broken by the order" in s["message"]
    assert "a tie with p (same mean), broken by the order of the stage's options" in verdict(s)
    md = markdown_table(s)
    assert "| **q** ★ (tie) |" in md and "| p (tie) |" in md and "n/a" in md  # equal scores: no interval

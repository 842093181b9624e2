"""`peftds replay` (peftds.search.replay) on a synthetic full-fidelity stage dir: per-epoch scores, the
full-N policy agreeing with itself at full cost, racing and low fidelity cheaper, the files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from peftds.errors import PeftdsError
from peftds.files import REPLAY_JSON, REPLAY_MD, REPLAY_PLOT
from peftds.search.racing import RaceSettings
from peftds.search.replay import (
    best_default,
    load_stage,
    run_replay,
)
from peftds.search.replay_command import cmd_replay

from .fixtures.synthetic import write_stage

GAPS = {"a": 70.0, "b": 80.0, "c": 60.0}


def test_load_stage_scores_per_epoch(tmp_path):
    d = write_stage(tmp_path / "st", GAPS, n=5, epochs=3, failed=[("a", 2, "t2")])
    st = load_stage(d)
    assert st.options == ["a", "b", "c"] and st.epochs == 3 and st.n == 5 and st.tasks == ["t1", "t2"]
    assert np.isnan(st.scores[3][0][2]) and np.isnan(st.scores[1][0][2])  # a failed task: no design score
    assert np.isfinite(st.scores[3][0][[0, 1, 3, 4]]).all()
    # epoch k: the best of the first k epochs; the synthetic training still improves, so lower scores
    assert (st.scores[1][1] < st.scores[2][1]).all() and (st.scores[2][1] < st.scores[3][1]).all()
    assert st.winner() == 1 and st.options[st.winner()] == "b"


def test_replay_of_a_clear_stage(tmp_path, capsys):
    d = write_stage(tmp_path / "st", GAPS, n=12, epochs=3, spread=2.0)
    assert cmd_replay([str(d), "replays=40", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert "default decision" in out and "target" in out and "N=100 synthetic" in out
    for name in (REPLAY_JSON, REPLAY_MD, REPLAY_PLOT):
        assert (d / name).stat().st_size > 0
    res = json.loads((d / REPLAY_JSON).read_text())
    assert res["full_n_winner"] == "b" and res["replays"] == 40 and res["orders"] == 20
    assert res["full_protocol_trial_epochs"] == 3 * 12 * 2 * 3
    rows = {r["policy"]: r for r in res["policies"]}
    full = rows["full N=12"]
    assert full["same_winner_rate"] == 1.0 and full["compute_fraction"] == 1.0
    assert full["good_selection_rate"] == 1.0 and full["regret_mean"] == 0.0
    decision = next(r for r in res["policies"] if r["family"] == "decision (default)")
    # options 10 points apart: decided (or equivalent) long before N, always the winner
    assert decision["good_selection_rate"] == 1.0 and decision["compute_fraction"] < 0.6
    assert decision["verdicts"]["unresolved"] == 0.0 and decision["verdict_agreement"] > 0.5
    assert decision["cross_fitted"]["good_selection_rate"] == 1.0 and res["full_verdict"] == "decided"
    race = next(r for r in res["policies"] if r["family"] == "racing (default)")
    assert race["same_winner_rate"] == 1.0 and race["compute_fraction"] < 0.6
    assert race["race"]["method"] == "t"
    assert rows["N=12 epoch 1"]["compute_fraction"] == pytest.approx(1 / 3)
    assert rows["N=4"]["compute_fraction"] == pytest.approx(4 / 12)
    fams = {r["family"] for r in res["policies"]}
    assert {"fixed N", "epoch 1", "epoch 2", "racing hoeffding", "racing at epoch k", "racing + early epoch k"} <= fams
    md = (d / REPLAY_MD).read_text()
    assert "| full | full N=12 | 100.0% |" in md and REPLAY_PLOT in md
    assert set(res["target"]) >= {"default", "default_meets", "best"}


def test_equal_orders_same_winner_for_full_n_and_racing_saves(tmp_path):
    d = write_stage(tmp_path / "st", {"a": 70.0, "b": 73.0, "c": 50.0}, n=20, spread=2.0)
    res = run_replay(load_stage(d), RaceSettings(round_size=1), replays=30, redraw_share=0.0, round_sizes=[1])
    rows = {r["policy"]: r for r in res["policies"]}
    assert rows["full N=20"]["same_winner_rate_orders"] == 1.0 and res["redraws"] == 0
    race = next(r for r in res["policies"] if r["family"] == "racing (default)")
    assert race["compute_fraction"] < rows["full N=20"]["compute_fraction"]
    hybrid = [r for r in res["policies"] if r["family"] == "racing + early epoch k"]
    assert hybrid and all(r["compute_fraction"] <= 1.0 for r in hybrid)


def test_best_default_picks_the_cheapest_policy_meeting_the_target():
    def row(policy, family, good, comp):
        return {"policy": policy, "family": family, "good_selection_rate": good, "compute_fraction": comp}

    rows = [
        row("full", "full", 1.0, 1.0),
        row("d", "decision (default)", 0.96, 0.3),
        row("x", "decision", 0.95, 0.2),
        row("y", "racing t", 0.97, 0.1),
        row("z", "fixed N", 0.85, 0.05),
    ]
    t = best_default(rows)
    assert t["default"] == "d" and not t["default_meets"] and t["best"] == "y" and t["meeting"] == ["x", "y"]
    assert best_default(rows, compute=0.5)["default_meets"]


def test_paired_stage_replays_pairs_and_measures_the_variance_pairing_removes(tmp_path):
    """Design i of every option shares a design effect of sd 3 (own spread 0.5): pairs are drawn together,
    so the paired difference has a small fraction of the unpaired variance, and the decision is cheap."""
    means = {"a": 80.0, "b": 80.1, "c": 77.0}
    paired = load_stage(write_stage(tmp_path / "p", means, n=16, spread=0.5, noise=0.1, paired=3.0))
    assert paired.paired
    res = run_replay(paired, RaceSettings(), replays=60, seed=1)
    p = res["pairing"]
    assert p["paired_stage"] and p["ratio_mean"] < 0.1 and p["unpaired_mean"] > 10
    decision = next(r for r in res["policies"] if r["family"] == "decision (default)")
    assert decision["good_selection_rate"] == 1.0 and decision["compute_fraction"] < 0.8
    assert res["synthetic"]["default"]["good_selection_rate"] >= 0.95
    # the same designs analysed unpaired: the shared effect is noise, the decision needs all N
    unpaired = load_stage(write_stage(tmp_path / "u", means, n=16, spread=0.5, noise=0.1, paired=3.0))
    unpaired.paired = False
    res_u = run_replay(unpaired, RaceSettings(), replays=60, seed=1)
    dec_u = next(r for r in res_u["policies"] if r["family"] == "decision (default)")
    assert dec_u["compute_fraction"] > decision["compute_fraction"]
    assert res_u["pairing"]["ratio_mean"] is None


@pytest.mark.parametrize(
    "argv, match",
    [
        ([], "usage: peftds replay"),
        (["{d}", "other"], "usage: peftds replay"),
        (["{d}", "color=red"], "unknown replay setting 'color'"),
        (["{d}", "replays=many"], "replays must be an integer"),
        (["{d}", "replays=0"], "replays must be >= 1"),
        (["{d}", "delta=1"], r"delta must be in \(0, 1\)"),
        (["{d}", "method=anova"], "method must be one of"),
        (["{d}", "alpha=0"], r"alpha must be in \(0, 1\)"),
        (["{d}", "tolerance=-1"], "tolerance must be in"),
        (["{d}/nowhere"], "stage dir not found"),
    ],
)
def test_bad_input_is_one_line(tmp_path, argv, match):
    d = write_stage(tmp_path / "st", GAPS, n=3)
    with pytest.raises(PeftdsError, match=match) as e:
        cmd_replay([a.format(d=d) for a in argv])
    assert "\n" not in str(e.value)


def test_stage_without_epoch_scores_or_stage_file(tmp_path):
    d = write_stage(tmp_path / "st", GAPS, n=3, with_epochs=False)
    with pytest.raises(PeftdsError, match="no epoch_scores column"):
        cmd_replay([str(d)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(PeftdsError, match="not a search stage dir"):
        cmd_replay([str(tmp_path / "empty")])
    d = write_stage(tmp_path / "bad", GAPS, n=3)
    text = (d / "trials.csv").read_text().replace('"[', '"oops[', 1)
    (d / "trials.csv").write_text(text)
    with pytest.raises(PeftdsError, match="not a JSON list"):
        cmd_replay([str(d)])


def test_a_raced_or_unfinished_stage_is_refused(tmp_path):
    """A replay needs every option's N designs: it refuses a raced stage and an unfinished one in one
    line instead of silently replaying a smaller n."""
    import json

    d = write_stage(tmp_path / "raced", GAPS, n=4)
    (d / "race.json").write_text("{}")
    with pytest.raises(PeftdsError, match=r"was raced \(race.json\)") as e:
        cmd_replay([str(d)])
    assert "\n" not in str(e.value)
    d = write_stage(tmp_path / "short", GAPS, n=4)
    meta = json.loads((d / "stage.json").read_text())
    (d / "stage.json").write_text(json.dumps({**meta, "n": 6}))  # 2 designs per option still to train
    with pytest.raises(PeftdsError, match=r"is not finished \(a 4/6, b 4/6, c 4/6 designs done\)"):
        cmd_replay([str(d)])

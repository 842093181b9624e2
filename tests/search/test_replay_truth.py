"""`peftds replay` on real numbers: the grouping stage `make stage-truth-cpu` ran at full fidelity on the real
MiniLM-L6 and SST-2 (5 options x 12 designs x 3 epochs; trials.csv + stage.json committed as a fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from peftds.files import REPLAY_JSON, REPLAY_MD, REPLAY_PLOT
from peftds.search.racing import RaceSettings
from peftds.search.replay import load_stage, run_replay
from peftds.search.replay_command import cmd_replay

TRUTH = Path(__file__).parent / "fixtures" / "truth_grouping"
MEANS = {"increasing": 83.87, "uniform": 83.97, "decreasing": 83.85, "spindle": 84.13, "bottleneck": 84.52}


def test_the_real_stage_loads_with_three_epochs_per_design():
    st = load_stage(TRUTH)
    assert st.options == list(MEANS) and st.n == 12 and st.epochs == 3 and st.tasks == ["sst2"]
    for k in (1, 2, 3):
        assert all(np.isfinite(x).all() and len(x) == 12 for x in st.scores[k])
    # a design's epoch-k score is its best over epochs 1..k: never lower at a later epoch
    for a, b in ((1, 2), (2, 3)):
        assert all((st.scores[a][j] <= st.scores[b][j]).all() for j in range(len(MEANS)))
    got = {o: float(np.mean(x)) for o, x in zip(st.options, st.scores[3])}
    assert got == {o: pytest.approx(m, abs=0.005) for o, m in MEANS.items()}
    assert st.options[st.winner()] == "bottleneck"


def test_replay_of_the_real_stage():
    """Options 0.7 points apart with a design spread of ~1.5 points: at N=12 no interval separates them, so
    racing uses the full protocol, and even the full N reproduces its winner only in the shuffled orders."""
    res = run_replay(load_stage(TRUTH), RaceSettings(), replays=100, seed=0)
    rows = {r["policy"]: r for r in res["policies"]}
    full = rows["full N=12"]
    assert full["compute_fraction"] == 1.0 and full["same_winner_rate_orders"] == 1.0
    assert full["same_winner_rate_redraws"] < 0.7  # bootstrap redraws of 12 designs often crown another option
    race = next(r for r in rows.values() if r["family"] == "racing (default)")
    assert race["compute_fraction"] > 0.95 and race["same_winner_rate"] == full["same_winner_rate"]
    small = rows["N=3"]
    assert small["compute_fraction"] == 0.25 and small["same_winner_rate"] < 0.5


def test_replay_command_writes_its_files(tmp_path, capsys):
    d = tmp_path / "grouping"
    shutil.copytree(TRUTH, d)
    assert cmd_replay([str(d), "replays=40"]) == 0
    assert "does NOT meet the target" in capsys.readouterr().out
    for name in (REPLAY_JSON, REPLAY_MD, REPLAY_PLOT):
        assert (d / name).stat().st_size > 0


PAIRED = {
    "truth_grouping_paired": ["increasing", "uniform", "decreasing", "spindle", "bottleneck"],
    "truth_tunable": ["G1", "G4", "G12", "G34", "all"],
}


@pytest.mark.parametrize("name", list(PAIRED))
def test_the_paired_real_stages_replay_as_pairs(name):
    """The paired ground truths (`make stage-truth-paired-cpu`, `make stage-truth-tunable-cpu`): design i of
    every option shares its draws (exact pairs share tuned groups, allocation and strategies), the replay
    redraws pairs, and the default decision's figures are computed on them."""
    import json

    d = Path(__file__).parent / "fixtures" / name
    meta = json.loads((d / "stage.json").read_text())
    assert meta["paired"] and meta["options_order"] == PAIRED[name]
    st = load_stage(d)
    assert st.paired and st.options == PAIRED[name] and st.epochs == 3 and st.n == meta["n"] >= 2
    for i in meta["pairs"]["exact"]:
        shared = {json.dumps([s["tuned"], s["allocation"], s["strategies"]]) for o in PAIRED[name]
                  for s in meta["samples"][o] if s["index"] == i}  # fmt: skip
        if meta["dimension"] == "grouping":
            assert len(shared) == 1
        else:  # tunable: tuned groups are the option; allocation is shared
            assert len({json.loads(x)[1] for x in shared}) == 1
    res = run_replay(st, RaceSettings(), replays=100, seed=0)
    assert res["paired"] and res["full_verdict"] in ("decided", "equivalent", "unresolved")
    default = next(r for r in res["policies"] if r["family"] == "decision (default)")
    assert 0 < default["compute_fraction"] <= 1 and 0 <= default["good_selection_rate"] <= 1
    assert res["pairing"]["paired_stage"] and res["pairing"]["ratio_mean"] is not None

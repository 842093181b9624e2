"""`peftds replay` on real numbers: the grouping stage `make stage-truth-cpu` ran at full fidelity on the real
MiniLM-L6 and SST-2 (5 options x 12 designs x 3 epochs; trials.csv + stage.json committed as a fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from peftds.files import REPLAY_JSON, REPLAY_MD, REPLAY_PLOT
from peftds.search.racing import RaceSettings
from peftds.search.replay import cmd_replay, load_stage, run_replay

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

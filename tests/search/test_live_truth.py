"""A live multi-fidelity stage on real numbers: `make stage-live-tunable-cpu` decided the tunable5 ground truth's
designs (same trial ids) with looks on epoch-1 scores and half of each look continued to epoch 3 (real MiniLM-L6,
SST-2, 2 CPU workers). Its files (decision.json, trials.csv, stage.json) are committed as a fixture and checked
against the ground truth that trained every design to the end (tests/search/fixtures/truth_tunable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peftds.search.decision import DecisionSettings, Fidelity, decide
from peftds.search.replay import load_stage

from .helpers import rows

FIXTURES = Path(__file__).parent / "fixtures"
LIVE, TRUTH = FIXTURES / "live_tunable", FIXTURES / "truth_tunable"


def test_the_live_stage_trained_the_ground_truths_designs_to_the_same_scores():
    """Same designs, same trial ids; a trial stopped after epoch 1 and continued to epoch 3 by the search scores
    exactly what the ground truth's uninterrupted 3-epoch trial scored, after every epoch."""
    live_meta, truth_meta = (json.loads((d / "stage.json").read_text()) for d in (LIVE, TRUTH))
    assert live_meta["samples"] == truth_meta["samples"]
    truth = {r["trial_id"]: r for r in rows(TRUTH / "trials.csv")}
    live = rows(LIVE / "trials.csv")
    assert live and all(r["status"] == "ok" for r in live)
    for r in live:
        assert (r["score"], r["epoch_scores"]) == (truth[r["trial_id"]]["score"], truth[r["trial_id"]]["epoch_scores"])


def test_the_live_decision_is_the_one_its_replay_predicts():
    """decision.json holds every design's epoch-1 score (the ground truth's epoch-1 score of the same design) and
    the decision that the ground truth's scores give in the same design order: a live stage decides as its
    replay says."""
    dec = json.loads((LIVE / "decision.json").read_text())
    st = load_stage(TRUTH)
    full = {o: list(x) for o, x in zip(st.options, st.scores[3])}
    cheap = {o: list(x) for o, x in zip(st.options, st.scores[1])}
    for o, xs in dec["cheap_scores"].items():
        assert xs == pytest.approx(cheap[o][: len(xs)], abs=1e-3)  # trials.csv rounds to 4 decimals
    fidelity = Fidelity(**dec["fidelity"])
    predicted = decide(full, st.n, DecisionSettings(**dec["settings"]), cheap=cheap, fidelity=fidelity)
    assert {k: dec[k] for k in ("verdict", "pick", "designs", "full", "looks", "out")} == {
        "verdict": predicted.verdict, "pick": predicted.pick, "designs": predicted.designs,
        "full": predicted.full, "looks": predicted.looks, "out": predicted.out,
    }  # fmt: skip
    used = sum(dec["designs"].values()) * fidelity.cheap_epochs
    used += sum(dec["full"].values()) * (fidelity.epochs - fidelity.cheap_epochs)
    print(f"\nlive tunable5: {dec['line']}; {used} of {len(st.options) * st.n * st.epochs} trial-epochs")
    assert dec["pick"] == st.options[st.winner()]  # the full-N winner

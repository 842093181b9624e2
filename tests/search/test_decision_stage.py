"""A stage decided in looks (search.sequential, the default) with a stand-in for training: options far
behind are found worse at the first look, the stage stops at its verdict with a fraction of the designs,
decision.json / summary / report / space_next carry the verdict, a rerun trains nothing, and
search.sequential=false extends the stage to every design."""

from __future__ import annotations

import json
import re
import zlib

import pytest

from peftds.errors import PeftdsError
from peftds.files import DECISION_FILE
from peftds.search.launch import run_search

from .helpers import quiet, rows

# paired designs share their draws, so a design's own spread comes from the draws every option shares
# (the hash of its tuned groups, allocation and strategies): pairs differ by the option's base score only
BASE = {"spindle": 80.0, "bottleneck": 70.0, "uniform": 65.0, "increasing": 50.0, "decreasing": 40.0}
N = 12


def paired_score(design, trial) -> float:
    shared = zlib.crc32(json.dumps([design["tuned"], design["allocation"], design["strategies"]]).encode()) % 1000 / 250
    return BASE[trial["option"]] + shared


def test_a_clear_stage_is_decided_at_the_first_look(tmp_path, fake_training, args):
    calls, rules = fake_training
    rules["score"] = paired_score
    a = args(tmp_path, "stage=grouping", f"search.n={N}", "search.batch_size=100")
    log = []
    assert run_search(a, echo=log.append) == 0
    sdir = tmp_path / "s" / "grouping"
    dec = json.loads((sdir / DECISION_FILE).read_text())
    assert dec["verdict"] == "decided" and dec["pick"] == "spindle" and dec["finished"]
    assert dec["looks"] == 1 and dec["designs"] == {o: 3 for o in BASE} and set(dec["out"]) == set(BASE) - {"spindle"}
    table = rows(sdir / "trials.csv")
    assert len(table) == len(calls) == 5 * 3  # the first look only: 3 of 12 designs per option
    s = json.loads((sdir / "summary.json").read_text())
    assert s["status"] == "ok" and s["winner"] == "spindle" and s["verdict"] == "decided"
    assert s["eliminated"]["increasing"]["round"] == 1 and s["options"]["increasing"]["trials_pending"] == 0
    report = (sdir / "report.md").read_text()
    assert "verdict: decided: spindle beats every other option" in report and "Stage decision" in report
    assert "verdict: decided" in (sdir / "space_next.yaml").read_text()
    assert any("verdict: decided" in str(x) for x in log)
    # a rerun trains nothing; search.sequential=false extends the stage to all N designs (same trial ids)
    assert run_search(a, echo=quiet) == 0 and len(calls) == 5 * 3
    assert run_search([*a, "search.sequential=false"], echo=quiet) == 0
    assert len(calls) == 5 * N
    s = json.loads((sdir / "summary.json").read_text())
    assert s["winner"] == "spindle" and s["verdict"] == "decided" and "eliminated" not in s
    assert json.loads((sdir / DECISION_FILE).read_text())["settings"]["sequential"] is False


# four options alike (each pair differs by noise of sd ~1.2 that no look at N=7 separates) and one far behind
CLOSE = {"spindle": 80.0, "bottleneck": 80.0, "uniform": 80.0, "increasing": 80.0, "decreasing": 40.0}


def close_score(design, trial) -> float:
    draws = [design["tuned"], design["allocation"], design["strategies"]]
    own = zlib.crc32(json.dumps([*draws, trial["option"]]).encode()) % 1000 / 250
    return CLOSE[trial["option"]] + paired_score(design, trial) - BASE[trial["option"]] + own


def trial_epochs(calls) -> int:
    return sum((c["stop_epoch"] or 3) - c["from_epoch"] for c in calls)


def test_multi_fidelity_looks_train_to_epoch_k_and_continue_the_first_designs(tmp_path, fake_training, args):
    """search.cheap_epochs=1 of 3: every design of a look trains one epoch, the first continued(n) of each
    option's n go on to epoch 3 (continued, not retrained), the decision takes control-variate estimates,
    and the checkpoints of designs never continued are deleted when the stage is over. Looks at 4, 6, 7
    designs with 4, 4, 5 of them at full fidelity: design 5 stops after epoch 1 at look 2 and goes on at 3."""
    from peftds.search.decision import DecisionSettings, Fidelity, continued, decide
    from peftds.search.stats import index_scores, read_table

    calls, rules = fake_training
    rules["score"] = close_score
    n = 7
    extra = ["stage=grouping", f"search.n={n}", "search.batch_size=100", "search.epochs=3", "train.max_steps=-1"]
    a = args(tmp_path, *extra, "search.first_designs=4", "search.cheap_epochs=1", "search.continue_share=0.6")
    log = []
    assert run_search(a, echo=log.append) == 0
    sdir = tmp_path / "s" / "grouping"
    dec = json.loads((sdir / DECISION_FILE).read_text())
    assert dec["fidelity"] == {"cheap_epochs": 1, "epochs": 3, "share": 0.6} and dec["finished"]
    # the far option is found worse at the first look, and the looks go on over the options still in
    assert dec["out"] == {"decreasing": 1} and dec["looks"] == 3 and dec["verdict"] == "unresolved"
    assert dec["full"] == {**{o: continued(n, 0.6) for o in CLOSE}, "decreasing": 4}  # 5 of 7 continued
    # trials.csv holds the full-fidelity trials; the cheap ones live in their records (decision.json's cheap_scores)
    assert len(rows(sdir / "trials.csv")) == 4 * 5 + 4
    assert {o: len(v) for o, v in dec["cheap_scores"].items()} == dec["designs"]
    stopped = [c for c in calls if c["stop_epoch"] == 1]
    went_on = [c for c in calls if c["from_epoch"] == 1]
    assert len(stopped) == 4 * 3 and len(went_on) == 4 and all(c["stop_epoch"] is None for c in went_on)
    assert len({c["run_dir"] for c in calls}) == 4 * n + 4  # each design trained once, some in two parts
    # compute: every design one epoch, the continued ones two more (vs 5 x 7 x 3 for the full protocol)
    assert trial_epochs(calls) == sum(dec["designs"].values()) + 2 * sum(dec["full"].values()) == 32 + 2 * 24
    assert any("of them to epoch 1" in str(x) for x in log) and "full fidelity" in dec["line"]
    assert any("more stopped after epoch 1" in str(x) for x in log)  # progress counts the stopped trials
    # the stored decision is what the stored scores give, and the report carries it
    meta = json.loads((sdir / "stage.json").read_text())
    full = index_scores(read_table(sdir / "trials.csv"), meta["samples"], meta["options_order"], 1)
    settings = DecisionSettings(first=4)
    again = decide(full, n, settings, cheap=dec["cheap_scores"], fidelity=Fidelity(1, 3, 0.6))
    assert again.to_dict() | {"line": dec["line"], "cheap_scores": dec["cheap_scores"]} == dec
    assert "multi-fidelity: every design to epoch 1 of 3" in (sdir / "report.md").read_text()
    summary = json.loads((sdir / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["winner"] == dec["pick"]  # the decision's pick, not a row mean's
    assert not list((tmp_path / "s" / "trials").glob("*/checkpoints"))  # none kept once the stage is over
    n_calls = len(calls)
    assert run_search(a, echo=quiet) == 0 and len(calls) == n_calls  # a rerun trains nothing


def test_multi_fidelity_settings_are_checked(tmp_path, fake_training, args):
    """Beside the bad-input table's cases (tests/config/test_bad_input.py): refused before anything trains."""
    for extra, says in (
        (["search.cheap_epochs=1", "search.epochs=3", "train.max_steps=-1", "search.racing=true"], "racing=false"),
        (["search.continue_share=0"], "continue_share"),
    ):
        with pytest.raises(PeftdsError, match=re.escape(says)):
            run_search(args(tmp_path, "stage=grouping", *extra), echo=quiet)
    assert not fake_training[0]  # refused before anything trained

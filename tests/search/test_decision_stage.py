"""A stage decided in looks (search.sequential, the default) with a stand-in for training: options far
behind are found worse at the first look, the stage stops at its verdict with a fraction of the designs,
decision.json / summary / report / space_next carry the verdict, a rerun trains nothing, and
search.sequential=false extends the stage to every design."""

from __future__ import annotations

import json
import zlib

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

"""trials.csv (peftds.search.store): rows keyed by (stage, option, index, task), appended without
duplicates under a lock, removed for retries; a trial's row from its record."""

from __future__ import annotations

from peftds.search.designs import Sample
from peftds.search.store import ROW_FIELDS, TrialTable, trial_row
from peftds.search.trial import Trial

from .helpers import rows


def sample() -> Sample:
    return Sample(option="spindle", index=2, design_file="conf/design/g/spindle-002.yaml", design_ref="g/spindle-002",
                  digest="abc123", compact="G[3,6,6,3]", groups=[3, 6, 6, 3], tuned=[1, 2], allocation="uniform",
                  strategies=[["adapter", "lora"], ["prefix"], [], []], sizes="A8 L4 | P5 | - | -",
                  trainable_params=900, budget_params=1000)  # fmt: skip


def row(stage="g", opt="a", idx=0, task="t", **kw):
    return {"stage": stage, "option": opt, "index": idx, "task": task, "status": "ok", **kw}


def test_append_skips_known_keys_and_remove_drops_them(tmp_path):
    t = TrialTable(tmp_path / "g" / "trials.csv")
    assert t.read() == [] and t.keys() == set()
    assert t.append([row(), row(idx=1), row()]) == 2
    assert t.append([row(idx=1, status="failed"), row(task="u")]) == 1
    assert [(r["index"], r["task"], r["status"]) for r in rows(t.path)] == [("0", "t", "ok"), ("1", "t", "ok"),
                                                                           ("0", "u", "ok")]  # fmt: skip
    assert list(rows(t.path)[0]) == ROW_FIELDS
    assert t.remove({("g", "a", 1, "t"), ("g", "zz", 0, "t")}) == 1
    assert t.keys() == {("g", "a", 0, "t"), ("g", "a", 0, "u")}
    assert t.lock_path.exists() and not list(t.path.parent.glob(".*tmp*"))


def test_trial_row_of_ok_and_non_finite_records():
    t = Trial("abc123-sst2-s42-r1", "sst2", sample())
    rec = {"status": "ok", "score": 81.234567, "best": {"epoch": 1, "score": 81.2, "accuracy": 81.2},
           "wall_time_s": 3.14159, "device": "cpu", "trainable_params": 950}  # fmt: skip
    r = trial_row(("g", "spindle", 2, "sst2"), t, rec, epochs=1, seed=42)
    assert r["score"] == "81.2346" and r["metrics"] == '{"accuracy": 81.2}' and r["wall_time_s"] == "3.1"
    assert r["group_sizes"] == "3-6-6-3" and r["tuned"] == "1,2" and r["strategies"] == "A+L | P | - | -"
    assert r["trainable_params"] == 950 and r["status"] == "ok" and set(r) == set(ROW_FIELDS)
    nan = trial_row(("g", "spindle", 2, "sst2"), t, {"status": "ok", "score": float("nan")}, epochs=1, seed=42)
    assert nan["status"] == "failed" and nan["error"] == "non-finite score (nan)" and nan["score"] == ""

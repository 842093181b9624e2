"""Table formatting: bold best, ±, the footnote row, majority baseline, paper rows only where the setting matches."""

from __future__ import annotations

import json
from types import SimpleNamespace

from peftds.compare.plan import DesignEntry
from peftds.compare.published import paper_rows
from peftds.compare.render import to_csv, to_latex, to_markdown
from peftds.compare.table import build_table, columns_of
from peftds.config.sections import CompareConfig

SCORES = {"lora": (92.0, 91.0, 93.0), "adapter": (88.0, 87.5, 88.5)}


def run_id(design, task, seed, regime="r0"):
    return f"{design}-{task}-s{seed}-{regime}"


def fake_plan(model="minilm_l6", tasks=("sst2",), designs=tuple(SCORES), seeds=(1, 2, 3), **settings):
    entries = [DesignEntry(d, d) for d in designs]
    runs = [SimpleNamespace(run_id=run_id(e.label, t, sd)) for e in entries for t in tasks for sd in seeds]
    return SimpleNamespace(settings=CompareConfig(**{"bootstrap": 100, **settings}), model=model, tasks=list(tasks),
                           seeds=list(seeds), designs=entries, runs=runs)  # fmt: skip


def row(design, task, seed, value, regime="r0"):
    metrics = json.dumps({"accuracy": value, "score": value})
    return {"run_id": run_id(design, task, seed, regime), "design": design, "task": task, "seed": str(seed),
            "status": "ok", "trainable_pct": "0.5", "metrics": metrics}  # fmt: skip


def fake_rows(tasks=("sst2",), scores=SCORES):
    return [row(d, t, sd, v) for d, vals in scores.items() for t in tasks for sd, v in zip((1, 2, 3), vals)]


def no_predictions(design, task, seed):
    return None


def test_markdown_bold_plus_minus_and_footnote():
    t = build_table(fake_plan(), fake_rows(), no_predictions)
    md = to_markdown(t)
    assert "| lora | 0.500 | **92.0 ± 1.0**" in md and "| adapter | 0.500 | 88.0 ± 0.5 |" in md
    assert "| p best vs 2nd |" in md and "boot n/a" in md  # no predictions saved: no bootstrap
    assert "paired t-test over the seeds both" in md and "paper:" not in md
    tex = to_latex(t)
    assert r"\textbf{92.0 $\pm$ 1.0}" in tex and r"\toprule" in tex
    assert "lora,design,0.5,92.0" in to_csv(t)


def test_unlearned_task_is_flagged_and_left_out_of_the_average():
    refs = [1] * 30 + [0] * 10  # majority class: 75% accuracy, above every design on rte

    def preds(design, task, seed):
        return ([1] * 40, refs)

    rows = fake_rows(("sst2",)) + [row(d, "rte", sd, 60.0) for d in SCORES for sd in (1, 2, 3)]
    t = build_table(fake_plan(tasks=("sst2", "rte")), rows, preds)
    assert t.unlearned == ["rte"] and t.majority["rte"] == 75.0
    assert t.cells["lora"]["avg"].mean == t.cells["lora"]["sst2"].mean  # rte left out
    md = to_markdown(t)
    assert "rte ⚠" in md and "majority class" in md and "left out of `avg`" in md


def test_paper_row_only_where_model_and_tasks_match():
    glue = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]
    cols = columns_of(glue, "score", True)
    rows = paper_rows("t5_base", cols, glue).rows
    assert rows["paper: S4-model"] == {"avg": 85.7} and rows["paper: best PEFT baseline"] == {"avg": 83.3}
    assert paper_rows("t5_base", columns_of(glue[:3], "score", True), glue[:3]).rows == {}  # other tasks
    assert paper_rows("minilm_l6", cols, glue).rows == {}  # other model
    gen = columns_of(["xsum", "wmt16_en_ro"], "metrics", False)
    assert paper_rows("bart_large", gen, ["xsum", "wmt16_en_ro"]).rows["paper: S4-model"] == {"xsum/rouge1": 44.3}
    assert "RoBERTa without a size" in paper_rows("roberta_base", cols, glue).notes[0]


def test_table_holds_only_the_runs_of_its_plan():
    """Rows of another regime in the same runs.csv are stale: never averaged in, never a stand-in for a
    failed run of this plan."""
    plan = fake_plan(designs=("lora", "adapter"), seeds=(1, 2))
    old = [row("lora", "sst2", sd, 90.0, regime="r_old") for sd in (1, 2)]
    new = [row("lora", "sst2", 1, 50.0), {**row("lora", "sst2", 2, 0.0), "status": "failed", "metrics": ""}]
    new += [row("adapter", "sst2", sd, 60.0) for sd in (1, 2)]
    t = build_table(plan, old + new, no_predictions)
    assert t.cells["lora"]["sst2"].values == {1: 50.0}  # not 70 = (90 + 50) / 2, no old seed-2 value
    assert t.best["sst2"].best == "adapter" and sorted(t.stale) == sorted(r["run_id"] for r in old)
    md = to_markdown(t)
    assert "| lora | 0.500 | 50.0 (1) |" in md and "2 run(s) of other settings" in md


def test_a_mark_needs_the_lead_on_the_seeds_both_finished():
    """A's mean (93) is the best, but on the two seeds B finished A is behind: no significance mark."""
    plan = fake_plan(designs=("a", "b"), digits=2)
    rows = [row("a", "sst2", sd, v) for sd, v in ((1, 90.0), (2, 90.0), (3, 99.0))]
    rows += [row("b", "sst2", 1, 91.0), row("b", "sst2", 2, 91.1)]
    t = build_table(plan, rows, no_predictions)
    b = t.best["sst2"]
    assert b.best == "a" and b.p_t is not None and b.p_t < 0.05 and not b.leads and not b.same_seeds
    md = to_markdown(t)
    assert "| a | 0.500 | **93.00 ± 5.20** |" in md  # bold (highest mean) but no †
    assert "not ahead of the second best on the seeds both finished" in md
    assert "Means over different seed sets (best vs second) in sst2" in md


GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"]


def test_paper_average_stands_beside_the_average_over_all_tasks():
    """With an unlearned task left out of `avg`, the paper's all-task average goes to `avg (all tasks)`."""
    plan = fake_plan(model="t5_base", tasks=GLUE, bootstrap=0)
    scores = {t: SCORES for t in GLUE if t != "rte"}
    rows = [r for t, sc in scores.items() for r in fake_rows((t,), sc)]
    rows += [row(d, "rte", sd, 60.0) for d in SCORES for sd in (1, 2, 3)]

    def preds(design, task, seed):
        refs = [1] * 30 + [0] * 10 if task == "rte" else [0, 1] * 20  # rte: majority class 75%
        return ([1] * 40, refs)

    t = build_table(plan, rows, preds)
    assert t.unlearned == ["rte"]
    assert t.cells["lora"]["avg"].mean == 92.0 and t.cells["lora"]["avg_all"].mean == (7 * 92.0 + 60.0) / 8
    assert t.paper.rows["paper: S4-model"] == {"avg_all": 85.7}  # not beside the 7-task average
    md = to_markdown(t)
    assert "| avg | avg (all tasks) |" in md and "the paper's averages are over all tasks" in md


def test_ties_single_seeds_metric_columns_and_an_all_unlearned_table():
    even = {"lora": (90.0, 91.0, 92.0), "adapter": (92.0, 91.0, 90.0)}
    tied = build_table(fake_plan(designs=("lora", "adapter")), fake_rows(scores=even), no_predictions)
    md = to_markdown(tied)
    assert tied.best["sst2"].tied == ["lora", "adapter"] and md.count("**91.0 ± 1.0**=") == 2
    assert "tied for best" in md and "†" not in md.split("\n- ")[0]
    one = build_table(fake_plan(seeds=(1,)), fake_rows(), no_predictions)
    assert "| lora | 0.500 | **92.0** |" in to_markdown(one)  # one seed: no `± 0.0`

    def preds(design, task, seed):
        return ([1] * 40, [1] * 30 + [0] * 10)  # majority class: 75% accuracy, above every design

    low = {"lora": (60.0, 61.0, 62.0), "adapter": (50.0, 51.0, 52.0)}
    rows = [r for t in ("mrpc", "rte") for r in fake_rows((t,), low)]
    for r in rows:
        r["metrics"] = json.dumps({"accuracy": json.loads(r["metrics"])["score"], "f1": 10.0, "score": 20.0})
    t = build_table(fake_plan(tasks=("mrpc", "rte"), columns="metrics"), rows, preds)
    md = to_markdown(t)
    assert t.unlearned == ["mrpc", "rte"] and "mrpc/accuracy ⚠" in md and "mrpc/f1 ⚠" in md
    assert "`avg` is empty: every task is unlearned" in md

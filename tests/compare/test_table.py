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


def fake_plan(model="minilm_l6", tasks=("sst2",), **settings):
    return SimpleNamespace(settings=CompareConfig(bootstrap=100, **settings), model=model, tasks=list(tasks),
                           seeds=[1, 2, 3], designs=[DesignEntry(d, d) for d in SCORES])  # fmt: skip


def fake_rows(tasks=("sst2",)):
    return [
        {"design": d, "task": t, "seed": str(sd), "status": "ok", "trainable_pct": "0.5",
         "metrics": json.dumps({"accuracy": v, "score": v})}
        for d, vals in SCORES.items() for t in tasks for sd, v in zip((1, 2, 3), vals)
    ]  # fmt: skip


def no_predictions(design, task, seed):
    return None


def test_markdown_bold_plus_minus_and_footnote():
    t = build_table(fake_plan(), fake_rows(), no_predictions)
    md = to_markdown(t)
    assert "| lora | 0.500 | **92.0 ± 1.0**" in md and "| adapter | 0.500 | 88.0 ± 0.5 |" in md
    assert "| p best vs 2nd |" in md and "boot n/a" in md  # no predictions saved: no bootstrap
    assert "paired t-test over seeds" in md and "paper:" not in md
    tex = to_latex(t)
    assert r"\textbf{92.0 $\pm$ 1.0}" in tex and r"\toprule" in tex
    assert "lora,design,0.5,92.0" in to_csv(t)


def test_unlearned_task_is_flagged_and_left_out_of_the_average():
    refs = [1] * 30 + [0] * 10  # majority class: 75% accuracy, above every design on rte

    def preds(design, task, seed):
        return ([1] * 40, refs)

    rows = fake_rows(("sst2",)) + [
        {**r, "task": "rte", "metrics": json.dumps({"accuracy": 60.0, "score": 60.0})} for r in fake_rows(("sst2",))
    ]
    t = build_table(fake_plan(tasks=("sst2", "rte")), rows, preds)
    assert t.unlearned == ["rte"] and t.majority["rte"] == 75.0
    assert t.cells["lora"]["avg"].mean == t.cells["lora"]["sst2"].mean  # rte left out
    md = to_markdown(t)
    assert "rte ⚠" in md and "majority class" in md and "left out of the average" in md


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


def test_csv_numbers_are_rounded_to_six_significant_digits():
    from peftds.compare.render import csv_row

    assert csv_row({"row": "lora", "a_mean": 57.99999999999999, "a_n": 3, "p": 1.234567891e-7}) == {
        "row": "lora", "a_mean": 58.0, "a_n": 3, "p": 1.23457e-7,
    }  # fmt: skip

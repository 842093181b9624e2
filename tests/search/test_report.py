"""The report (peftds.search.report): `peftds report <dir>` writes Markdown tables and PNG plots."""

from __future__ import annotations

import json

from peftds.search.report import write_report

from .helpers import HAND


def test_report_renders_markdown_and_plots(tmp_path, capsys):
    stage = tmp_path / "grouping"
    stage.mkdir()
    HAND.assign(stage="grouping").to_csv(stage / "trials.csv", index=False)
    (stage / "stage.json").write_text(
        json.dumps(
            {
                "name": "grouping",
                "dimension": "grouping",
                "group": None,
                "options": {"a": "spindle", "b": "uniform"},
                "options_order": ["a", "b"],
                "tasks": ["t1", "t2"],
                "min_ok": 2,
                "bootstrap": 500,
                "seed": 0,
                "planned": {"a": 4, "b": 4},
                "infeasible": {},
                "space": {"describe": "K=4"},
            }
        )
    )
    (tmp_path / "search.json").write_text(json.dumps({"stages_run": ["grouping"]}))
    from peftds.cli import main

    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| **a** ★ | spindle |" in out and "winner: a" in out
    for f in (tmp_path / "report.md", stage / "report.md", stage / "edf.png", stage / "scores.png"):
        assert f.exists() and f.stat().st_size > 0, f
    md = (tmp_path / "report.md").read_text()
    assert "Stage `grouping`" in md and "95% CI" in md and "grouping/edf.png" in md
    assert (stage / "edf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert write_report(stage, n_boot=10, echo=lambda *a: None) == stage / "report.md"

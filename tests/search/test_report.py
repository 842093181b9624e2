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


def stage_dir(root, name="grouping"):
    """A finished stage dir with the hand-made trials (options a, b) and its space_next.yaml."""
    from peftds.search.report import write_stage_report

    stage = root / name
    stage.mkdir(parents=True)
    HAND.assign(stage=name).to_csv(stage / "trials.csv", index=False)
    meta = {"name": name, "dimension": "grouping", "group": None, "options": {"a": "spindle", "b": "uniform"},
            "options_order": ["a", "b"], "tasks": ["t1", "t2"], "min_ok": 2, "bootstrap": 100, "seed": 0,
            "planned": {"a": 4, "b": 4}, "infeasible": {}, "space": {"describe": "K=4"}}  # fmt: skip
    (stage / "stage.json").write_text(json.dumps(meta))
    (stage / "space_next.yaml").write_text(
        f"# space after stage {name}: input space + winner a\n"
        f"# next: peftds search stage=<next stage> space={stage / 'space_next.yaml'}\ngroups: 4\n"
    )
    write_stage_report(stage)
    return stage


def test_a_chained_search_reports_the_earlier_stage_first(tmp_path, capsys):
    """`peftds search stage=allocation space=<first>/grouping/space_next.yaml` in a new dir: its report
    shows the earlier grouping stage (read from the copied space file), then its own stage."""
    from peftds.search.report import earlier_stages

    first = tmp_path / "first"
    earlier = stage_dir(first)
    second = tmp_path / "second"
    stage_dir(second, "allocation")
    (second / "conf" / "space").mkdir(parents=True)  # what `peftds search` copies a space= file to
    (second / "conf" / "space" / "file_space_next.yaml").write_text((earlier / "space_next.yaml").read_text())
    (second / "search.json").write_text(json.dumps({"args": ["+stage=allocation", "+space=file_space_next"]}))
    before = (earlier / "report.md").stat().st_mtime_ns
    assert earlier_stages(second) == [earlier] and earlier_stages(first) == []
    assert write_report(second, echo=lambda *a: None) == second / "report.md"
    md = (second / "report.md").read_text()
    assert md.index("Earlier stage `grouping`") < md.index("Stage `allocation`")
    assert "](../first/grouping/edf.png)" in md and (earlier / "report.md").stat().st_mtime_ns == before
    assert "Strategy letters" in md

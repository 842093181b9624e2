"""Running a comparison with stand-in training: runs.csv, resume after a kill, the dry listing, the tables."""

from __future__ import annotations

import csv

import pytest

from peftds.compare.runner import run_compare


def rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def quiet(*a):
    pass


def test_kill_then_rerun_completes_without_repeating(fake_training, cargs, tmp_path):
    calls, rules = fake_training
    rules["interrupt_after"] = 3
    with pytest.raises(KeyboardInterrupt):
        run_compare(cargs(), echo=quiet)
    out = tmp_path / "c"
    first = rows(out / "runs.csv")
    assert len(first) == 3 and all(r["status"] == "ok" for r in first)  # finished runs are kept
    done = {c["run_dir"] for c in calls[:3]}
    rules["interrupt_after"] = None
    calls.clear()
    assert run_compare(cargs(), echo=quiet) == 0
    assert len(calls) == 8 - 3 and not done & {c["run_dir"] for c in calls}  # nothing ran twice
    final = rows(out / "runs.csv")
    assert len(final) == 8 and len({r["run_id"] for r in final}) == 8
    assert {r["design"] for r in final} == {"lora", "full"} and {r["seed"] for r in final} == {"1", "2"}
    for f in ("table.md", "table.csv", "table.tex"):
        assert (out / f).is_file()
    calls.clear()
    assert run_compare(cargs(), echo=quiet) == 0 and calls == []  # a third run trains nothing


def test_dry_lists_runs_and_trains_nothing(fake_training, cargs, tmp_path):
    calls, _ = fake_training
    lines: list[str] = []
    assert run_compare(cargs("compare.dry=true"), echo=lambda *a: lines.append(" ".join(map(str, a)))) == 0
    text = "\n".join(lines)
    assert calls == [] and not (tmp_path / "c").exists()
    assert "2 designs x 2 tasks x 2 seeds = 8 runs (0 done, 8 to run)" in text
    assert "GPU-hours" in text and text.count(" pending ") == 8


def test_table_of_a_finished_comparison(fake_training, cargs, tmp_path):
    assert run_compare(cargs("compare.seeds=[1,2,3]"), echo=quiet) == 0
    md = (tmp_path / "c" / "table.md").read_text()
    lora = next(line for line in md.splitlines() if line.startswith("| lora "))
    assert lora.count("**") == 6 and "±" in lora  # best in every column (sst2, rte, avg)
    assert "| p best vs 2nd |" in md and "t " in md and "boot " in md
    assert "majority class" in md and "paper:" not in md  # tiny_bert: no published numbers
    assert "‡" in lora  # 0.9 vs 0.7 accuracy on every seed: the bootstrap says so


@pytest.mark.slow
def test_one_tiny_real_run(data_dir, tmp_path):
    args = ["model=tiny_bert", f"data.dir={data_dir}", f"compare.dir={tmp_path / 'c'}", "compare.designs=[lora]",
            "compare.tasks=[sst2]", "compare.seeds=[1]", "data.max_train_samples=32", "data.max_eval_samples=32",
            "train.epochs=1", "compare.threads=1"]  # fmt: skip
    assert run_compare(args, echo=quiet) == 0
    (row,) = rows(tmp_path / "c" / "runs.csv")
    assert row["status"] == "ok" and float(row["trainable_pct"]) > 0
    assert (tmp_path / "c" / "runs" / row["run_id"] / "predictions.jsonl").is_file()


def test_a_refused_compare_writes_nothing(fake_training, cargs, tmp_path):
    """While another compare holds the dir's lock, a second one stops before writing anything."""
    from peftds.compare.runner import COMPARE_LOCK
    from peftds.errors import PeftdsError
    from peftds.files import file_lock

    assert run_compare(cargs("compare.seeds=[1]"), echo=quiet) == 0
    out = tmp_path / "c"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with file_lock(out / COMPARE_LOCK), pytest.raises(PeftdsError, match="another peftds compare is running"):
        run_compare(cargs("compare.seeds=[7]", "compare.designs=[lora]"), echo=quiet)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_runs_csv_names_run_dirs_relative_to_the_compare_dir(fake_training, cargs, tmp_path):
    """The results folder can be moved; rows of older versions (absolute paths) are rewritten."""
    calls, _ = fake_training
    assert run_compare(cargs("compare.seeds=[1]"), echo=quiet) == 0
    first = rows(tmp_path / "c" / "runs.csv")
    assert {r["run_dir"] for r in first} == {f"runs/{r['run_id']}" for r in first}
    moved = tmp_path / "moved"
    (tmp_path / "c").rename(moved)
    text = (moved / "runs.csv").read_text()
    (moved / "runs.csv").write_text(text.replace(",runs/", f",{tmp_path / 'c' / 'runs'}/"))  # an older row format
    calls.clear()
    assert run_compare([*cargs("compare.seeds=[1]"), f"compare.dir={moved}"], echo=quiet) == 0
    assert calls == [] and rows(moved / "runs.csv") == first  # nothing retrained; paths relative again


def test_a_per_design_setting_for_a_design_left_out_is_ignored(fake_training, cargs):
    """Narrowing a preset's designs: its compare.lr for a design not in the list is noted, not an error."""
    lines: list[str] = []
    argv = ["compare=cpu", *cargs("compare.dry=true", "compare.designs=[mam,lora]")]  # cpu: lr {full: 1e-4}
    assert run_compare(argv, echo=lambda *a: lines.append(" ".join(map(str, a)))) == 0
    assert "compare.lr for full ignored: not in compare.designs (mam, lora)" in "\n".join(lines)

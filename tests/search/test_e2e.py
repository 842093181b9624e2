"""End-to-end searches with real training (tiny random models, tiny real data, CPU): the full loop
in process, worker processes through hydra/launcher=joblib (the pickled trial function), real
subprocesses through hydra/launcher=submitit_local, and a search killed by a real signal and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from peftds.search.launch import run_search

from .helpers import rows

REPO = Path(__file__).resolve().parents[2]
CHAIN = """\
name: mini_all
chain:
  - {name: allocation, dimension: allocation, options: {uniform: uniform, decreasing: decreasing}}
  - {name: strategy_g1, dimension: strategies, group: 1, options: {L: [lora], AP: [adapter, prefix]}}
"""


def base(tmp_path, data_dir, *extra):
    return ["model=tiny_bert", "search=tiny", f"data.dir={data_dir}", f"search.dir={tmp_path / 's'}", *extra]


def test_real_chain_in_process(tmp_path, data_dir, compose_cfg):
    """sample -> train -> score on held-out -> select -> next space -> next stage -> final design."""
    chain = tmp_path / "mini_all.yaml"
    chain.write_text(CHAIN)
    space = tmp_path / "space.yaml"
    space.write_text("name: start\ngroups: 4\ntuned: all\n")
    out = []
    assert run_search(base(tmp_path, data_dir, f"stage={chain}", f"space={space}"), echo=out.append) == 0
    sdir = tmp_path / "s"
    for st in ("allocation", "strategy_g1"):
        table = rows(sdir / st / "trials.csv")
        assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
        for r in table:
            assert 0 <= float(r["score"]) <= 100 and int(r["trainable_params"]) <= int(r["budget_params"])
            rec = json.loads((sdir / "trials" / r["trial_id"] / "result.json").read_text())
            assert rec["eval_split"] == "heldout" and rec["status"] == "ok" and rec["device"] == "cpu"
            assert rec["plan"]["digest"] == r["design_hash"]  # the trained model is the sampled design
            assert rec["trial"]["stage"] == st
        assert json.loads((sdir / st / "summary.json").read_text())["winner"]
    g1 = json.loads((sdir / "strategy_g1" / "stage.json").read_text())
    winner_alloc = yaml.safe_load((sdir / "allocation" / "space_next.yaml").read_text())["allocation"]
    assert all(s["allocation"] == winner_alloc for lst in g1["samples"].values() for s in lst)
    cfg = compose_cfg("model=tiny_bert", f"design={sdir / 'best_design.yaml'}")
    assert cfg.design.allocation == winner_alloc and len(cfg.design.grouping.sizes) == 4
    assert any("[allocation] 2/2 trials" in str(line) and "leader:" in str(line) for line in out)
    report = (sdir / "report.md").read_text()  # the chain's own top-level report, every stage in it
    assert "Stage `allocation`" in report and "Stage `strategy_g1`" in report and "## Final design" in report
    assert not any("finished before a stop" in str(line) for line in out)  # a fresh search was never stopped


@pytest.mark.slow
def test_joblib_runs_pickled_trials_in_worker_processes(tmp_path, data_dir):
    a = base(tmp_path, data_dir, "stage=allocation", "~stage.options.increasing", "hydra/launcher=joblib",
             "hydra.launcher.n_jobs=2", "search.trial_threads=1")  # fmt: skip
    assert run_search(a, echo=lambda *x: None) == 0
    sdir = tmp_path / "s"
    table = rows(sdir / "allocation" / "trials.csv")
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    assert all((sdir / "trials" / r["trial_id"] / ".hydra" / "overrides.yaml").exists() for r in table)
    assert json.loads((sdir / "allocation" / "summary.json").read_text())["winner"] in ("uniform", "decreasing")


@pytest.mark.slow
def test_submitit_local_runs_trials_in_subprocesses(tmp_path, data_dir):
    a = base(
        tmp_path,
        data_dir,
        "stage=allocation",
        "~stage.options.increasing",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
    )
    assert run_search(a, echo=lambda *x: None) == 0
    sdir = tmp_path / "s"
    table = rows(sdir / "allocation" / "trials.csv")
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    assert list((sdir / ".submitit").glob("*/*_result.pkl"))  # submitit ran them as separate jobs
    summary = json.loads((sdir / "allocation" / "summary.json").read_text())
    assert summary["winner"] in ("uniform", "decreasing")


def _search_proc(args, log):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "peftds.cli", "search", *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )


@pytest.mark.slow
def test_killed_search_resumes_without_repeating_or_losing_trials(tmp_path, data_dir):
    a = base(
        tmp_path,
        data_dir,
        "stage=grouping",
        "search.n=2",
        "~stage.options.increasing",
        "~stage.options.decreasing",
        "~stage.options.bottleneck",
    )
    sdir = tmp_path / "s"
    table = sdir / "grouping" / "trials.csv"
    with open(tmp_path / "run1.log", "w") as log:
        proc = _search_proc(a, log)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if table.exists() and len(rows(table)) >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "run1.log").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = {r["trial_id"]: (sdir / "trials" / r["trial_id"] / "result.json").read_bytes() for r in rows(table)}
    assert 1 <= len(before) < 4
    with open(tmp_path / "run2.log", "w") as log:
        proc = _search_proc([f"search.dir={sdir}"], log)  # resume from the stored arguments
        assert proc.wait(timeout=600) == 0, (tmp_path / "run2.log").read_text()
    final = rows(table)
    keys = [(r["option"], r["index"], r["task"]) for r in final]
    assert len(final) == 4 and len(set(keys)) == 4  # every trial exactly once
    assert {r["status"] for r in final} == {"ok"}
    for tid, content in before.items():  # finished trials were not re-run
        assert (sdir / "trials" / tid / "result.json").read_bytes() == content
    run2 = (tmp_path / "run2.log").read_text()
    assert f"{len(before)} done, {4 - len(before)} to run" in run2 or "recorded" in run2


def test_tiny_llama_stage_end_to_end(tmp_path, data_dir):
    """A decoder-only LLM through a real search stage: sampled designs train and are scored on held-out."""
    chain = tmp_path / "llama.yaml"
    chain.write_text(
        "name: llama\nchain:\n"
        "  - {name: strategy_g1, dimension: strategies, group: 1, options: {L: [lora], AP: [adapter, prefix]}}\n"
    )
    space = tmp_path / "space.yaml"
    space.write_text("name: start\ngroups: 4\ntuned: all\n")
    args = ["model=tiny_llama", "search=tiny", f"data.dir={data_dir}", f"search.dir={tmp_path / 's'}"]
    assert run_search([*args, f"stage={chain}", f"space={space}"], echo=lambda *a: None) == 0
    table = rows(tmp_path / "s" / "strategy_g1" / "trials.csv")
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    for r in table:
        assert 0 <= float(r["score"]) <= 100 and int(r["trainable_params"]) <= int(r["budget_params"])
    assert (tmp_path / "s" / "best_design.yaml").is_file()


def test_real_multi_fidelity_stage_continues_stopped_trials(tmp_path, data_dir):
    """Real training (tiny BERT) with search.cheap_epochs=1 of 2: looks at 4, 6, 7 designs, of them 4, 4, 5
    continued to the end. Design 5 of each option stops after epoch 1 (a checkpoint, status ok, not complete)
    and the third look continues it from that checkpoint; designs never continued keep no checkpoint once
    the stage is over. δ*=0 and a tiny α keep the looks going (tiny random models tie)."""
    stage = tmp_path / "two.yaml"
    stage.write_text("name: two\ndimension: allocation\noptions: {uniform: uniform, decreasing: decreasing}\n")
    space = tmp_path / "space.yaml"
    space.write_text("name: start\ngroups: 4\ntuned: all\n")
    extra = ["search.n=7", "search.first_designs=4", "search.epochs=2", "search.cheap_epochs=1",
             "search.continue_share=0.6", "train.max_steps=-1", "search.tolerance=0", "search.alpha=1e-6"]  # fmt: skip
    out = []
    assert run_search(base(tmp_path, data_dir, f"stage={stage}", f"space={space}", *extra), echo=out.append) == 0
    sdir = tmp_path / "s"
    dec = json.loads((sdir / "two" / "decision.json").read_text())
    assert dec["looks"] == 3 and dec["designs"] == {"uniform": 7, "decreasing": 7}, dec["line"]
    assert dec["full"] == {"uniform": 5, "decreasing": 5}
    meta = json.loads((sdir / "two" / "stage.json").read_text())
    table = {(r["option"], int(r["index"])): r for r in rows(sdir / "two" / "trials.csv")}
    assert len(table) == 10 and {r["status"] for r in table.values()} == {"ok"}
    for opt, samples in meta["samples"].items():
        continued = table[(opt, samples[4]["index"])]
        rec = json.loads((sdir / "trials" / continued["trial_id"] / "result.json").read_text())
        assert rec["resumed_from"]["epoch"] == 1.0 and rec["complete"] and len(rec["epochs"]) == 2
        assert float(continued["score"]) == max(e["score"] for e in rec["epochs"])
        assert round(dec["cheap_scores"][opt][4], 4) == round(rec["epochs"][0]["score"], 4)
    records = [json.loads((d / "result.json").read_text()) for d in (sdir / "trials").iterdir()]
    stopped = [r for r in records if not r["complete"]]
    assert len(stopped) == 4 and all(r["epochs_trained"] == 1 for r in stopped)
    assert not list((sdir / "trials").glob("*/checkpoints/ckpt-*"))
    assert any("deleted the checkpoints of 4 trial(s) stopped early" in str(x) for x in out)

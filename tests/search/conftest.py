"""Fixtures of the search tests: a stand-in for training (fast searches through Hydra's basic launcher)
and the arguments of a small search."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import fake_score


@pytest.fixture()
def fake_training(monkeypatch):
    """Replace peftds.train.job.train_job (what a trial runs) by a stand-in writing the same result.json.

    rules (the second value): crash / raise / nan: design -> bool; score: (design, trial) -> its score
    (default: helpers.fake_score). A call records the trial's train.stop_epoch and the epoch it resumed from."""
    import peftds.train.job as training
    from peftds.files import CHECKPOINTS_DIR, RESULT_FILE, read_json
    from peftds.train.record import RunRecord

    calls: list[dict] = []
    rules: dict = {}

    def fake(run, run_dir=None):
        run_dir = Path(run_dir)
        design = run.design_config
        before = read_json(run_dir / RESULT_FILE) or {}
        resumed = before.get("epochs_trained", 0) if before.get("status") == "ok" and not before["complete"] else 0
        calls.append({"run_dir": str(run_dir), "design": design, "task": run.task.name, "trial": dict(run.trial),
                      "stop_epoch": run.train.stop_epoch, "from_epoch": resumed})  # fmt: skip
        rec = RunRecord(run_dir, task=run.task.name, design=design["name"], seed=run.seed, trial=run.trial)
        assert run.train.eval_split == "heldout" and run.train.progress is False
        g1 = design["strategies"][0]
        if rules.get("crash") and rules["crash"](design):
            rec.update(status="failed", error="RuntimeError: simulated crash", wall_time_s=0.01)
            return rec.data
        if rules.get("raise") and rules["raise"](design):
            raise RuntimeError("crash outside train_job's own handler")
        score = rules["score"](design, run.trial) if rules.get("score") else fake_score(design)
        score = float("nan") if (rules.get("nan") and rules["nan"](design)) else score
        # one held-out evaluation per epoch, the last one the best (half a point better each epoch); with
        # train.stop_epoch the first epochs only (a run asked again continues, as peftds.train.job does)
        n = run.train.epochs
        upto = run.train.stop_epoch or n
        epochs = [{"epoch": e, "accuracy": score - (n - e) / 2, "score": score - (n - e) / 2} for e in range(1, n + 1)]
        epochs = epochs[:upto]
        best = epochs[-1]
        ckpt = run_dir / CHECKPOINTS_DIR
        shutil.rmtree(ckpt, ignore_errors=True)
        if upto < n:  # a run stopped early keeps a checkpoint to continue from
            (ckpt / f"ckpt-{upto}").mkdir(parents=True)
            (ckpt / f"ckpt-{upto}" / "trainable.safetensors").write_bytes(b"0" * 1024)
        rec.update(status="ok", score=best["score"], best=best, last=best, epochs=epochs, wall_time_s=0.01,
                   trainable_params=1000, g1=g1, epochs_trained=upto, complete=upto >= n)  # fmt: skip
        return rec.data

    monkeypatch.setattr(training, "train_job", fake)
    return calls, rules


@pytest.fixture()
def args(data_dir):
    """The arguments of a small search in <tmp_path>/s (plus extra ones)."""

    def make(tmp_path, *extra):
        return ["model=tiny_roberta", "search=tiny", f"data.dir={data_dir}", f"search.dir={tmp_path / 's'}",
                "search.tasks=[sst2]", *extra]  # fmt: skip

    return make

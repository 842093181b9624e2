"""Fixtures of the compare tests: a stand-in for training that writes result.json and predictions.jsonl."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest

from peftds.files import PREDICTIONS_FILE

N_DEV = 40


def fake_accuracy(design: str, task: str, seed: int) -> float:
    """Deterministic per (design, task, seed): lora clearly best, the rest close together."""
    base = {"lora": 0.9, "full": 0.7}.get(design, 0.6)
    return base + (zlib.crc32(f"{design}{task}{seed}".encode()) % 5) / 100


@pytest.fixture()
def fake_training(monkeypatch):
    """Replace peftds.train.job.train_job by a stand-in (no model, no data): predictions of N_DEV examples."""
    import peftds.train.job as training
    from peftds.train.record import RunRecord, write_predictions

    calls: list[dict] = []
    rules: dict = {}

    def fake(run, run_dir=None):
        run_dir = Path(run_dir)
        name = run.design_config["name"]
        calls.append({"design": name, "task": run.task.name, "seed": run.seed, "run_dir": str(run_dir)})
        if rules.get("interrupt_after") is not None and len(calls) > rules["interrupt_after"]:
            raise KeyboardInterrupt
        assert run.train.eval_split == "validation" and run.data.heldout == 0
        rec = RunRecord(run_dir, task=run.task.name, design=name, seed=run.seed, trial=run.trial)
        refs = [i % 2 for i in range(N_DEV)]
        k = round(fake_accuracy(name, run.task.name, run.seed) * N_DEV)
        preds = [r if i < k else 1 - r for i, r in enumerate(refs)]
        write_predictions(run_dir / PREDICTIONS_FILE, preds, refs, 1)
        acc = 100.0 * k / N_DEV
        best = {"epoch": 1, "accuracy": acc, "score": acc}
        pct = 100.0 if name == "full" else 0.5
        rec.update(status="ok", score=acc, best=best, last=best, epochs=[best], wall_time_s=0.01,
                   trainable_params=1000, trainable_pct=pct, budget_params=1000)  # fmt: skip
        return rec.data

    monkeypatch.setattr(training, "train_job", fake)
    return calls, rules


@pytest.fixture()
def cargs(data_dir, tmp_path):
    """Arguments of a small comparison in <tmp_path>/c on the tiny BERT (two designs, SST-2 + RTE, 2 seeds)."""

    def make(*extra):
        return ["model=tiny_bert", f"data.dir={data_dir}", f"compare.dir={tmp_path / 'c'}",
                "compare.designs=[lora,full]", "compare.tasks=[sst2,rte]", "compare.seeds=[1,2]",
                "compare.bootstrap=200", *extra]  # fmt: skip

    return make


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

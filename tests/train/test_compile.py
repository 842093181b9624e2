"""peftds.train.compile: `train.compile=true` follows the eager loss trajectory and an epoch compiles once
per length bucket used; CompiledModel counts batch shapes and falls back to eager on endless recompiles."""

import contextlib
import math

import pytest
import torch

from peftds.train.compile import CompiledModel

pytestmark = pytest.mark.slow

TINY_T5 = ["model=tiny_t5", "model.shape.num_layers=2", "model.shape.num_decoder_layers=2"]
BUCKETS = [32, 128]


@contextlib.contextmanager
def one_thread():
    """One torch thread (steady timings on a shared machine), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def buckets_used(cfg):
    """Source lengths an epoch's batches pad to, computed apart from the trainer."""
    from peftds.data.batching import LengthGroupedBatchSampler, bucket_length
    from peftds.data.loading import encode, load_splits
    from peftds.data.tasks import Task
    from peftds.model.backbones import model_kind
    from peftds.train.setup import load_tokenizer

    task = Task.from_config(cfg.task)
    tok = load_tokenizer(cfg.model, True)
    assert model_kind("t5") == "seq2seq"
    train = encode(task, tok, load_splits(task, cfg.data)["train"], "seq2seq", task.max_source_len, task.max_target_len)
    lengths = train["length"]
    batches = LengthGroupedBatchSampler(lengths, int(cfg.train.batch_size), seed=int(cfg.seed)).batches(0)
    return sorted({bucket_length(max(lengths[i] for i in b), BUCKETS) for b in batches})


def test_compiled_training_matches_eager_and_compiles_once_per_bucket(compose_cfg, data_dir, tmp_path):
    from peftds.run_config import RunConfig
    from peftds.train.job import train_job

    over = [
        *TINY_T5,
        "design=lora",
        "task=sst2",
        f"data.dir={data_dir}",
        "data.max_train_samples=64",
        "data.max_eval_samples=16",
        "train.epochs=1",
        "train.logging_steps=1",
        "train.progress=false",
        "train.save_params=false",
        f"train.length_buckets={BUCKETS}",
    ]
    recs = {}
    with one_thread():
        for mode in ("false", "true"):
            cfg = compose_cfg(*over, f"train.compile={mode}")
            recs[mode] = train_job(RunConfig.from_composed(cfg), run_dir=tmp_path / f"compile_{mode}")
    eager, comp = recs["false"], recs["true"]
    assert eager["status"] == comp["status"] == "ok", (eager.get("error"), comp.get("error"))
    # the same loss trajectory, step by step (fp32, CPU)
    le, lc = eager["loss_history"], comp["loss_history"]
    assert len(le) == len(lc) == 8 and [s for s, _ in le] == [s for s, _ in lc]
    for (_, a), (_, b) in zip(le, lc):
        assert math.isclose(a, b, rel_tol=1e-4), (le, lc)
    # one compilation per length bucket the epoch used, no recompilation, no fallback
    stats = comp["compile"]
    used = buckets_used(cfg)
    assert len(used) >= 2  # the check means something
    assert stats["source_lengths"] == used
    assert stats["frames"] == stats["graphs"] == stats["batch_shapes"] == len(used)
    assert stats["recompiles"] == 0 and stats["fallback"] is None and stats["graph_breaks"] == 0
    assert "compile" not in eager


CALLS = {"n": 0}


class Unstable(torch.nn.Module):
    """A forward that reads Python state changing on every call: dynamo guards fail each time."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        CALLS["n"] += 1
        return self.lin(x) * CALLS["n"]


def test_compiled_model_counts_shapes_and_falls_back_to_eager():
    model = Unstable()
    cm = CompiledModel(model)
    x = torch.randn(2, 4)
    with one_thread(), pytest.warns(RuntimeWarning, match="recompiled"):
        first = cm(x)
        second = cm(x)  # same shape, guard fails -> recompiles once -> falls back
    assert cm.fallback and cm.stats()["recompiles"] >= 1
    third = cm(x)  # eager from now on: still correct
    assert torch.allclose(third, model.lin(x) * CALLS["n"])
    assert first.shape == second.shape == (2, 4)

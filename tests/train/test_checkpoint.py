"""Resumable checkpoints: a run stopped after epoch k (train.stop_epoch) or by a preemption signal mid-epoch
continues to exactly the result of an uninterrupted run; a checkpoint of another run or another schedule is
refused in one line; checkpoints no longer needed are deleted."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peftds.cli import main
from peftds.config.compose import compose
from peftds.files import CHECKPOINTS_DIR, RESULT_FILE, TRAINABLE_FILE, WEIGHTS_FILE
from peftds.run_config import RunConfig
from peftds.search.trial import finished_result
from peftds.train.checkpoint import (
    checkpoint_bytes,
    checkpoint_dirs,
    checkpoint_state,
    delete_checkpoints,
    horizon_change,
    latest_checkpoint,
)
from peftds.train.job import PREEMPTED_EXIT, train_job

PEFTDS = os.path.join(os.path.dirname(sys.executable), "peftds")
TINY = [
    "model=tiny_bert",
    "design=lora",
    "task=sst2",
    "data.max_train_samples=64",
    "data.max_eval_samples=64",
    "train.batch_size=8",
    "train.lr=5e-3",
    "train.logging_steps=1",
    "train.progress=false",
]


def train(run_dir: Path, *overrides: str) -> dict:
    return train_job(RunConfig.from_composed(compose([*TINY, *overrides])), run_dir=run_dir)


def outcome(run_dir: Path) -> tuple:
    """What must not depend on interruptions: per-epoch scores, every logged loss, the trained tensors."""
    rec = json.loads((run_dir / RESULT_FILE).read_text())
    weights = load_file(str(run_dir / "design" / WEIGHTS_FILE))
    return rec["epochs"], rec["loss_history"], {k: v.tolist() for k, v in sorted(weights.items())}


def test_stop_after_epoch_one_then_continue_equals_the_direct_run(tmp_path):
    direct = train(tmp_path / "direct", "train.epochs=3")
    part = train(tmp_path / "cont", "train.epochs=3", "train.stop_epoch=1")
    assert part["status"] == "ok" and part["epochs_trained"] == 1 and not part["complete"]
    assert len(checkpoint_dirs(tmp_path / "cont")) == 1  # one checkpoint per live run
    assert finished_result(tmp_path / "cont", epochs=1) is not None  # fidelity 1 is there ...
    assert finished_result(tmp_path / "cont") is None  # ... the whole schedule is not: a search continues it
    assert part["epochs"] == direct["epochs"][:1]
    two = train(tmp_path / "cont", "train.epochs=3", "train.stop_epoch=2")
    assert two["epochs_trained"] == 2 and two["resumed_from"]["epoch"] == 1.0
    assert train(tmp_path / "cont", "train.epochs=3", "train.stop_epoch=1") == two  # already there: nothing to do
    full = train(tmp_path / "cont", "train.epochs=3")
    assert full["status"] == "ok" and full["complete"] and full["resumed_from"]["epoch"] == 2.0
    assert full["steps"] == direct["steps"] == 24
    assert outcome(tmp_path / "cont") == outcome(tmp_path / "direct")  # bit for bit
    assert not (tmp_path / "cont" / CHECKPOINTS_DIR).exists()  # done and keep_checkpoint=false: deleted
    assert finished_result(tmp_path / "cont") is not None


def test_checkpoint_of_another_run_is_refused_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(run_dir, "train.epochs=3", "train.stop_epoch=1")
    before = (run_dir / RESULT_FILE).read_text()
    base = ["train", *TINY, f"hydra.run.dir={run_dir}"]
    assert main([*base, "train.epochs=3", "train.lr=1e-3"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "train.lr" in err[0] and "train.resume=false" in err[0]
    # a longer linear schedule would have given the trained steps other learning rates
    assert main([*base, "train.epochs=5"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "learning rate" in err[0] and "train.resume=false" in err[0]
    assert (run_dir / RESULT_FILE).read_text() == before  # nothing written, nothing lost
    assert main([*base, "train.epochs=5", "train.resume=false"]) == 0  # starting over is allowed
    capsys.readouterr()


def test_a_horizon_free_schedule_continues_to_more_epochs(tmp_path):
    """With a constant learning rate the trained steps do not depend on train.epochs: a finished 1-epoch run
    (checkpoint kept) continues to 3 epochs and equals a direct 3-epoch run."""
    const = ["train.scheduler=constant", "train.warmup_ratio=0"]
    train(tmp_path / "direct", *const, "train.epochs=3")
    one = train(tmp_path / "cont", *const, "train.epochs=1", "train.keep_checkpoint=true")
    assert one["complete"] and latest_checkpoint(tmp_path / "cont") is not None
    more = train(tmp_path / "cont", *const, "train.epochs=3")
    assert more["status"] == "ok" and more["resumed_from"]["step"] == 8
    assert outcome(tmp_path / "cont") == outcome(tmp_path / "direct")


def test_horizon_change_names_the_first_step_that_differs():
    state = {"train": {"epochs": 1, "max_steps": -1, "lr": 1e-3, "scheduler": "linear", "warmup_ratio": 0.0}}
    state.update(steps_per_epoch=10, global_step=10)
    assert horizon_change(state, {**state["train"], "epochs": 1}) is None
    why = horizon_change(state, {**state["train"], "epochs": 3})
    assert "step 2" in why  # step 1 has the peak rate under both horizons; step 2 decays more slowly in 3 epochs
    const = {**state["train"], "scheduler": "constant"}
    assert horizon_change({**state, "train": const}, {**const, "epochs": 3}) is None
    warm = {**const, "scheduler": "constant_with_warmup", "warmup_ratio": 0.1}
    assert horizon_change({**state, "train": warm}, {**warm, "epochs": 3}) is not None  # warmup is a share


def test_periodic_checkpoints_and_cleanup(tmp_path):
    rec = train(tmp_path, "train.epochs=2", "train.stop_epoch=1", "train.checkpoint_steps=3")
    assert rec["status"] == "ok" and len(checkpoint_dirs(tmp_path)) == 1  # older ones replaced
    ckpt = latest_checkpoint(tmp_path)
    assert checkpoint_state(ckpt)["global_step"] == 8 and (ckpt / TRAINABLE_FILE).exists()
    size = checkpoint_bytes(tmp_path)
    assert size > 0 and rec["checkpoint_bytes"] == size
    assert delete_checkpoints(tmp_path) == size and checkpoint_bytes(tmp_path) == 0
    assert train(tmp_path / "kept", "train.epochs=1", "train.keep_checkpoint=true")["checkpoint_bytes"] > 0


def wait_for_line(proc: subprocess.Popen, needle: str, after: str | None = None, timeout: float = 240) -> None:
    """Read the child's stdout until a line with `needle` (after a line with `after`, when given)."""
    deadline, seen_after = time.time() + timeout, after is None
    for line in proc.stdout:
        seen_after = seen_after or (after in line)
        if seen_after and needle in line:
            return
        assert time.time() < deadline, f"no {needle!r} line in time"
    raise AssertionError(f"the run ended before a {needle!r} line")


LONGER = ["data.max_train_samples=400", "train.epochs=2"]  # 50 steps an epoch: time to signal mid-epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train(run_dir, *LONGER)
    return run_dir


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM])
def test_a_preempted_run_continues_to_the_uninterrupted_result(tmp_path, uninterrupted, sig):
    """A real signal to `peftds train` in the middle of epoch 2: a checkpoint at the end of that step, exit
    status 3 and status `preempted`; the same run again (here in-process) finishes with the uninterrupted
    result."""
    run_dir = tmp_path / "run"
    argv = [PEFTDS, "train", *TINY, *LONGER, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # log lines arrive as the steps happen
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wait_for_line(proc, "'loss'", after="eval_score")  # epoch 1 evaluated, epoch 2 training
    proc.send_signal(sig)
    proc.stdout.read()
    assert proc.wait(timeout=120) == PREEMPTED_EXIT
    rec = json.loads((run_dir / RESULT_FILE).read_text())
    assert rec["status"] == "preempted" and signal.Signals(sig).name in rec["error"]
    state = checkpoint_state(latest_checkpoint(run_dir))
    assert 1 < state["epoch"] < 2 and len(state["epochs"]) == 1  # mid-epoch 2, epoch 1's score kept
    rec = train(run_dir, *LONGER)
    assert rec["status"] == "ok" and rec["resumed_from"]["step"] == state["global_step"]
    assert outcome(run_dir) == outcome(uninterrupted)


@pytest.mark.slow
def test_minilm_sst2_one_then_three_epochs_equals_three_epochs(tmp_path, data_dir):
    """The real model on real data, in the default regime (linear decay with warmup): epoch 1 of the 3-epoch
    schedule, continued to epoch 3, gives exactly the per-epoch scores of a direct 3-epoch run."""
    real = ["model=minilm_l6", "task=sst2", "data.max_train_samples=256", "data.max_eval_samples=200"]
    real += ["train.lr=3e-3", "train.batch_size=32", "train.epochs=3"]
    direct = train(tmp_path / "direct", *real)
    assert direct["epochs"][-1]["score"] > 60  # it learns (SST-2 dev: 50% a class)
    first = train(tmp_path / "cont", *real, "train.stop_epoch=1")
    assert first["epochs"] == direct["epochs"][:1]
    cont = train(tmp_path / "cont", *real)
    assert [e["score"] for e in cont["epochs"]] == [e["score"] for e in direct["epochs"]]
    assert outcome(tmp_path / "cont") == outcome(tmp_path / "direct")


def test_a_killed_run_continues_from_its_last_periodic_checkpoint(tmp_path, uninterrupted):
    """SIGKILL (no chance to save) in the middle of epoch 2 with train.checkpoint_steps=10: the rerun loses
    only the steps since the last periodic checkpoint and still ends with the uninterrupted result."""
    run_dir = tmp_path / "run"
    argv = [PEFTDS, "train", *TINY, *LONGER, "train.checkpoint_steps=10", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # a periodic (mid-epoch) checkpoint of epoch 2
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None and checkpoint_state(ckpt)["global_step"] in (60, 70, 80):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((run_dir / RESULT_FILE).read_text())["status"] == "running"  # killed: no record update
    step = checkpoint_state(latest_checkpoint(run_dir))["global_step"]
    assert step % 10 == 0 and 50 < step < 100
    rec = train(run_dir, *LONGER, "train.checkpoint_steps=10")
    assert rec["status"] == "ok" and rec["resumed_from"]["step"] == step
    assert outcome(run_dir) == outcome(uninterrupted)

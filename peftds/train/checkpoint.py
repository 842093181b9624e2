"""Resumable checkpoints of a training run: what lets a run stop (after an epoch, on a preemption signal)
and continue later with exactly the result of an uninterrupted run.

A run dir keeps at most one checkpoint, ``checkpoints/ckpt-<seq>/`` (the highest sequence number counts):

    trainable.safetensors   the trainable parameters (strategy parameters + task head), nothing frozen
    optimizer.pt            AdamW state (two moments per trainable parameter)
    scheduler.pt            the learning-rate scheduler's position
    rng_state.pth           python, numpy and torch (CPU, CUDA) RNG states
    trainer_state.json      HF TrainerState: global step, epoch, log history
    peftds_state.json       the run's own bookkeeping: per-epoch scores, first logged loss, steps per epoch,
                            the schedule's horizon and the config it belongs to

It is written into a temporary folder and renamed into place, then the older one is deleted, so a kill at
any moment leaves a complete checkpoint (two exist for the moment of a save). The HF Trainer restores
optimizer, scheduler, RNG states and the data position (the epoch's batch order comes from (seed, epoch),
batches already trained in the epoch are skipped) from the same layout it writes itself, except that the
weights are the trainable ones only (peftds.train.trainer.PeftdsTrainer).

A checkpoint belongs to a trajectory: the config minus the keys that change nothing a run computes
(COSMETIC_TRAIN_KEYS, including the fidelity `train.stop_epoch`) and minus the horizon (`train.epochs`,
`train.max_steps`). A run may continue from it when the trajectories are equal and every step already
trained had the same learning rate under the new horizon as under the old one (:func:`horizon_change`).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn

from peftds.config.sections import COSMETIC_DATA_KEYS, COSMETIC_MODEL_KEYS, COSMETIC_TRAIN_KEYS
from peftds.errors import PeftdsError
from peftds.files import CHECKPOINT_STATE, CHECKPOINTS_DIR, TRAINABLE_FILE, read_json, write_json_atomic

CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)$")
HORIZON_TRAIN_KEYS = ("epochs", "max_steps")  # the schedule's length: checked step by step, not as a key
# the config sections a run's result depends on (the rest: other commands' settings, a trial's labels)
TRAJECTORY_SECTIONS = ("model", "budget", "design", "task", "data", "train", "seed")
PREEMPTION_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)  # submitit / SLURM's warning signal, a scheduler's stop


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run dir, oldest first (a temporary folder is never one)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run dir (None when it has none)."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's peftds bookkeeping (peftds_state.json)."""
    state = read_json(Path(checkpoint) / CHECKPOINT_STATE)
    if state is None:
        raise PeftdsError(f"checkpoint {checkpoint} has no readable {CHECKPOINT_STATE}: train.resume=false starts over")
    return state


def write_checkpoint_state(folder: Path, state: Mapping[str, Any]) -> None:
    write_json_atomic(Path(folder) / CHECKPOINT_STATE, dict(state))


def checkpoint_bytes(run_dir: Path) -> int:
    """Bytes the run dir's checkpoints take on disk."""
    root = checkpoint_root(run_dir)
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0


def delete_checkpoints(run_dir: Path) -> int:
    """Delete a run's checkpoints (a trial no longer needed: it will not be continued); returns the bytes freed."""
    freed = checkpoint_bytes(run_dir)
    shutil.rmtree(checkpoint_root(run_dir), ignore_errors=True)
    return freed


def fsync_tree(folder: Path) -> None:
    """Flush every file of a folder to disk (a rename after it must not publish half-written files)."""
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def writing_checkpoint(run_dir: Path) -> Iterator[Path]:
    """A temporary folder to write a checkpoint into; on success it becomes the run's only checkpoint."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    older = checkpoint_dirs(run_dir)
    seq = int(CHECKPOINT_NAME.match(older[-1].name).group(1)) + 1 if older else 1
    tmp = root / f".tmp-ckpt-{seq}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        os.replace(tmp, root / f"ckpt-{seq:06d}")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in older:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-ckpt-*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save_file

    save_file(trainable_tensors(model), str(Path(folder) / TRAINABLE_FILE))


def load_trainable(model: nn.Module, folder: Path) -> None:
    """Load a checkpoint's trainable parameters into `model` (the same names must be trainable)."""
    from safetensors.torch import load_file

    saved = load_file(str(Path(folder) / TRAINABLE_FILE))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != set(params):
        diff = sorted(set(saved) ^ set(params))
        raise PeftdsError(f"checkpoint {folder} does not fit this model (parameters differ: {', '.join(diff[:3])})")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name].to(p.device, p.dtype))


def trajectory(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a run's resolved config that decide what its steps compute (the horizon aside)."""
    out = {k: config.get(k) for k in TRAJECTORY_SECTIONS}
    drop = {
        "design": {"name"},  # a label: one design may be written under several names (a search's stages)
        "model": COSMETIC_MODEL_KEYS,
        "data": COSMETIC_DATA_KEYS,
        "train": {*COSMETIC_TRAIN_KEYS, *HORIZON_TRAIN_KEYS},
    }
    for section, keys in drop.items():
        if isinstance(out.get(section), Mapping):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def first_difference(old: Any, new: Any, where: str = "") -> str | None:
    """The first dotted key whose value differs between two nested configs, as 'key: old -> new'."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for k in sorted(set(old) | set(new), key=str):
            got = first_difference(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
            if got:
                return got
        return None
    return None if old == new else f"{where}: {old!r} -> {new!r}"


def total_steps(train: Mapping[str, Any], steps_per_epoch: int) -> int:
    """Optimizer steps of the whole schedule (HF Trainer's rule: max_steps, else epochs x steps per epoch)."""
    max_steps = int(train.get("max_steps") or -1)
    return max_steps if max_steps > 0 else math.ceil(int(train["epochs"]) * steps_per_epoch)


def learning_rates(train: Mapping[str, Any], total: int, steps: int) -> list[float]:
    """The learning rate of each of the first `steps` optimizer steps of a `total`-step schedule (HF's
    schedulers; warmup_ratio is a share of `total`, rounded up as HF does)."""
    from transformers import get_scheduler

    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=float(train["lr"]))
    warmup = math.ceil(total * float(train.get("warmup_ratio") or 0.0))
    sched = get_scheduler(str(train["scheduler"]), opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(steps):
        out.append(float(opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return out


def horizon_change(state: Mapping[str, Any], train: Mapping[str, Any]) -> str | None:
    """Why a checkpoint cannot continue under `train`'s horizon (None when it can): a step it already trained
    would have had another learning rate (e.g. a linear decay stretched to more epochs)."""
    old_train, steps_per_epoch, done = state["train"], int(state["steps_per_epoch"]), int(state["global_step"])
    old_total, new_total = total_steps(old_train, steps_per_epoch), total_steps(train, steps_per_epoch)
    if old_total == new_total:
        return None
    old, new = learning_rates(old_train, old_total, done), learning_rates(train, new_total, done)
    for step, (a, b) in enumerate(zip(old, new, strict=True)):
        if a != b:
            return (
                f"its {done} trained steps follow a {old_total}-step {old_train['scheduler']} schedule and step "
                f"{step + 1} would have had learning rate {b:.3g} instead of {a:.3g} in a {new_total}-step one"
            )
    return None


def continuation_problem(state: Mapping[str, Any], config: Mapping[str, Any]) -> str | None:
    """Why the run of `config` cannot continue from a checkpoint with this bookkeeping (None when it can)."""
    diff = first_difference(state["trajectory"], trajectory(config))
    if diff:
        return f"it holds a checkpoint of another run ({diff})"
    why = horizon_change(state, config["train"])
    return f"it holds a checkpoint that cannot be continued to this schedule: {why}" if why else None


class PreemptionGuard:
    """While a run trains: SIGUSR2 (submitit's and SLURM's warning before preemption or the time limit) and
    SIGTERM do not kill the process; they ask the run to save a checkpoint at the end of the current
    optimizer step and stop (`received` names the signal). Only the main thread can take signals: elsewhere
    the guard does nothing. `pass_on()` then hands the signal to the handler that was there before (e.g.
    submitit's, which requeues the job)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in PREEMPTION_SIGNALS:
                self.previous[sig] = signal.signal(sig, self.on_signal)
        return self

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.received).name if self.received else None

    def pass_on(self) -> None:
        """Call the handler the received signal had before the guard (when it was a Python function)."""
        handler = self.previous.get(self.received) if self.received else None
        if callable(handler):
            handler(self.received, None)

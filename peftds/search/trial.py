"""One search trial: the Hydra task function that trains a sampled design on one task, and its record.

Hydra launchers dispatch `trial_job` (joblib pickles it: it stays a module-level function); it runs an
ordinary `peftds train` job (peftds.train.job.train_job) in the Hydra job dir and leaves result.json there.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftds.config.schema import convert
from peftds.config.sections import SearchConfig
from peftds.errors import PeftdsError
from peftds.files import GPU_SLOT_LOCK, RESULT_FILE, TRIAL_LOG, read_json, try_lock_forever, write_json_atomic
from peftds.run_config import RunConfig
from peftds.search.designs import Sample
from peftds.train import job

FINISHED = ("ok", "failed", "diverged")
RETURNED_KEYS = ("status", "error", "score", "best", "wall_time_s", "trainable_params", "device", "run_dir")


@dataclass
class Trial:
    """A (design, task) training; `keys` are the table rows it fills (a design may recur across options/stages)."""

    trial_id: str
    task: str
    sample: Sample
    keys: list[tuple[str, str, int, str]] = field(default_factory=list)


def trial_id(digest: str, task: str, seed: int, regime_hash: str) -> str:
    """A trial's identity: design digest, task, seed and training regime (existing search dirs depend on it)."""
    return f"{digest}-{task}-s{seed}-r{regime_hash}"


def read_result(trial_dir: Path) -> dict[str, Any] | None:
    """A trial's result.json (None while missing or unreadable)."""
    return read_json(Path(trial_dir) / RESULT_FILE)


def finished_result(trial_dir: Path) -> dict[str, Any] | None:
    """The record of a finished (ok or failed) trial, None for one not run yet or interrupted."""
    rec = read_result(trial_dir)
    if rec is None or rec.get("status") not in FINISHED:
        return None
    return rec


def effective_status(rec: Mapping[str, Any] | None) -> str | None:
    """A record's status as the search counts it: a diverged run, and an `ok` run whose score is missing or
    not finite, count as failed (the error says why)."""
    if rec is None:
        return None
    status = rec.get("status")
    if status == "diverged":
        return "failed"
    score = rec.get("score")
    if status == "ok" and not (isinstance(score, int | float) and math.isfinite(score)):
        return "failed"
    return status


def trial_job(cfg: Any) -> dict[str, Any]:
    """The Hydra task function of a search trial: an ordinary peftds train job in the Hydra job dir, quiet
    (its output goes to trial.out), plus the device it ran on."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)  # <search dir>/trials/<trial id>
    run = RunConfig.from_composed(cfg)  # this job's entry: below here, typed objects only
    settings = convert(SearchConfig, cfg.get("search"))
    if settings.gpu_slots:
        claim_gpu_slot(settings.gpu_slots, run_dir.parent.parent)
    if settings.trial_threads:
        torch.set_num_threads(settings.trial_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    with (
        open(run_dir / TRIAL_LOG, "a") as log,
        quiet_transformers(),
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        rec = job.train_job(run, run_dir)  # looked up at call time (tests stand in for training here)
    rec["device"] = device
    write_json_atomic(run_dir / RESULT_FILE, rec)
    return {k: rec.get(k) for k in RETURNED_KEYS}


# the slot this worker process holds (and the open lock file that holds it) for the life of the process
GPU_SLOT: dict[str, Any] = {}


def claim_gpu_slot(slots: int, lock_dir: Path, timeout_s: float = 600.0) -> int:
    """One GPU per worker process (hydra/launcher=joblib with n_jobs = search.gpu_slots): the first
    trial a process runs takes a free slot (an flock on <search dir>/.gpu_slot<i>.lock, held for the
    life of the process) and restricts CUDA to that device before CUDA is initialised."""
    if "slot" in GPU_SLOT:
        return GPU_SLOT["slot"]
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible or [str(i) for i in range(slots)]
    deadline = time.time() + timeout_s
    while True:
        for i in range(min(slots, len(devices))):
            fh = try_lock_forever(Path(lock_dir) / GPU_SLOT_LOCK.format(i))
            if fh is None:
                continue
            GPU_SLOT.update(slot=i, fh=fh)
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[i]
            return i
        if time.time() > deadline:
            raise PeftdsError(f"no free GPU slot among {slots} after {timeout_s:.0f}s (more workers than slots?)")
        time.sleep(1.0)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers logs errors only while a trial runs (its warnings would flood trial.out)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def job_error(ret: Any) -> str | None:
    """The error of a job a launcher returned (a hydra.core.utils.JobReturn); None when it completed."""
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.COMPLETED:
        return None
    if ret.status == JobStatus.UNKNOWN:
        return "the launcher returned no result for this job"
    try:
        # .return_value re-raises the job's exception (and writes a line about it to stderr: the
        # error is recorded in the trial's row instead)
        with contextlib.redirect_stderr(io.StringIO()):
            ret.return_value  # noqa: B018
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return f"job status {ret.status.name}"


def launcher_error(e: BaseException) -> str:
    """One line for a launcher that failed as a whole (e.g. a submitit job died)."""
    text = str(e).strip()
    return f"launcher error: {type(e).__name__}: {text.splitlines()[0] if text else ''}"

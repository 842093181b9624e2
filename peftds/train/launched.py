"""A training job run by a Hydra launcher (a search trial, a compare run): one GPU per worker process,
quiet output in the job dir, the record written where the launcher's caller reads it."""

from __future__ import annotations

import contextlib
import faulthandler
import io
import os
import resource
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from peftds.errors import PeftdsError
from peftds.files import (
    GPU_SLOT_LOCK,
    RESULT_FILE,
    RUN_LOCK,
    TRIAL_LOG,
    read_json,
    run_holder,
    run_lock,
    try_lock_forever,
    write_json_atomic,
)
from peftds.run_config import RunConfig
from peftds.train import job

# the slot this worker process holds (and the open lock file that holds it) for the life of the process
GPU_SLOT: dict[str, Any] = {}


def claim_gpu_slot(slots: int, lock_dir: Path, timeout_s: float = 600.0) -> int:
    """One GPU per worker process (hydra/launcher=joblib with n_jobs = slots): the first job a process runs
    takes a free slot (an flock on <lock_dir>/.gpu_slot<i>.lock, held for the life of the process) and
    restricts CUDA to that device before CUDA is initialised."""
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
    """transformers logs errors only while a launched job runs (its warnings would flood the job's log)."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)


def run_launched(cfg: Any, *, gpu_slots: int | None, threads: int | None) -> dict[str, Any]:
    """Train the job this Hydra job composed (`cfg`, its entry: converted to a RunConfig here) in the Hydra
    job dir, its output in trial.out; returns the record (also in result.json) with the device it ran on.
    GPU slot locks live two levels up (<dir>/<runs or trials>/<id>)."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    run = RunConfig.from_composed(cfg)
    if gpu_slots and "SLURM_JOB_ID" not in os.environ:  # on SLURM the scheduler gave the job its GPU
        claim_gpu_slot(gpu_slots, run_dir.parent.parent)
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    with run_lock(run_dir / RUN_LOCK) as mine:
        if not mine:  # a launch of a run that is still training elsewhere (e.g. resumed while a job runs on)
            holder = run_holder(run_dir / RUN_LOCK)
            return {"status": "running", "error": f"being trained by {holder}", "run_dir": str(run_dir)}
        with (
            open(run_dir / TRIAL_LOG, "a") as log,
            quiet_transformers(),
            contextlib.redirect_stdout(log),
            contextlib.redirect_stderr(log),
            fatal_errors_to(log),
        ):
            rec = job.train_job(run, run_dir)  # looked up at call time (tests stand in for training here)
        rec["device"] = device
        if rec.get("status") == "failed" and (limit := memory_limit_note()):
            rec["error"] = f"{rec.get('error')} ({limit})"
        write_json_atomic(run_dir / RESULT_FILE, rec)
        if rec.get("status") == "preempted" and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            # stopped by SIGTERM (scontrol requeue, scancel) after its checkpoint: the job ends without a result,
            # so a requeued job's run continues from the checkpoint and gives it, and a cancelled one stays pending
            raise SystemExit(f"trial preempted: {rec.get('error')}")
    return rec


def memory_limit_note(margin_mb: float = 256.0) -> str:
    """A note when this process is at its address-space limit (RLIMIT_AS): then an allocation failed, whatever
    the library's error says (oneDNN: "could not create a primitive"); empty otherwise."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return ""
    with open("/proc/self/status") as fh:
        used = next((int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize")), 0)
    if used + margin_mb * 2**20 < soft:
        return ""
    return f"out of memory: the process is at its address-space limit of {soft / 2**20:.0f} MiB"


@contextlib.contextmanager
def fatal_errors_to(log: Any) -> Iterator[None]:
    """A crash of the process (a segfault, an abort) leaves its Python traceback in the run's log."""
    was = faulthandler.is_enabled()
    faulthandler.enable(file=log)
    try:
        yield
    finally:
        faulthandler.disable()
        if was:
            faulthandler.enable()


def wait_until_stopped(run_dirs: list[Path], poll_s: float = 1.0) -> None:
    """Wait while any of these runs is still being trained by some process (its run lock is held)."""
    while any(run_holder(Path(d) / RUN_LOCK) for d in run_dirs):
        time.sleep(poll_s)


def lost_run_line(run_dir: Path, launcher_failure: str) -> str:
    """Why a launched run ended without a record, in one line: the fatal error its process logged (a segfault,
    an abort), a process that died without one (SIGKILL, the out-of-memory killer), or a run that never
    started (the launcher's error)."""
    log = Path(run_dir) / TRIAL_LOG
    fatal = []
    if log.is_file():
        fatal = [line.strip() for line in log.read_text(errors="replace").splitlines() if "Fatal Python error" in line]
    rec = read_json(Path(run_dir) / RESULT_FILE)
    if fatal:
        return f"its process died: {fatal[-1]}"
    if rec is not None and rec.get("status") == "running":
        return "its process died without a Python error (killed: SIGKILL, the out-of-memory killer, a lost node)"
    return f"it did not run ({launcher_failure})"


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


def launch_batch(
    launcher: Any, overrides: list[list[str]], job_idx: int, run_dirs: list[Path], finished: Callable[[Path], bool]
) -> tuple[dict[int, str], dict[int, str]]:
    """Run one batch of jobs through a Hydra launcher. Returns (lost, failed) by job position: a line for each
    job whose process died (the launcher failed as a whole; the run stays pending), and the error of each job
    that failed without writing its own failed record. A job that returned without a finished record is in
    neither (it stays pending). `finished(run_dir)`: whether a run dir holds the record the batch asked for."""
    try:
        rets: list[Any] = launcher.launch(overrides, job_idx)
        failure = None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # the launcher itself failed (e.g. a submitit job died)
        rets, failure = [None] * len(overrides), launcher_error(e)
    if failure:  # other jobs of the batch may still be training: their records decide, not the failure
        wait_until_stopped(run_dirs)
    lost, failed = {}, {}
    for i, (run_dir, ret) in enumerate(zip(run_dirs, rets)):
        if finished(run_dir):
            continue
        if ret is None:
            lost[i] = lost_run_line(run_dir, failure or "")
        elif (err := job_error(ret)) is not None:
            failed[i] = err
    return lost, failed

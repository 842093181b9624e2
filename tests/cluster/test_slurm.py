"""A search and a comparison on a real (one-node) SLURM cluster through hydra/launcher=submitit_slurm: trials run
as array jobs of the cluster, accounted by slurmdbd, and give the same scores as the same stage run locally."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from peftds.compare.runner import run_compare
from peftds.files import read_json
from peftds.search.launch import run_search
from tests.search.helpers import quiet, rows

REPO = Path(__file__).resolve().parents[2]
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=main", "hydra.launcher.timeout_min=10",
         "hydra.launcher.cpus_per_task=1"]  # fmt: skip


def sacct_jobs(name: str) -> list[tuple[str, str]]:
    """(job id, state) of the cluster's jobs named `name` (allocations only, not their steps)."""
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,State", f"--name={name}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    return [tuple(line.split("|")) for line in out.splitlines() if line]


def settled_jobs(name: str, before: set[str], timeout_s: float = 60.0) -> list[tuple[str, str]]:
    """The jobs named `name` that are not in `before`, once none of them is still running (a job's result
    file is written just before its process exits)."""
    deadline = time.time() + timeout_s
    while True:
        jobs = [(j, s) for j, s in sacct_jobs(name) if j not in before]
        if time.time() > deadline or not any(s in ("PENDING", "RUNNING", "COMPLETING") for _, s in jobs):
            return jobs
        time.sleep(1)


def scores(table: list[dict], key: str) -> dict[str, tuple[str, str]]:
    return {r[key]: (r["status"], r["score"]) for r in table}


def losses(run_root: Path, table: list[dict], key: str) -> dict[str, list]:
    """Each run's logged training losses (every step): far more telling than a tiny model's held-out score."""
    return {r[key]: read_json(run_root / r[key] / "result.json")["loss_history"] for r in table}


def test_search_on_slurm_scores_like_local(slurm, tmp_path, data_dir):
    base = ["model=tiny_bert", "search=tiny", f"data.dir={data_dir}", "stage=allocation",
            "~stage.options.increasing", "search.trial_threads=1"]  # fmt: skip
    assert run_search([*base, f"search.dir={tmp_path / 'local'}"], echo=quiet) == 0
    before = {j for j, _ in sacct_jobs("search")}
    # search.gpu_slots=2: each trial job asks for one of the node's two (stand-in) GPUs, two at once
    assert run_search([*base, f"search.dir={tmp_path / 'slurm'}", "search.gpu_slots=2", *SLURM], echo=quiet) == 0
    local = rows(tmp_path / "local" / "allocation" / "trials.csv")
    remote = rows(tmp_path / "slurm" / "allocation" / "trials.csv")
    assert len(remote) == 2 and {r["status"] for r in remote} == {"ok"}
    assert scores(remote, "trial_id") == scores(local, "trial_id")  # same trials, same held-out scores
    assert losses(tmp_path / "slurm" / "trials", remote, "trial_id") == losses(tmp_path / "local" / "trials", local,
                                                                              "trial_id")  # fmt: skip
    jobs = settled_jobs("search", before)
    assert len(jobs) == 2 and {s for _, s in jobs} == {"COMPLETED"}
    assert len({j.split("_")[0] for j, _ in jobs}) == 1  # one array job, one task per trial
    tres = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "AllocTRES", "-j", jobs[0][0].split("_")[0]],
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()  # fmt: skip
    assert len(tres) == 2 and all("gres/gpu=1" in t for t in tres), tres


def test_compare_on_slurm_scores_like_local(slurm, tmp_path, data_dir):
    base = ["model=tiny_bert", f"data.dir={data_dir}", "compare.designs=[lora,bitfit]", "compare.tasks=[sst2]",
            "compare.seeds=[1]", "data.max_train_samples=32", "data.max_eval_samples=32", "train.epochs=1",
            "compare.threads=1", "compare.bootstrap=50"]  # fmt: skip
    assert run_compare([*base, f"compare.dir={tmp_path / 'local'}"], echo=quiet) == 0
    before = {j for j, _ in sacct_jobs("compare")}
    assert run_compare([*base, f"compare.dir={tmp_path / 'slurm'}", *SLURM], echo=quiet) == 0
    jobs = settled_jobs("compare", before)
    assert len(jobs) == 2 and {s for _, s in jobs} == {"COMPLETED"}
    local, remote = rows(tmp_path / "local" / "runs.csv"), rows(tmp_path / "slurm" / "runs.csv")
    assert len(remote) == 2 and {r["status"] for r in remote} == {"ok"}
    assert scores(remote, "run_id") == scores(local, "run_id")
    assert losses(tmp_path / "slurm" / "runs", remote, "run_id") == losses(tmp_path / "local" / "runs", local, "run_id")
    assert (tmp_path / "slurm" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()


def training_trial(trials: Path) -> dict | None:
    """The record of a trial whose model is built and that trains now (None while there is none)."""
    for path in trials.glob("*/result.json"):
        rec = read_json(path)
        if rec and rec.get("status") == "running" and "plan" in rec and not rec.get("resumed_from"):
            return rec
    return None


def preempt_by_urgent_job(job_id: str) -> None:
    """A job of the higher-priority partition that needs the whole node: SLURM preempts the trial's job."""
    subprocess.run(["sbatch", "-p", "urgent", "--exclusive", "-J", "urgent", "-o", "/dev/null", "--wrap", "sleep 2"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip


def requeue(job_id: str) -> None:
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, timeout=60)


def time_limit(job_id: str, minutes: int) -> None:
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={minutes}"], check=True, capture_output=True,
                   timeout=60)  # fmt: skip


def job_process(job_id: str) -> int:
    """The pid of the job's (or array task's) python process: submitit runs the trial in it."""
    array_job, _, task = job_id.partition("_")
    want = {f"SLURM_ARRAY_JOB_ID={array_job}", f"SLURM_ARRAY_TASK_ID={task}"} if task else {f"SLURM_JOB_ID={job_id}"}
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().decode(errors="replace").split("\0"))
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if want <= env and "submitit" in cmd and "srun" not in cmd.split("\0")[0]:
            return int(proc.name)
    raise AssertionError(f"no process of job {job_id}")


def signalled(pid: int) -> bool:
    """Whether a stopped process got USR2: pending, or already running on (slurmstepd continues the tasks it
    signals), or gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(pending & (1 << (signal.SIGUSR2 - 1))) or not fields["State"].strip().startswith("T")


def reach_time_limit(job_id: str) -> None:
    """Bring the running job's time limit to one minute (SLURM's smallest): at its next time-limit check (every
    30 s) SLURM sends the warning signal submitit asked for (USR2, signal_delay_s = 120 s before the limit). The
    trial's process is stopped meanwhile and continued once the signal is pending, so that the signal lands in
    the middle of training however short the tiny trial is."""
    pid = job_process(job_id)
    os.kill(pid, signal.SIGSTOP)
    try:
        time_limit(job_id, 1)
        deadline = time.time() + 90
        while not signalled(pid):
            assert time.time() < deadline, "SLURM sent no warning signal within 90 s of the one-minute limit"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


# how -> (what the test does, the job's time limit in minutes, how submitit classes the USR2: None for SIGTERM).
# submitit counts a USR2 past min(0.8 limit, limit - 10 min) of the job's run as a time-out (so any USR2 in a job
# of at most 10 minutes) and requeues time-outs max_num_timeout times at most (hydra's default 0: never)
INTERRUPTIONS = {
    "preemption by a higher-priority partition": (preempt_by_urgent_job, 120, "preempted"),
    "scontrol requeue": (requeue, 120, None),
    "the job's time limit": (reach_time_limit, 10, "timed-out"),
}
BASE = ["model=tiny_bert", "search=tiny", "stage=allocation", "~stage.options.increasing", "~stage.options.decreasing",
        "search.trial_threads=1", "train.max_steps=-1", "search.epochs=2", "data.max_train_samples=800"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> dict:
    """The trial of the interruption tests, trained locally without interruption (its row)."""
    sdir = tmp_path_factory.mktemp("local") / "s"
    assert run_search([*BASE, f"data.dir={data_dir}", f"search.dir={sdir}"], echo=quiet) == 0
    (row,) = rows(sdir / "allocation" / "trials.csv")
    return row


@pytest.mark.parametrize("how", list(INTERRUPTIONS))
def test_interrupted_trial_resumes_to_the_uninterrupted_score(how, slurm, tmp_path, data_dir, uninterrupted):
    """A trial stopped mid-training (SIGUSR2 at preemption and at the time-limit warning: submitit requeues it;
    SIGTERM from scontrol requeue) saves a checkpoint, is requeued, continues from it and ends with the score of
    an uninterrupted run. The time-limit case restores a long limit once the trial has stopped, so that the
    requeued run is not warned again at once (its limit would still be one minute)."""
    interrupt, minutes, classed = INTERRUPTIONS[how]
    args = [*BASE, f"data.dir={data_dir}", f"search.dir={tmp_path / 'slurm'}", *SLURM,
            f"hydra.launcher.timeout_min={minutes}", "hydra.launcher.max_num_timeout=2"]  # fmt: skip
    log = tmp_path / "search.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "peftds.cli", "search", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    trials = tmp_path / "slurm" / "trials"
    deadline = time.time() + 300
    while training_trial(trials) is None and proc.poll() is None:
        assert time.time() < deadline, log.read_text()
        time.sleep(0.1)
    job = next(j for j, s in sacct_jobs("search") if s == "RUNNING")
    t_stop = time.time()
    interrupt(job)
    if interrupt is reach_time_limit:  # the requeued run gets its whole limit back
        while not any((read_json(p) or {}).get("status") == "preempted" for p in trials.glob("*/result.json")):
            assert time.time() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        time_limit(job, minutes)
    assert proc.wait(timeout=600) == 0, log.read_text()
    (remote,) = rows(tmp_path / "slurm" / "allocation" / "trials.csv")
    final = read_json(trials / remote["trial_id"] / "result.json")
    assert final["status"] == "ok" and final.get("resumed_from"), final.get("status")  # continued, not restarted
    assert (remote["trial_id"], remote["score"]) == (uninterrupted["trial_id"], uninterrupted["score"])
    runs = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State,Start,End", "-j", job.split("_")[0]],
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()  # fmt: skip
    assert len(runs) >= 2, runs  # the job ran twice: interrupted, then requeued
    (_, _, stopped), (_, restarted, _) = runs[-2].split("|"), runs[-1].split("|")
    gap = (datetime.fromisoformat(restarted) - datetime.fromisoformat(stopped)).total_seconds()
    if classed:
        job_log = "".join(p.read_text() for p in (tmp_path / "slurm" / ".submitit").glob("*/*_log.err"))
        assert f"Caught signal SIGUSR2 on {socket.gethostname()}: this job is {classed}" in job_log
    print(f"\n{how}: resumed from {final['resumed_from']}; {gap:.0f} s from the stop to the requeued start; "
          f"{time.time() - t_stop:.0f} s from the signal to the finished stage")  # fmt: skip

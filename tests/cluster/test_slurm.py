"""A search and a comparison on a real (one-node) SLURM cluster through hydra/launcher=submitit_slurm: trials run
as array jobs of the cluster, accounted by slurmdbd, and give the same scores as the same stage run locally."""

from __future__ import annotations

import subprocess
import time

from peftds.compare.runner import run_compare
from peftds.search.launch import run_search
from tests.search.helpers import quiet, rows

SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.partition=main", "hydra.launcher.timeout_min=10",
         "hydra.launcher.cpus_per_task=1"]  # fmt: skip


def sacct_jobs(name: str) -> list[tuple[str, str]]:
    """(job id, state) of the cluster's jobs named `name` (allocations only, not their steps)."""
    out = subprocess.run(["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,State", f"--name={name}"],
                         capture_output=True, text=True, check=True, timeout=60).stdout  # fmt: skip
    return [tuple(line.split("|")) for line in out.split() if line]


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
    assert (tmp_path / "slurm" / "table.md").read_text() == (tmp_path / "local" / "table.md").read_text()

"""The cluster tests run against the one-node SLURM cluster of scripts/slurm_local.sh (`make test-slurm` brings
it up, runs them and takes it down). Without PEFTDS_SLURM=1 they are skipped with a reason; with it, a cluster
that does not answer fails them in one line: they never pass without a cluster."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

WANTED = os.environ.get("PEFTDS_SLURM") == "1"


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="cluster tests: run `make test-slurm` (a local SLURM cluster, root, Debian 12)")
    for item in items:
        if "tests/cluster/" in str(item.fspath) and not WANTED:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def slurm() -> str:
    """The SLURM_CONF of the running local cluster (a failure when it does not answer)."""
    conf = os.environ.get("SLURM_CONF")
    if not conf or shutil.which("sbatch") is None:
        pytest.fail("PEFTDS_SLURM=1 but no SLURM_CONF / sbatch: bring the cluster up with scripts/slurm_local.sh up")
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or "UP" not in ping.stdout:
        pytest.fail(f"the SLURM controller does not answer: {(ping.stdout + ping.stderr).strip()[:200]}")
    return conf

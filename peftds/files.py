"""Run-dir file names, atomic writes and file locks: the one home of everything a run leaves on disk."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from peftds.errors import PeftdsError

# A training run (`peftds train`, a search trial, a compare run)
RESULT_FILE = "result.json"  # the run record, rewritten as the run goes
TRIAL_LOG = "trial.out"  # a search trial's captured stdout/stderr
RUN_LOCK = ".run.lock"  # held by the process training a launched run (its content: "<host> <pid>")
DESIGN_DIR = "design"  # trained strategy params + plan inside a run dir
PLAN_FILE = "plan.yaml"
WEIGHTS_FILE = "strategy_params.safetensors"
PREDICTIONS_FILE = "predictions.jsonl"  # per-example dev predictions of the scored split
CHECKPOINTS_DIR = "checkpoints"  # a run's resumable state: checkpoints/step-<global step>/ (the newest counts)
CHECKPOINT_STATE = "peftds_state.json"  # inside a checkpoint: the run's own bookkeeping (epochs, config, ...)
TRAINABLE_FILE = "trainable.safetensors"  # inside a checkpoint: the trainable parameters (strategies + head)
FAILED_RESULT = "result.failed.json"  # a failed trial's record, set aside by search.retry_failed
# A search dir
SEARCH_STATE = "search.json"
SEARCH_LOCK = ".search.lock"
CONF_SUBDIR = "conf"  # config groups the search writes (sampled designs, copied space/stage files)
DESIGN_CONF_DIR = "conf/design"
GPU_SLOT_LOCK = ".gpu_slot{}.lock"
RACE_FILE = "race.json"  # a racing stage's rounds: survivors, eliminations and their bounds
DECISION_FILE = "decision.json"  # a stage's decision settings and verdict (peftds.search.decision)
REPLAY_JSON = "replay.json"
REPLAY_MD = "replay.md"
REPLAY_PLOT = "replay.png"
SEARCH_CONFIG = "config.yaml"
TRIALS_DIR = "trials"
STAGE_FILE = "stage.json"
TRIALS_FILE = "trials.csv"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
SPACE_NEXT = "space_next.yaml"
SPACE_FINAL = "space_final.yaml"
BEST_DESIGN = "best_design.yaml"
EDF_PLOT = "edf.png"
SCORES_PLOT = "scores.png"


def process_umask() -> int:
    """The process umask (read once at import: setting it to read it is not thread-safe)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = process_umask()  # mkstemp creates files 0600; a written file gets the usual permissions


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write via a temporary file and os.replace: a kill never leaves a half-written file. The temporary
    file's name is unique (mkstemp), so two threads or processes writing the same file never share it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str))


def save_figure(plt: Any, fig: Any, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # a legend outside the axes stays in the file
    plt.close(fig)
    return Path(path)


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON file's content, or None when it is missing or unreadable (e.g. a run still starting)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


@contextlib.contextmanager
def file_lock(path: str | Path, *, wait: bool = True, busy: str | None = None) -> Iterator[None]:
    """An exclusive flock on `path` for the block; with wait=False a held lock raises PeftdsError(busy)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PeftdsError(busy or f"{path} is locked by another process") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def run_lock(path: str | Path) -> Iterator[bool]:
    """Hold the run lock of a launched run for the block, its holder ("<host> <pid>") written in it; yields
    False (and holds nothing) when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            fh.truncate(0)
            fh.write(f"{socket.gethostname()} {os.getpid()}\n")
            fh.flush()
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_holder(path: str | Path) -> str | None:
    """The holder ("<host> <pid>") of a run lock; None when no process holds it."""
    try:
        fh = open(path)  # noqa: SIM115 - closed below, after the probe
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def try_lock_forever(path: str | Path) -> Any | None:
    """Take an flock without waiting and keep it for the life of the process; None when it is held."""
    fh = open(path, "a")  # noqa: SIM115 - kept open: the lock lives as long as the process
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


VERSIONED_PACKAGES = ("peftds", "torch", "transformers", "datasets", "hydra-core", "peft")


def versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on (recorded with every result)."""
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in VERSIONED_PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def git_commit() -> str | None:
    """The commit of the peftds checkout (None outside a git checkout)."""
    try:
        repo = Path(__file__).resolve().parents[1]
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

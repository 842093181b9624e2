"""A trial (peftds.search.trial): its identity, its record's status, the outcome of a Hydra job read
through the public JobReturn API, a crashing trial recorded with its error text, GPU slots."""

from __future__ import annotations

from hydra.core.utils import JobReturn, JobStatus

from peftds.files import RESULT_FILE, write_json_atomic
from peftds.search.launch import run_search
from peftds.search.trial import effective_status, finished_result, trial_id
from peftds.train.launched import job_error, launcher_error

from .helpers import quiet, rows


def test_trial_identity_is_stable():
    """Existing search dirs find their finished trials by this id: it must not change."""
    assert trial_id("0123abcd4567", "sst2", 42, "3a173544") == "0123abcd4567-sst2-s42-r3a173544"


def test_effective_status_counts_a_missing_or_nan_score_as_failed():
    assert effective_status(None) is None
    assert effective_status({"status": "ok", "score": 71.5}) == "ok"
    assert effective_status({"status": "ok", "score": float("nan")}) == "failed"
    assert effective_status({"status": "ok"}) == "failed"
    assert effective_status({"status": "failed", "score": None}) == "failed"


def test_a_trial_stopped_early_is_finished_only_up_to_its_epoch(tmp_path):
    """train.stop_epoch=k leaves an ok record at fidelity k: finished for k, not for the whole schedule (the
    stage runs it again, and it continues from its checkpoint); a preempted one only up to its epochs done."""
    rec = {"status": "ok", "score": 80.0, "epochs_trained": 1, "complete": False}
    write_json_atomic(tmp_path / RESULT_FILE, rec)
    assert finished_result(tmp_path, epochs=1) == rec
    assert finished_result(tmp_path, epochs=2) is None and finished_result(tmp_path) is None
    write_json_atomic(tmp_path / RESULT_FILE, {**rec, "epochs_trained": 3, "complete": True})
    assert finished_result(tmp_path) is not None and finished_result(tmp_path, epochs=3) is not None
    write_json_atomic(tmp_path / RESULT_FILE, {"status": "ok", "score": 80.0})  # a record older than checkpoints
    assert finished_result(tmp_path) is not None
    write_json_atomic(tmp_path / RESULT_FILE, {"status": "preempted", "epochs_trained": 1, "complete": False})
    assert finished_result(tmp_path, epochs=1) is not None  # epoch 1 was done before the preemption
    assert finished_result(tmp_path, epochs=2) is None and finished_result(tmp_path) is None
    write_json_atomic(tmp_path / RESULT_FILE, {"status": "failed", "complete": False})  # failed at any fidelity
    assert finished_result(tmp_path) is not None


def test_job_outcome_through_the_public_job_return(capsys):
    done = JobReturn(status=JobStatus.COMPLETED)
    done.return_value = {"status": "ok"}
    assert job_error(done) is None
    crashed = JobReturn(overrides=["task=sst2"], status=JobStatus.FAILED)
    crashed.return_value = RuntimeError("CUDA out of memory")
    assert job_error(crashed) == "RuntimeError: CUDA out of memory"
    assert "Error executing job" not in capsys.readouterr().err  # the error goes to the trial's row
    assert "no result" in job_error(JobReturn())
    assert launcher_error(OSError("job 12 died\nmore")) == "launcher error: OSError: job 12 died"


def test_a_crashing_trial_is_recorded_as_failed_with_its_error(tmp_path, fake_training, args):
    calls, rules = fake_training
    rules["raise"] = lambda d: d["allocation"] == "uniform"
    assert run_search(args(tmp_path, "stage=allocation", "search.report=false"), echo=quiet) == 1
    table = {r["option"]: r for r in rows(tmp_path / "s" / "allocation" / "trials.csv")}
    assert table["uniform"]["status"] == "failed"
    assert table["uniform"]["error"] == "RuntimeError: crash outside train_job's own handler"
    assert table["increasing"]["status"] == "ok" and len(calls) == 3

"""One stage of a search: its trials (designs x tasks), launched in batches through the Hydra launcher,
recorded in trials.csv, then summarised: the winner, the next space and the stage's best design.

A trial is identified by (design digest, task, seed, training regime); finished trials are never re-run,
and a restarted stage first appends rows for any finished trial whose row is missing, so a kill loses
nothing and duplicates nothing. With search.racing the trials run in rounds of a race (peftds.search.racing)
and options clearly behind the leader stop getting designs. With search.sequential (the default) the
stage is decided in looks (peftds.search.decision): each look brings the options still in to the designs
it needs, and the stage stops at the first `decided` or `equivalent` verdict.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from peftds.design.space import Space
from peftds.files import (
    DECISION_FILE,
    FAILED_RESULT,
    RACE_FILE,
    RESULT_FILE,
    TRIALS_DIR,
    TRIALS_FILE,
    write_json_atomic,
)
from peftds.search.decision import decide
from peftds.search.designs import Sample, StageDesigns
from peftds.search.racing import race_record, run_race
from peftds.search.report import markdown_table, verdict, write_stage_report
from peftds.search.selection import next_space, write_space_next, write_summary
from peftds.search.settings import SearchSetup, decision_settings, fidelity_of, race_settings
from peftds.search.stages import StageSpec, safe_name
from peftds.search.stats import current_leader, index_scores, read_table, stage_summary
from peftds.search.store import TrialTable, trial_row
from peftds.search.trial import Trial, effective_status, finished_result, score_at_epoch, trial_id
from peftds.train.checkpoint import delete_checkpoints
from peftds.train.launched import launch_batch
from peftds.train.record import RunRecord


class StageHost(Protocol):
    """What a stage needs of the search that runs it (peftds.search.runner.Search is one)."""

    config: SearchSetup
    dir: Path
    forward: list[str]
    launcher: Any
    echo: Callable[..., Any]
    job_idx: int

    @property
    def designs(self) -> StageDesigns: ...

    def trial_dir(self, trial_id: str) -> Path: ...

    def batch_size(self, pending: int) -> int: ...


@dataclass
class StageResult:
    summary: dict[str, Any]
    next_space: Space | None  # None: no winner, the search stops
    best_design: Path | None
    dir: Path


def duration(s: float) -> str:
    """Seconds as e.g. 1h02m, 3m05s or 7s ('?' when unknown)."""
    if not math.isfinite(s):
        return "?"
    s = round(s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


class StageRun:
    """Runs one stage of `search` on `space`."""

    def __init__(self, search: StageHost, spec: StageSpec, space: Space):
        self.search = search
        self.config = search.config
        self.settings = search.config.settings
        self.spec = spec
        self.space = space
        self.echo = search.echo
        self.dir = search.dir / safe_name(spec.name)
        self.table = TrialTable(self.dir / TRIALS_FILE)
        self.trials: dict[str, Trial] = {}

    def run(self) -> StageResult:
        spec = self.spec
        self.dir.mkdir(parents=True, exist_ok=True)
        self.echo(f"\n[search] === {spec.describe()} on space: {self.space.describe()}")
        meta = self.search.designs.load_or_sample(spec, self.space, self.dir)
        for opt, reason in meta["infeasible"].items():
            self.echo(f"[search] {spec.name}/{opt}: infeasible: {reason}")
        self.trials = self.trials_of(meta)
        bad = self.table.repair()
        if bad:
            self.echo(f"[search] {spec.name}: {TRIALS_FILE} had {bad} truncated or corrupted row(s): set aside in "
                      f"{TRIALS_FILE}.malformed, rebuilt from their trials' {RESULT_FILE}")  # fmt: skip
        if self.settings.retry_failed:
            self.reset_failed()
        added, shared = self.reconcile()
        if added - shared:
            self.echo(f"[search] {spec.name}: recorded {added - shared} row(s) of trials that finished before a stop")
        if shared:
            self.echo(
                f"[search] {spec.name}: reused {shared} row(s) of identical trials (design, task, seed, regime) "
                "that an earlier stage trained"
            )
        keys = self.keys()
        order = {o: i for i, o in enumerate(meta["options_order"])}
        # design by design (index 0 of every option, then index 1, ...): a stage stopped part-way leaves
        # complete pairs, the first n designs of every option
        pending = sorted(
            (t for t in self.trials.values() if self.finished(t) is None),
            key=lambda t: min((k[2], order[k[1]]) for k in t.keys),
        )
        done_rows = len(self.table.keys() & keys)
        self.echo(
            f"[search] {spec.name}: {len(meta['planned'])} feasible option(s), {len(keys)} trials "
            f"({len(self.trials)} distinct), {done_rows} done, {len(pending)} to run"
            + (" at most (a race runs the rounds it needs)" if self.settings.racing else "")
            + (
                " at most (the decision takes the looks it needs)"
                if decision_settings(self.settings).sequential
                else ""
            )
        )
        if self.settings.racing:
            self.race(meta)
            return self.finish(meta)
        if (self.dir / RACE_FILE).exists():  # an earlier race of this stage, now extended to every design
            (self.dir / RACE_FILE).unlink()
            self.echo(f"[search] {spec.name}: racing is off: every option gets all its designs ({RACE_FILE} removed)")
        settings = decision_settings(self.settings)
        if settings.sequential:
            self.decide_in_looks(meta)
            return self.finish(meta)
        write_json_atomic(self.dir / DECISION_FILE, {"settings": asdict(settings)})  # one look at all N
        t0 = time.time()
        ran = 0
        bs = self.search.batch_size(len(pending))
        for start in range(0, len(pending), bs):
            batch = pending[start : start + bs]
            self.launch(batch)
            ran += len(batch)
            self.reconcile()
            self.progress(ran, len(pending), t0)
        return self.finish(meta)

    # ------------------------------------------------------------------ racing
    def race_scores(self, meta: Mapping[str, Any]) -> dict[str, list[float]]:
        """Each sampled option's design scores in sample order, as far as its designs are finished."""
        df = read_table(self.dir / TRIALS_FILE)
        return index_scores(df, meta["samples"], meta["options_order"], len(self.config.tasks))

    def cheap_scores(self, meta: Mapping[str, Any], epochs: int) -> dict[str, list[float]]:
        """Each sampled option's design scores at fidelity `epochs` in sample order, as far as every task of
        a design has trained that far (the mean over tasks; NaN: a task that did not end ok)."""
        trial_of = {key[1:]: t for t in self.trials.values() for key in t.keys}
        out: dict[str, list[float]] = {}
        for opt in meta["options_order"]:
            xs: list[float] = []
            for s in meta["samples"].get(opt, []):
                recs = [self.finished(trial_of[(opt, int(s["index"]), task)], epochs) for task in self.config.tasks]
                if any(r is None for r in recs):
                    break  # not there yet: the prefix ends here
                xs.append(sum(score_at_epoch(r, epochs) for r in recs if r is not None) / len(recs))
            if opt in meta["samples"]:
                out[opt] = xs
        return out

    def decide_in_looks(self, meta: Mapping[str, Any]) -> None:
        """Decide the stage in looks (peftds.search.decision): each look brings every option still in to
        the designs it needs (one launcher batch when the launcher takes it); the decision is recomputed
        from the stored results after each, so a killed stage resumes in the look it was in. Multi-fidelity
        (search.cheap_epochs): a look's designs train to epoch k, the first of them (a random subset) on to
        the end; when the stage is over, the checkpoints of trials never continued are deleted."""
        settings, fidelity = decision_settings(self.settings), fidelity_of(self.settings)
        cheap_epochs = None if fidelity is None else fidelity.cheap_epochs
        n_max = max(int(n) for n in meta["planned"].values())
        position = {(o, int(s["index"])): i for o, lst in meta["samples"].items() for i, s in enumerate(lst)}
        name, launched, ran, t0 = self.spec.name, set(), 0, time.time()
        while True:
            cheap = None if cheap_epochs is None else self.cheap_scores(meta, cheap_epochs)
            dec = decide(self.race_scores(meta), n_max, settings, cheap=cheap, fidelity=fidelity)
            write_json_atomic(self.dir / DECISION_FILE, {**dec.to_dict(), "line": dec.line(), "cheap_scores": cheap})
            if dec.finished:
                self.echo(f"[{name}] {dec.line()}")
                if cheap_epochs is not None:
                    self.drop_checkpoints()
                return
            todo = self.unfinished_within({o: n for o, n in dec.full.items() if o not in dec.out}, position, launched)
            stop_at: dict[str, int] = {}
            if cheap_epochs is not None:
                need = {o: n for o, n in dec.designs.items() if o not in dec.out}
                early = [t for t in self.unfinished_within(need, position, launched, cheap_epochs) if t not in todo]
                stop_at = {t.trial_id: cheap_epochs for t in early}
                todo += early
            if not todo:  # the look's jobs returned without finished records: stop, resume later
                self.echo(f"[search] {name}: look {dec.looks + 1} incomplete; resume the search to continue")
                return
            out = f" ({', '.join(dec.out)} found worse)" if dec.out else ""
            at_k = f", {len(stop_at)} of them to epoch {cheap_epochs}" if stop_at else ""
            still_in = ", ".join(o for o in dec.designs if o not in dec.out)
            self.echo(f"[{name}] look {dec.looks + 1}: {len(todo)} trial(s){at_k} for {still_in}{out}")
            ran = self.launch_in_batches(todo, launched, ran, t0, stop_at)

    def launch_in_batches(
        self, todo: list[Trial], launched: set[tuple[str, int | None]], ran: int, t0: float,
        stop_at: Mapping[str, int] | None = None,
    ) -> int:  # fmt: skip
        """Launch a look's or a round's trials (one launcher batch when the launcher takes them), each to
        its fidelity (stop_at: trial id -> last epoch; others: search.epochs); returns trials launched so far."""
        stop_at = stop_at or {}
        bs = self.search.batch_size(len(todo))
        for start in range(0, len(todo), bs):
            batch = todo[start : start + bs]
            self.launch(batch, stop_at)
            launched.update((t.trial_id, stop_at.get(t.trial_id)) for t in batch)
            ran += len(batch)
            self.reconcile()
            self.progress(ran, ran + len(todo) - start - len(batch), t0)
        return ran

    def unfinished_within(
        self,
        need: Mapping[str, int],
        position: Mapping[tuple[str, int], int],
        launched: set[tuple[str, int | None]],
        epochs: int | None = None,
    ) -> list[Trial]:
        """Trials not yet launched or finished at fidelity `epochs` (None: the whole schedule) whose design
        is among the first `need[option]` of an option."""
        return [
            t
            for t in self.trials.values()
            if (t.trial_id, epochs) not in launched
            and self.finished(t, epochs) is None
            and any(k[1] in need and position[(k[1], k[2])] < need[k[1]] for k in t.keys)
        ]

    def drop_checkpoints(self) -> None:
        """Delete the checkpoints of this stage's trials that stopped early and were not continued (a decided
        stage never needs them; a later stage or a rerun that does retrains them)."""
        stopped = [self.search.trial_dir(t.trial_id) for t in self.trials.values() if self.finished(t) is None]
        freed = [b for b in (delete_checkpoints(d) for d in stopped) if b > 0]
        if freed:
            self.echo(
                f"[search] {self.spec.name}: deleted the checkpoints of {len(freed)} trial(s) stopped early "
                f"({sum(freed) / 2**20:.1f} MiB)"
            )

    def race(self, meta: Mapping[str, Any]) -> None:
        """Run the stage as a race (peftds.search.racing): each round brings every surviving option to the
        designs the round needs (one launcher batch when the launcher takes it); after each round the
        decisions are recomputed from the stored rows, so a killed race resumes in the round it was in."""
        settings = race_settings(self.settings)
        caps = {o: int(n) for o, n in meta["planned"].items()}
        position = {(o, int(s["index"])): i for o, lst in meta["samples"].items() for i, s in enumerate(lst)}
        name, echoed, launched, ran, t0 = self.spec.name, 0, set(), 0, time.time()
        while True:
            result = run_race(self.race_scores(meta), caps, settings)
            record = race_record(result, settings, caps, len(self.config.tasks), self.settings.epochs)
            write_json_atomic(self.dir / RACE_FILE, record)
            for d in result.rounds[echoed:]:  # each round's decision once (a resumed race: all so far)
                self.echo(
                    f"[{name}] round {d.round_index + 1}: leader {d.leader}, survivors {', '.join(d.survivors)}"
                    + "".join(f"\n  out: {e.why}" for e in d.eliminated)
                )
            echoed = len(result.rounds)
            if result.finished:
                self.echo(
                    f"[{name}] race over after {echoed} round(s): {record['trial_epochs']} of "
                    f"{record['full_trial_epochs']} trial-epochs ({100 * record['compute_fraction']:.0f}%)"
                )
                return
            need = result.next_designs
            todo = self.unfinished_within(need, position, launched)
            if not todo:  # the round's jobs returned without finished records: stop, resume later
                self.echo(f"[search] {name}: race round {echoed + 1} incomplete; resume the search to continue")
                return
            self.echo(f"[{name}] round {echoed + 1}: {len(todo)} trial(s) for {', '.join(need)}")
            ran = self.launch_in_batches(todo, launched, ran, t0)

    # ------------------------------------------------------------------ trials and rows
    def trials_of(self, meta: Mapping[str, Any]) -> dict[str, Trial]:
        """The stage's distinct trials; a design sampled for two options is one trial with two keys."""
        trials: dict[str, Trial] = {}
        for opt in meta["options_order"]:
            for s in meta["samples"].get(opt, []):
                sample = Sample(**s)
                for task in self.config.tasks:
                    tid = trial_id(sample.digest, task, self.config.seed, self.config.regime_hash)
                    t = trials.setdefault(tid, Trial(tid, task, sample))
                    t.keys.append((self.spec.name, opt, sample.index, task))
        return trials

    def keys(self) -> set[tuple[str, str, int, str]]:
        return {k for t in self.trials.values() for k in t.keys}

    def finished(self, trial: Trial, epochs: int | None = None) -> dict[str, Any] | None:
        """The trial's record once it finished at fidelity `epochs` (None: its whole schedule)."""
        return finished_result(self.search.trial_dir(trial.trial_id), epochs)

    def reconcile(self) -> tuple[int, int]:
        """Append a row for every finished trial whose row is missing (after a kill, or a trial shared
        with another stage); returns (rows added, of which trained by another stage)."""
        have = self.table.keys()
        rows, shared = [], 0
        for t in self.trials.values():
            missing = [k for k in t.keys if k not in have]
            if not missing:
                continue
            rec = self.finished(t)
            if rec is None:
                continue
            rows += [trial_row(k, t, rec, self.settings.epochs, self.config.seed) for k in missing]
            shared += len(missing) if (rec.get("trial") or {}).get("stage") not in (None, self.spec.name) else 0
        added = self.table.append(rows)
        return added, min(shared, added)

    def reset_failed(self) -> None:
        """search.retry_failed: forget failed trials (their rows go, result.json -> result.failed.json)."""
        failed = [t for t in self.trials.values() if effective_status(self.finished(t)) == "failed"]
        if not failed:
            return
        for t in failed:
            d = self.search.trial_dir(t.trial_id)
            os.replace(d / RESULT_FILE, d / FAILED_RESULT)
        n = self.table.remove({k for t in failed for k in t.keys})
        self.echo(f"[search] retry_failed: {len(failed)} failed trial(s) will run again ({n} row(s) removed)")

    # ------------------------------------------------------------------ launching
    def trial_overrides(self, trial: Trial, stop_epoch: int | None = None) -> list[str]:
        """The overrides of one trial's Hydra job (on top of the forwarded search arguments); stop_epoch: train
        the first epochs of the schedule only (the trial continues from its checkpoint when run again)."""
        s = trial.sample
        meta = (
            f"{{id: '{trial.trial_id}', stage: '{self.spec.name}', option: '{s.option}', index: {s.index}, "
            f"design_hash: '{s.digest}', regime: '{self.config.regime_hash}'}}"
        )
        return [
            *self.search.forward,
            f"design={s.design_ref}",
            f"task={trial.task}",
            "train.eval_split=heldout",
            f"train.epochs={self.settings.epochs}",
            *([f"train.stop_epoch={stop_epoch}"] if stop_epoch is not None else []),
            "train.progress=false",
            f"train.save_params={'true' if self.settings.save_params else 'false'}",
            f"+trial={meta}",
            f"hydra.sweep.subdir={TRIALS_DIR}/{trial.trial_id}",
            "hydra.job.name=trial",
        ]

    def launch(self, batch: list[Trial], stop_at: Mapping[str, int] | None = None) -> None:
        """Run a batch of trials (stop_at: trial id -> last epoch to train; others: the whole schedule); a
        trial that failed without writing its own failed record gets one."""
        stop_at = stop_at or {}
        search = self.search
        missing = [t for t in batch if not (search.dir / t.sample.design_file).is_file()]
        batch = [t for t in batch if t not in missing]
        for t in missing:  # its job could not compose its design: a recorded failure, the stage goes on
            RunRecord(search.trial_dir(t.trial_id), task=t.task, design=t.sample.design_ref).update(
                status="failed", error=f"design file {t.sample.design_file} is missing (deleted during the search?)"
            )
        if not batch:
            return
        dirs = [search.trial_dir(t.trial_id) for t in batch]
        overrides = [self.trial_overrides(t, stop_at.get(t.trial_id)) for t in batch]
        at = {d: stop_at.get(t.trial_id) for d, t in zip(dirs, batch)}
        lost, failed = launch_batch(
            search.launcher, overrides, search.job_idx, dirs, lambda d: finished_result(d, at[d]) is not None
        )
        search.job_idx += len(batch)
        for i, line in lost.items():
            self.echo(f"[search] trial {batch[i].trial_id} did not finish: {line}; it stays pending")
        for i, err in failed.items():
            t = batch[i]
            RunRecord(dirs[i], task=t.task, design=t.sample.design_ref).update(
                status="failed", error=err, wall_time_s=0.0
            )

    def progress(self, ran: int, to_run: int, t0: float) -> None:
        keys = self.keys()
        mine = [r for r in self.table.read() if TrialTable.key(r) in keys]
        ok = sum(r["status"] == "ok" for r in mine)
        elapsed = time.time() - t0
        eta = elapsed / ran * (to_run - ran) if ran else float("nan")
        lead = current_leader(mine, len(self.config.tasks))
        leader = f" | leader: {lead[0]} {lead[1]:.2f} ({lead[2]} designs)" if lead else ""
        fidelity, stopped = fidelity_of(self.settings), ""
        if fidelity is not None:  # rows are full-fidelity trials: say how many more stopped early
            k = fidelity.cheap_epochs
            n = sum(self.finished(t) is None and self.finished(t, k) is not None for t in self.trials.values())
            stopped = f", {n} more stopped after epoch {k}"
        self.echo(
            f"[{self.spec.name}] {len(mine)}/{len(keys)} trials ({ok} ok, {len(mine) - ok} failed{stopped}) | "
            f"{duration(elapsed)} elapsed, ETA {duration(eta)}{leader}"
        )

    # ------------------------------------------------------------------ outcome
    def finish(self, meta: Mapping[str, Any]) -> StageResult:
        """Summary, next space and best design (when there is a winner), summary.json and the report."""
        summary = stage_summary(self.dir)
        space, best_file = None, None
        if summary["status"] == "ok" and summary["winner"]:
            space = next_space(self.spec, self.space, summary, self.settings.on_tie)
            write_space_next(self.dir, self.spec, space, summary["winner"], self.search.dir, summary.get("verdict"))
            best_file = self.search.designs.write_best(self.spec, meta, summary, self.dir)
        write_summary(self.dir, summary)
        if self.settings.report:
            try:
                write_stage_report(self.dir)
            except Exception as e:  # a plotting problem must not lose the stage
                self.echo(f"[search] report failed: {type(e).__name__}: {e}")
        self.echo(f"\n[search] stage {self.spec.name} ({self.dir}):")
        self.echo(markdown_table(summary, summary.get("values")))
        self.echo(f"[search] {verdict(summary)}")
        if summary.get("decision"):
            self.echo(f"[search] {summary['decision']['line']}")
        return StageResult(summary, space, best_file, self.dir)

"""`peftds compare`: designs x tasks x seeds in the final regime, as one resumable job, then the table.

    peftds compare compare=cpu                               # conf/compare/cpu.yaml
    peftds compare compare=glue_t5base compare.dry=true      # list the runs and their estimated cost
    peftds compare ... hydra/launcher=joblib hydra.launcher.n_jobs=2

Runs are ordinary `peftds train` jobs launched through the configured Hydra launcher (the search's
machinery: peftds.search.launch.hydra_session); each has its own dir <dir>/runs/<run id> with
result.json and predictions.jsonl (dev predictions of the best epoch). A run id is the design's label
and digest, the task, the seed and the regime hash, so a rerun skips finished runs and a kill loses
none; runs.csv gets one row per finished run (appended atomically under a lock). The tables
(table.md/.csv/.tex) are rewritten from runs.csv whenever the command ends.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from peftds.compare.plan import FINAL_REGIME, ComparePlan, PlannedRun, build_plan
from peftds.compare.render import write_tables
from peftds.compare.table import build_table
from peftds.config.compose import compose, conf_dir
from peftds.config.schema import convert
from peftds.config.sections import CompareConfig
from peftds.data.loading import choose_source, data_config
from peftds.data.tasks import load_task
from peftds.errors import PeftdsError
from peftds.files import (
    CONF_SUBDIR,
    FAILED_RESULT,
    PREDICTIONS_FILE,
    RESULT_FILE,
    file_lock,
)
from peftds.search.launch import hydra_session, slurm_gpu_args
from peftds.search.stage_run import duration
from peftds.search.state import override_key
from peftds.search.store import TrialTable
from peftds.search.trial import effective_status, finished_result
from peftds.train.launched import launch_batch, run_launched
from peftds.train.record import RunRecord, read_predictions

RUNS_DIR = "runs"
RUNS_FILE = "runs.csv"
COMPARE_LOCK = ".compare.lock"
RUN_FIELDS = [
    "run_id", "design", "design_ref", "budget_fraction", "task", "seed", "model", "trainable_params",
    "trainable_pct", "budget_params", "metrics", "score", "best_epoch", "epochs", "wall_time_s", "device",
    "status", "error", "run_dir",
]  # fmt: skip
REFUSED = ("design", "task", "seed", "hydra.run.dir", "hydra.sweep.dir")
ESTIMATES = Path(__file__).with_name("estimates.yaml")


# ----------------------------------------------------------------------------------- arguments
def normalise(argv: Sequence[str]) -> list[str]:
    """`compare=<preset>` -> `+compare=<preset>` (+compare=default when none); refuse the keys compare decides."""
    out, chosen = [], False
    for a in argv:
        k = override_key(a)
        if k in REFUSED:
            where = {"design": "compare.designs", "task": "compare.tasks", "seed": "compare.seeds"}.get(
                k, "compare.dir"
            )
            raise PeftdsError(f"peftds compare sets {k} itself; drop `{a}` (use {where}=...)")
        if k == "compare" and "=" in a:
            chosen = True
            out.append("+compare=" + a.split("=", 1)[1])
        else:
            out.append(a)
    return out if chosen else ["+compare=default", *out]


def settings_of(cfg: Any) -> CompareConfig:
    from omegaconf import OmegaConf

    return convert(CompareConfig, OmegaConf.to_container(cfg.compare, resolve=True))


def compare_dir(settings: CompareConfig) -> Path:
    return Path(settings.dir or f"outputs/compare/{settings.name}").expanduser().resolve()


def estimate_hours(plan: ComparePlan) -> tuple[float | None, float | None, str]:
    """(GPU-hours, CPU-hours, GPU) of the planned runs' training, from estimates.yaml (None: unknown)."""
    est = yaml.safe_load(ESTIMATES.read_text())
    sizes = est["train_examples"]
    examples = 0
    for r in plan.runs:
        n = sizes.get(r.task)
        if n is None:
            return None, None, est["gpu"]
        examples += min(n, plan.max_train_samples or n) * plan.epochs
    gpu, cpu = est["gpu_s_per_example"].get(plan.model), est["cpu_s_per_example"].get(plan.model)
    return (None if gpu is None else gpu * examples / 3600, None if cpu is None else cpu * examples / 3600, est["gpu"])


# ----------------------------------------------------------------------------------- one run
def compare_job(cfg: Any) -> dict[str, Any]:
    """The Hydra task function of one run: an ordinary peftds train job in the Hydra job dir, quiet."""
    settings = settings_of(cfg)
    rec = run_launched(cfg, gpu_slots=settings.gpu_slots, threads=settings.threads)
    return {k: rec.get(k) for k in ("status", "error", "score", "wall_time_s", "run_dir")}


def run_row(r: PlannedRun, plan: ComparePlan, rec: dict[str, Any]) -> dict[str, Any]:
    """The runs.csv row of a finished run (its run_dir relative to the compare dir: the folder can move)."""
    status = effective_status(rec)
    best = rec.get("best") or {}
    metrics = {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in best.items() if k != "epoch"}
    return {
        "run_id": r.run_id, "design": r.design.label, "design_ref": r.design.ref,
        "budget_fraction": plan.fractions[r.design.label], "task": r.task, "seed": r.seed, "model": plan.model,
        "trainable_params": rec.get("trainable_params", ""),
        "trainable_pct": f"{rec['trainable_pct']:.4f}" if rec.get("trainable_pct") is not None else "",
        "budget_params": rec.get("budget_params", ""),
        "metrics": json.dumps(metrics, sort_keys=True) if status == "ok" else "",
        "score": f"{rec['score']:.4f}" if status == "ok" else "", "best_epoch": best.get("epoch", ""),
        "epochs": plan.epochs, "wall_time_s": f"{float(rec.get('wall_time_s') or 0):.1f}",
        "device": rec.get("device") or "", "status": status,
        "error": str(rec.get("error") or "").replace("\n", " ")[:500], "run_dir": str(Path(RUNS_DIR) / r.run_id),
    }  # fmt: skip


# ----------------------------------------------------------------------------------- the comparison
class Comparison:
    """The runs of a plan in one dir: what is done, launching the rest, the table."""

    def __init__(self, plan: ComparePlan, cdir: Path, echo: Callable[..., Any] = print):
        self.plan, self.dir, self.echo = plan, cdir, echo
        self.table = TrialTable(cdir / RUNS_FILE, RUN_FIELDS, ("run_id",))
        self.job_idx = 0

    def run_dir(self, r: PlannedRun) -> Path:
        return self.dir / RUNS_DIR / r.run_id

    def finished(self, r: PlannedRun) -> dict[str, Any] | None:
        return finished_result(self.run_dir(r))

    def reconcile(self) -> int:
        """A row for every finished run whose row is missing."""
        have = self.table.keys()
        rows = [
            run_row(r, self.plan, rec)
            for r in self.plan.runs
            if (r.run_id,) not in have and (rec := self.finished(r)) is not None
        ]
        return self.table.append(rows)

    def relative_run_dirs(self) -> int:
        """Rows written by older versions name their run dir by its absolute path: rewrite them relative to
        the compare dir (runs/<run id>), so the folder can be moved; returns how many changed."""
        if not any(Path(r.get("run_dir") or "").is_absolute() for r in self.table.read()):
            return 0
        with file_lock(self.table.lock_path):
            rows = self.table.read()
            old = [r for r in rows if Path(r.get("run_dir") or "").is_absolute()]
            for r in old:
                r["run_dir"] = str(Path(RUNS_DIR) / r["run_id"])
            self.table.write(rows)
            return len(old)

    def reset_failed(self) -> None:
        failed = [r for r in self.plan.runs if effective_status(self.finished(r)) == "failed"]
        for r in failed:
            self.run_dir(r).joinpath(RESULT_FILE).replace(self.run_dir(r) / FAILED_RESULT)
        if failed:
            self.table.remove({(r.run_id,) for r in failed})
            self.echo(f"[compare] retry_failed: {len(failed)} failed run(s) will run again")

    def pending(self) -> list[PlannedRun]:
        return [r for r in self.plan.runs if self.finished(r) is None]

    def describe(self) -> str:
        p = self.plan
        n, todo = len(p.runs), len(self.pending())
        gpu_h, cpu_h, gpu = estimate_hours(p)
        cost = f"~{gpu_h:.3g} GPU-hours ({gpu})" if gpu_h is not None else "GPU-hours unknown"
        if cpu_h is not None:
            cost += f", ~{cpu_h:.3g} CPU-hours (2 cores)"
        return (
            f"[compare] {self.dir}: model {p.model}, {len(p.designs)} designs x {len(p.tasks)} tasks x "
            f"{len(p.seeds)} seeds = {n} runs ({n - todo} done, {todo} to run), {p.length}, "
            f"regime {p.regime_hash}\n[compare] estimated training cost of all {n} runs: {cost} "
            f"(rough: {ESTIMATES.name})"
        )

    def listing(self) -> str:
        lines = [f"  {'design':<22} {'budget':>7} {'task':<12} {'seed':>4}  {'status':<8} run id"]
        for r in self.plan.runs:
            rec = self.finished(r)
            status = effective_status(rec) if rec else "pending"
            frac = self.plan.fractions[r.design.label]
            budget = "full" if r.design.label in self.plan.full else f"{100 * frac:.2f}%"
            lines.append(f"  {r.design.label:<22} {budget:>7} {r.task:<12} {r.seed:>4}  {status:<8} {r.run_id}")
        return "\n".join(lines)

    def overrides(self, r: PlannedRun, forward: Sequence[str]) -> list[str]:
        e = r.design
        select = e.overrides(self.plan.settings.lr)
        if e.is_file:  # the copy in <dir>/conf/design
            select = [f"design=file_{Path(e.ref).stem}", *select[1:]]
        ident = f"{{id: '{r.run_id}', design: '{e.label}', digest: '{r.digest}', regime: '{self.plan.regime_hash}'}}"
        save = "true" if self.plan.settings.save_params else "false"
        return [
            *forward, *select, f"task={r.task}", f"seed={r.seed}", *FINAL_REGIME,
            "train.progress=false", "train.save_predictions=true", f"train.save_params={save}", f"+trial={ident}",
            f"hydra.sweep.subdir={RUNS_DIR}/{r.run_id}", "hydra.job.name=compare",
        ]  # fmt: skip

    def batch_size(self, cfg: Any, pending: int) -> int:
        if self.plan.settings.batch_size:
            return self.plan.settings.batch_size
        launcher = (cfg.get("hydra") or {}).get("launcher") or {}
        target = str(launcher.get("_target_") or "").lower()
        if "joblib" in target:
            n = int(launcher.get("n_jobs") or -1)
            return max(1, n) if n > 0 else 2
        return max(1, pending) if "submitit" in target else 1

    def launch(self, launcher: Any, batch: list[PlannedRun], forward: Sequence[str]) -> None:
        dirs = [self.run_dir(r) for r in batch]
        overrides = [self.overrides(r, forward) for r in batch]
        lost, failed = launch_batch(launcher, overrides, self.job_idx, dirs, lambda d: finished_result(d) is not None)
        self.job_idx += len(batch)
        for i, line in lost.items():
            self.echo(f"[compare] run {batch[i].run_id} did not finish: {line}; it stays pending")
        for i, err in failed.items():
            RunRecord(dirs[i], task=batch[i].task, design=batch[i].design.label).update(status="failed", error=err)

    def run(self, cfg: Any, launcher: Any, forward: Sequence[str]) -> None:
        bad = self.table.repair()
        if bad:
            self.echo(f"[compare] {RUNS_FILE} had {bad} truncated or corrupted row(s): set aside in "
                      f"{RUNS_FILE}.malformed, rebuilt from their runs' {RESULT_FILE}")  # fmt: skip
        if self.plan.settings.retry_failed:
            self.reset_failed()
        self.reconcile()
        todo = self.pending()
        bs = self.batch_size(cfg, len(todo))
        t0 = time.time()
        for start in range(0, len(todo), bs):
            self.launch(launcher, todo[start : start + bs], forward)
            self.reconcile()
            done = min(start + bs, len(todo))
            rows = self.table.read()
            ok = sum(r["status"] == "ok" for r in rows)
            el = time.time() - t0
            self.echo(
                f"[compare] {len(rows)}/{len(self.plan.runs)} runs ({ok} ok, {len(rows) - ok} failed) | "
                f"last: {todo[done - 1].design.label} {todo[done - 1].task} s{todo[done - 1].seed} | "
                f"{duration(el)} elapsed, ETA {duration(el / done * (len(todo) - done))}"
            )

    def predictions(self) -> Callable[[str, str, int], tuple[list[Any], list[Any]] | None]:
        by_key = {(r.design.label, r.task, r.seed): self.run_dir(r) for r in self.plan.runs}
        cache: dict[tuple[str, str, int], Any] = {}

        def load(design: str, task: str, seed: int) -> tuple[list[Any], list[Any]] | None:
            key = (design, task, seed)
            if key not in cache:
                path = by_key[key] / PREDICTIONS_FILE if key in by_key else None
                rows = read_predictions(path) if path is not None and path.is_file() else None
                cache[key] = None if rows is None else ([x["prediction"] for x in rows], [x["reference"] for x in rows])
            return cache[key]

        return load

    def write_table(self) -> str:
        """table.md/.csv/.tex of the plan's runs (rows of other settings in runs.csv are named, not used)."""
        t = build_table(self.plan, self.table.read(), self.predictions(), self.plan.settings.published)
        if t.stale:
            self.echo(
                f"[compare] {len(t.stale)} run(s) in {self.dir / RUNS_FILE} are of other settings (another regime or "
                f"design configuration; this plan's regime is {self.plan.regime_hash}): stale, left out of the table, "
                f"e.g. {', '.join(t.stale[:3])}"
            )
        return write_tables(t, self.dir)


def copy_design_files(plan: ComparePlan, cdir: Path) -> None:
    """Design files go into <dir>/conf/design/file_<stem>.yaml (the runs select them by name)."""
    for e in plan.designs:
        if e.is_file:
            dest = cdir / CONF_SUBDIR / "design" / f"file_{Path(e.ref).stem}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(e.ref).expanduser(), dest)


def run_compare(argv: Sequence[str], echo: Callable[..., Any] = print) -> int:
    args = normalise(argv)
    plan = build_plan(compose, args)
    cdir = compare_dir(plan.settings)
    comp = Comparison(plan, cdir, echo)
    echo(comp.describe())
    for note in plan.notes:
        echo(f"[compare] {note}")
    if plan.settings.dry:
        echo(comp.listing())
        return 0
    dcfg = data_config(plan.data)
    for t in plan.tasks:
        choose_source(load_task(t, conf_dir()), dcfg)
    forward = [a for a in args if not override_key(a).startswith(("hydra.", "hydra/"))]
    # a process that does not get the lock writes nothing: the running one owns the dir and its tables
    with file_lock(cdir / COMPARE_LOCK, wait=False, busy=f"another peftds compare is running in {cdir}"):
        copy_design_files(plan, cdir)
        comp.relative_run_dirs()
        try:
            with hydra_session(hydra_arguments(args, cdir), compare_job, "compare") as (cfg, launcher):
                comp.run(cfg, launcher, forward)
        finally:
            comp.reconcile()
            if comp.table.read():
                echo(comp.write_table())
                echo(f"[compare] tables: {cdir}/table.md, table.csv, table.tex; runs: {cdir / RUNS_FILE}")
    mine = {r.run_id for r in plan.runs}
    failed = sum(r["status"] != "ok" for r in comp.table.read() if r["run_id"] in mine)
    return 1 if failed else 0


def hydra_arguments(args: Sequence[str], cdir: Path) -> list[str]:
    """The Hydra overrides of the comparison's session: its dir, and its copied design files on the search path."""
    user_paths = [a.split("=", 1)[1].strip("[]") for a in args if override_key(a) == "hydra.searchpath"]
    own = [f"file://{cdir / CONF_SUBDIR}"] if (cdir / CONF_SUBDIR).is_dir() else []  # Hydra warns of a missing one
    paths = ",".join([*own, *[p for p in user_paths if p]])
    return [
        *slurm_gpu_args(args, "compare.gpu_slots"),
        *[a for a in args if override_key(a) != "hydra.searchpath"],
        f"hydra.sweep.dir={cdir}",
        *([f"hydra.searchpath=[{paths}]"] if paths else []),
        "hydra.hydra_logging.root.level=WARNING",
        "hydra.job_logging.root.handlers=[file]",
    ]


def cmd_compare(argv: list[str]) -> int:
    """The `peftds compare` command (the CLI turns SIGTERM into Ctrl-C: finished runs are kept)."""
    try:
        return run_compare(argv, echo=lambda *a: print(*a, flush=True))
    except KeyboardInterrupt:
        print("peftds compare: interrupted (finished runs are kept; rerun the same command to resume)",
              file=sys.stderr, flush=True)  # fmt: skip
        return 130

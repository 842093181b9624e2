"""`peftds search`: the stage-wise design-space search (SPEC §5).

    peftds search stage=grouping search=demo            # one stage
    peftds search stage=allocation space=<dir>/grouping/space_next.yaml
    peftds search stage=all model=tiny_t5 search=tiny   # every stage, chained
    peftds search ... hydra/launcher=joblib             # parallel trials on one machine
    peftds search ... hydra/launcher=submitit_slurm     # a SLURM cluster (submitit_local: local processes)
    peftds search search.dir=<existing dir>             # resume (same arguments as stored there)

Without search.dir the search dir is outputs/search/<stage>/run-<hash of the arguments>, so running
the same command again resumes the same search (launcher choice is not part of the hash).

A stage samples N designs per option from (space ∧ option) (peftds.design.space), trains each on every task
of the task set in the low-compute regime, scores it on the held-out slice of the training data,
picks the option with the highest mean and writes the refined space (space_next.yaml). Trials are
ordinary `peftds train` jobs (training.train_job) launched through Hydra's launcher plugins: the
search process composes the config with Hydra, instantiates the configured launcher
(hydra/launcher=basic | joblib | submitit_local | submitit_slurm) and hands it batches of per-trial
override lists; every trial writes result.json in its own dir, and the search appends one row per
trial to the stage's trials.csv (file lock + atomic replace). A trial is identified by
(design digest, task, seed, training regime); finished trials are never re-run, and a restarted
search first appends rows for any finished trial whose row is missing, so a kill loses nothing and
duplicates nothing.

Search dir layout::

    search.json                  arguments (for resume) and the stages run
    conf/design/<stage>/*.yaml   sampled designs (Hydra config group `design`, found via hydra.searchpath)
    trials/<trial id>/           one Hydra job dir per trial: result.json, trial.log, .hydra/
    <stage>/stage.json           options, tasks, input space, sampled designs per option
    <stage>/trials.csv           one row per (option, design index, task)
    <stage>/summary.json         per-option statistics and the winner
    <stage>/space_next.yaml      input space + the winner (feed it to the next stage)
    <stage>/best_design.yaml     best design of the winning option (peftds train design=<file>)
    <stage>/report.md, *.png     the stage report (peftds report <dir> rewrites them)
    best_design.yaml             after the last stage
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from peftds.config.compose import plain, reject_unknown_keys
from peftds.errors import PeftdsError
from peftds.design.space import Space
from peftds.model.strategies import LETTERS, NAMES, strategy_label
from peftds.search.sampler import sample_designs

CLI_COMMANDS: dict[str, Any] = {}

SEARCH_DEFAULTS: dict[str, Any] = {
    "n": 100, "epochs": 3, "task_set": "glue", "tasks": None, "seed": 0, "min_ok": 0.5, "bootstrap": 2000,
    "max_draws": 200, "batch_size": None, "retry_failed": False, "trial_threads": None, "save_params": False,
    "report": True, "dir": None, "gpu_slots": None,
}
STAGE_KEYS = {"name", "dimension", "group", "options", "chain", "stages", "note"}
STAGE_DIMENSIONS = {"none": None, "grouping": "grouping", "allocation": "allocation", "tuned": "tuned",
                    "tunable": "tuned", "strategies": "strategies", "strategy": "strategies"}
FILE_GROUPS = ("search", "stage", "space")
FINISHED = ("ok", "failed")
ROW_FIELDS = [
    "stage", "option", "index", "task", "trial_id", "design", "design_hash", "design_file", "group_sizes", "tuned",
    "allocation", "strategies", "sizes", "trainable_params", "budget_params", "metrics", "score", "epochs", "seed",
    "wall_time_s", "device", "status", "error",
]
# train.* keys that do not change what a trial computes (left out of the regime hash)
COSMETIC_TRAIN_KEYS = {"progress", "logging_steps", "report_to", "output_dir", "save_params", "catch_errors"}
COSMETIC_DATA_KEYS = {"dir", "source"}


# =================================================================================== stages
@dataclass
class StageSpec:
    name: str
    dimension: str | None  # None | grouping | allocation | tuned | strategies
    group: int | str | None  # strategies: 1..K or "each"
    options: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], where: str = "stage") -> "StageSpec":
        cfg = dict(plain(cfg) or {})
        name = str(cfg.get("name") or "stage")
        where = f"{where} '{name}'"
        reject_unknown_keys(cfg, STAGE_KEYS, where)
        dim_cfg = cfg.get("dimension") or "none"
        if dim_cfg not in STAGE_DIMENSIONS:
            raise PeftdsError(f"{where}: unknown dimension '{dim_cfg}' (known: {', '.join(STAGE_DIMENSIONS)})")
        dim = STAGE_DIMENSIONS[dim_cfg]
        group = cfg.get("group")
        if dim == "strategies":
            if group in (None, "each"):
                group = "each"
            else:
                try:
                    group = int(group)
                except (TypeError, ValueError):
                    raise PeftdsError(f"{where}: group must be 'each' or a group number, got {group!r}") from None
        elif group is not None:
            raise PeftdsError(f"{where}: `group` only applies to a strategies stage (dimension {dim_cfg})")
        options = cfg.get("options")
        if not isinstance(options, dict) or not options:
            raise PeftdsError(f"{where}: `options` must be a non-empty mapping of option name -> constraint")
        for opt in options:
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(opt)):
                raise PeftdsError(f"{where}: option name '{opt}' may only use letters, digits, _ . -")
        if dim is None and any(v is not None for v in options.values()):
            raise PeftdsError(f"{where}: a stage with dimension none takes no constraint values (use null)")
        return cls(name, dim, group, {str(k): v for k, v in options.items()})

    def validate_values(self, groups: int) -> None:
        """Every option value is a well-formed constraint for its dimension (before any training)."""
        if self.dimension is None:
            return
        base = Space(groups=groups, strategies=(None,) * groups, pool=Space.from_config({}).pool)
        g = 1 if self.group == "each" else self.group
        if isinstance(g, int) and not 1 <= g <= groups:
            raise PeftdsError(f"stage '{self.name}': group {g} is outside 1..{groups}")
        for opt, value in self.options.items():
            base.constrain(self.dimension, value, group=g if self.dimension == "strategies" else None,
                           where=f"stage '{self.name}' option '{opt}'")

    def for_group(self, g: int) -> "StageSpec":
        base = self.name if self.name.endswith(f"_g{g}") else re.sub(r"_g\d+$", "", self.name) + f"_g{g}"
        return StageSpec(base, self.dimension, g, dict(self.options))

    def describe(self) -> str:
        dim = self.dimension or "none"
        if self.dimension == "strategies":
            dim += f" of group {self.group}"
        return f"stage {self.name} ({dim}, {len(self.options)} options)"


def stage_chain(stage_cfg: Mapping[str, Any]) -> tuple[list[StageSpec], bool]:
    """The stage specs to run in order, and whether this is a chain (stage=all)."""
    cfg = dict(plain(stage_cfg) or {})
    if not cfg:
        raise PeftdsError("no stage selected (stage=grouping | allocation | tunable | strategy | s0 | all | <file>)")
    if "chain" not in cfg:
        cfg.pop("stages", None)
        return [StageSpec.from_config(cfg)], False
    name = cfg.get("name", "all")
    unknown = sorted(set(cfg) - {"name", "chain", "stages", "note"})
    if unknown:
        raise PeftdsError(f"stage '{name}': a chain stage takes name, chain, stages (unknown key(s) {unknown})")
    stages = dict(cfg.get("stages") or {})
    specs = []
    for item in cfg.get("chain") or []:
        if isinstance(item, str):
            if item not in stages:
                raise PeftdsError(f"stage '{name}': chain names stage '{item}' but `stages` has only "
                                  f"{sorted(stages)}")
            specs.append(StageSpec.from_config(stages[item], where=f"stage '{name}' -> stage"))
        else:
            specs.append(StageSpec.from_config(item, where=f"stage '{name}' -> stage"))
    if not specs:
        raise PeftdsError(f"stage '{name}': empty chain")
    return specs, True


# =================================================================================== helpers


def _hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


def _dur(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def search_settings(cfg) -> dict[str, Any]:
    raw = dict(plain(cfg.get("search")) or {})
    reject_unknown_keys(raw, SEARCH_DEFAULTS, "search config")
    s = {**SEARCH_DEFAULTS, **raw}
    for key in ("n", "epochs", "bootstrap", "max_draws", "seed"):
        try:
            s[key] = int(s[key])
        except (TypeError, ValueError):
            raise PeftdsError(f"search.{key} must be an integer, got {s[key]!r}") from None
    if s["n"] < 1:
        raise PeftdsError(f"search.n must be >= 1, got {s['n']}")
    if s["epochs"] < 1:
        raise PeftdsError(f"search.epochs must be >= 1, got {s['epochs']}")
    min_ok = float(s["min_ok"])
    s["min_ok"] = max(1, math.ceil(min_ok * s["n"]) if min_ok < 1 else int(min_ok))
    return s


def search_tasks(cfg, settings: Mapping[str, Any]) -> list[str]:
    from peftds.config.compose import conf_dir
    from peftds.data.tasks import known_tasks, task_set

    if settings.get("tasks"):
        tasks = [str(t) for t in settings["tasks"]]
        known = known_tasks(conf_dir())
        bad = [t for t in tasks if t not in known]
        if bad:
            raise PeftdsError(f"search.tasks names unknown task(s) {bad} (known: {', '.join(known)})")
    else:
        tasks = task_set(str(settings["task_set"]), conf_dir())
    if len(set(tasks)) != len(tasks):
        raise PeftdsError(f"search tasks repeat a task: {tasks}")
    return tasks


def regime_of(cfg, epochs: int) -> dict[str, Any]:
    """What (besides design, task and seed) determines a trial's result: model, budget, data, training."""
    c = {k: plain(cfg.get(k)) for k in ("model", "budget", "data", "train")}
    train = {k: v for k, v in (c.get("train") or {}).items() if k not in COSMETIC_TRAIN_KEYS}
    train.update(epochs=int(epochs), eval_split="heldout")
    data = {k: v for k, v in (c.get("data") or {}).items() if k not in COSMETIC_DATA_KEYS}
    return {"model": c.get("model"), "budget": c.get("budget"), "data": data, "train": train}


def group_sizes_text(plan) -> str:
    """Per group the strategies with their size range over the group's layers, e.g. 'A3 L2-3 | P5 | - | B'."""
    out = []
    for g in range(1, len(plan.groups) + 1):
        layers = [lp for lp in plan.layers if lp.group == g]
        parts = []
        for name in NAMES:
            sizes = [lp.modules[name] for lp in layers if name in lp.modules]
            if not sizes:
                continue
            if name == "bitfit":
                parts.append("B")
            else:
                lo, hi = min(sizes), max(sizes)
                parts.append(f"{LETTERS[name]}{lo}" if lo == hi else f"{LETTERS[name]}{lo}-{hi}")
        out.append(" ".join(parts) or "-")
    return " | ".join(out)


# =================================================================================== the table
class TrialTable:
    """A stage's trials.csv: rows keyed by (stage, option, index, task), appended under an fcntl lock
    by rewriting the file to a temp file and os.replace (a kill never leaves a half-written row)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @staticmethod
    def key(row: Mapping[str, Any]) -> tuple[str, str, int, str]:
        return (str(row["stage"]), str(row["option"]), int(row["index"]), str(row["task"]))

    @contextlib.contextmanager
    def locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            return [r for r in csv.DictReader(fh) if r.get("stage")]

    def keys(self) -> set[tuple[str, str, int, str]]:
        return {self.key(r) for r in self.read()}

    def _write(self, rows: list[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=ROW_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in ROW_FIELDS})
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def remove(self, keys: set) -> int:
        with self.locked():
            rows = self.read()
            keep = [r for r in rows if self.key(r) not in keys]
            if len(keep) != len(rows):
                self._write(keep)
            return len(rows) - len(keep)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is not in the table yet; returns how many were added."""
        rows = list(rows)
        if not rows:
            return 0
        with self.locked():
            existing = self.read()
            have = {self.key(r) for r in existing}
            new = []
            for r in rows:
                k = self.key(r)
                if k not in have:
                    have.add(k)
                    new.append(r)
            if not new:
                return 0
            self._write(existing + new)
            return len(new)


# =================================================================================== trials
def read_result(trial_dir: Path) -> dict[str, Any] | None:
    from peftds.files import RESULT_FILE

    p = Path(trial_dir) / RESULT_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def trial_job(cfg) -> dict[str, Any]:
    """The Hydra task function of a search trial: an ordinary peftds train job (training.train_job)
    in the Hydra job dir, quiet (its output goes to trial.log), plus the device it ran on."""
    import torch

    from peftds.files import RESULT_FILE, write_json_atomic
    from peftds.train.job import run_dir_of, train_job

    settings = cfg.get("search") or {}
    if settings.get("gpu_slots"):
        claim_gpu_slot(int(settings["gpu_slots"]), run_dir_of(cfg).parent.parent)
    threads = settings.get("trial_threads")
    if threads:
        torch.set_num_threads(int(threads))
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    with open(run_dir / "trial.out", "a") as log, _quiet_transformers(), \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        rec = train_job(cfg, run_dir)
    rec["device"] = device
    write_json_atomic(run_dir / RESULT_FILE, rec)
    return {k: rec.get(k) for k in ("status", "error", "score", "best", "wall_time_s", "trainable_params", "device",
                                    "run_dir")}


_GPU_SLOT: dict[str, Any] = {}


def claim_gpu_slot(slots: int, lock_dir: Path, timeout_s: float = 600.0) -> int:
    """One GPU per worker process (hydra/launcher=joblib with n_jobs = search.gpu_slots): the first
    trial a process runs takes a free slot (an flock on <search dir>/.gpu_slot<i>.lock, held for the
    life of the process) and restricts CUDA to that device before CUDA is initialised."""
    if "slot" in _GPU_SLOT:
        return _GPU_SLOT["slot"]
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = visible or [str(i) for i in range(slots)]
    deadline = time.time() + timeout_s
    while True:
        for i in range(min(slots, len(devices))):
            fh = open(Path(lock_dir) / f".gpu_slot{i}.lock", "a")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            _GPU_SLOT.update(slot=i, fh=fh)
            os.environ["CUDA_VISIBLE_DEVICES"] = devices[i]
            return i
        if time.time() > deadline:
            raise PeftdsError(f"no free GPU slot among {slots} after {timeout_s:.0f}s (more workers than slots?)")
        time.sleep(1.0)


@contextlib.contextmanager
def _quiet_transformers():
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


@dataclass
class Sample:
    option: str
    index: int
    design_file: str  # relative to the search dir
    design_ref: str  # `design=<ref>` for Hydra
    digest: str
    compact: str
    groups: list[int]
    tuned: list[int]
    allocation: str
    strategies: list[list[str]]
    sizes: str
    trainable_params: int
    budget_params: int


@dataclass
class Trial:
    trial_id: str
    task: str
    sample: Sample
    keys: list[tuple[str, str, int, str]] = field(default_factory=list)


# =================================================================================== the search
class Search:
    def __init__(self, cfg, search_dir: Path, forward: Sequence[str], launcher=None, echo: Callable = print):
        self.cfg = cfg
        self.dir = Path(search_dir)
        self.forward = list(forward)  # task overrides every trial composes with
        self.launcher = launcher
        self.echo = echo
        self.settings = search_settings(cfg)
        self.tasks = search_tasks(cfg, self.settings)
        self.seed = int(cfg.seed)
        self.regime = regime_of(cfg, self.settings["epochs"])
        self.regime_hash = _hash(self.regime)
        self.job_idx = 0
        self.stages_run: list[str] = []
        self._model_ctx = None

    # ------------------------------------------------------------------ model (meta device, once)
    def model_ctx(self):
        if self._model_ctx is None:
            from peftds.design.apply import layer_shapes
            from peftds.model.backbones import Backbone, build_model
            from peftds.design.budget import budget_params
            from peftds.design.plan import Design

            model = build_model(self.cfg.model, num_labels=2, device="meta")
            bb = Backbone(model)
            shapes = layer_shapes(bb)
            n = bb.backbone_params()
            budget = budget_params(float(self.cfg.budget.fraction), n)
            hp = dict(plain(self.cfg.design.get("hparams")) or {})
            Design.from_config({"name": "hparams", "grouping": {"groups": 1}, "strategies": [["lora"]],
                                "hparams": hp})  # validates the strategy hyper-parameters
            self._model_ctx = {"shapes": shapes, "backbone_params": n, "budget": budget, "hparams": hp,
                               "layers": len(shapes)}
        return self._model_ctx

    def resolve(self, design: Mapping[str, Any]):
        from peftds.design.plan import Design

        m = self.model_ctx()
        d = Design.from_config({"name": "sample", **design, "hparams": m["hparams"]})
        return d.resolve(m["shapes"], m["backbone_params"], m["budget"])

    # ------------------------------------------------------------------ validation (before training)
    def input_space(self) -> Space:
        space = Space.from_config(self.cfg.get("space"), where="space")
        space.check(self.model_ctx()["layers"])
        return space

    def check_data(self) -> None:
        """Every task's data can be found (local files, or the hub when online) before any training."""
        from peftds.config.compose import conf_dir
        from peftds.data.loading import choose_source, data_config
        from peftds.data.tasks import load_task

        dcfg = data_config(self.cfg.get("data"))
        for name in self.tasks:
            choose_source(load_task(name, conf_dir()), dcfg)

    def plan_stages(self) -> tuple[list[StageSpec], bool, Space]:
        specs, chain = stage_chain(self.cfg.get("stage"))
        self.check_data()
        space = self.input_space()
        for spec in specs:
            spec.validate_values(space.groups)
        if not chain:
            spec = specs[0]
            if spec.dimension == "strategies" and spec.group != "each":
                self._check_strategy_group(spec, space, strict=True)
            elif spec.dimension is not None and spec.dimension != "strategies" and space.constrained(spec.dimension):
                raise PeftdsError(f"stage '{spec.name}': the space already constrains {spec.dimension} "
                                  f"({getattr(space, spec.dimension)}); start from a space without it")
        return specs, chain, space

    def _check_strategy_group(self, spec: StageSpec, space: Space, strict: bool) -> bool:
        g = int(spec.group)
        if g > space.groups:
            raise PeftdsError(f"stage '{spec.name}': group {g} is outside the space's {space.groups} groups")
        if space.tuned is not None and g not in space.tuned:
            msg = f"stage '{spec.name}': group {g} is not tuned in this space (tuned: {list(space.tuned)})"
            if strict:
                raise PeftdsError(msg)
            self.echo(f"[search] skip {spec.name}: {msg.split(': ', 1)[1]}")
            return False
        if space.constrained("strategies", g):
            msg = (f"stage '{spec.name}': group {g} strategies are already fixed to "
                   f"{list(space.strategies[g - 1])} in this space")
            if strict:
                raise PeftdsError(msg)
            self.echo(f"[search] skip {spec.name}: already fixed in the input space")
            return False
        return True

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        specs, chain, space = self.plan_stages()
        m = self.model_ctx()
        self.echo(f"[search] {self.dir}  model L={m['layers']} budget={m['budget']:,} params  tasks={self.tasks}  "
                  f"N={self.settings['n']}  epochs={self.settings['epochs']}  regime={self.regime_hash}")
        self.echo(f"[search] input space: {space.describe()}")
        last = None
        for spec in specs:
            subs = [spec]
            if spec.dimension == "strategies" and spec.group == "each":
                subs = [spec.for_group(g) for g in range(1, space.groups + 1)]
            for sub in subs:
                if sub.dimension == "strategies":
                    if not self._check_strategy_group(sub, space, strict=False):
                        continue
                elif sub.dimension is not None and space.constrained(sub.dimension):
                    self.echo(f"[search] skip stage {sub.name}: the space already fixes {sub.dimension}")
                    continue
                result = self.run_stage(sub, space)
                last = result
                if result["next_space"] is None:
                    self.echo(f"[search] stopped after stage {sub.name}: {result['summary']['message']}")
                    return 1
                space = result["next_space"]
        if last is None:
            self.echo("[search] nothing to do: every stage's dimension is already fixed by the input space")
            return 0
        if last.get("best_design"):
            shutil.copy(last["best_design"], self.dir / "best_design.yaml")
            (self.dir / "space_final.yaml").write_text(yaml.safe_dump(space.to_config(), sort_keys=False))
            self.echo(f"[search] final design: {self.dir / 'best_design.yaml'}  "
                      f"(peftds train design={self.dir / 'best_design.yaml'})")
        return 0

    # ------------------------------------------------------------------ one stage
    def stage_options(self, spec: StageSpec, space: Space) -> tuple[dict[str, Space], dict[str, str]]:
        spaces, infeasible = {}, {}
        L = self.model_ctx()["layers"]
        for opt, value in spec.options.items():
            try:
                s = space if spec.dimension is None else space.constrain(
                    spec.dimension, value, group=spec.group if spec.dimension == "strategies" else None,
                    where=f"stage '{spec.name}' option '{opt}'")
                s.check(L)
                spaces[opt] = s
            except PeftdsError as e:
                infeasible[opt] = str(e).split(": ", 1)[-1] if isinstance(e, PeftdsError) else str(e)
        return spaces, infeasible

    def sample_stage(self, spec: StageSpec, space: Space, stage_dir: Path) -> dict[str, Any]:
        """Sample (or reload) the stage's designs and write their design files."""
        meta_path = stage_dir / "stage.json"
        space_digest = space.digest()
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("space_digest") != space_digest:
                raise PeftdsError(
                    f"{stage_dir} was sampled from another space ({meta.get('space', {}).get('describe')}); "
                    f"now: {space.describe()}. Use a new search.dir")
            changed = [k for k, old, new in (
                ("search.seed", meta.get("sample_seed"), self.settings["seed"]),
                ("the stage's options", meta.get("options"), plain(spec.options)),
                ("the task set", meta.get("tasks"), self.tasks),
                ("the training regime", meta.get("regime"), self.regime_hash),
            ) if old != new]
            if changed:
                raise PeftdsError(f"{stage_dir} was started with different {', '.join(changed)}; resume it with "
                                  f"the same settings or use a new search.dir")
            if meta.get("n") == self.settings["n"]:
                return meta
            # another N: draws are prefix-stable (draw i depends only on draws < i), so rows stay valid
            self.echo(f"[search] {spec.name}: N changed {meta.get('n')} -> {self.settings['n']}; resampling")
        spaces, infeasible = self.stage_options(spec, space)
        samples: dict[str, list[dict]] = {}
        design_dir = self.dir / "conf" / "design" / _safe(spec.name)
        design_dir.mkdir(parents=True, exist_ok=True)
        notes = {}
        for opt, s in spaces.items():
            stats = sample_designs(s, self.model_ctx()["layers"], self.settings["n"], self.resolve,
                                   seed=self.settings["seed"], stage=spec.name, option=opt,
                                   max_draws=self.settings["max_draws"])
            if not stats.draws:
                infeasible[opt] = f"no feasible design in {self.settings['max_draws']} draws ({stats.last_error})"
                continue
            if stats.exhausted:
                notes[opt] = (f"only {len(stats.draws)} distinct feasible design(s) (asked {self.settings['n']}; "
                              f"{stats.infeasible} infeasible and {stats.duplicates} repeated draws)")
                self.echo(f"[search] {spec.name}/{opt}: {notes[opt]}")
            rows = []
            for d in stats.draws:
                stem = f"{_safe(opt)}-{d.index:03d}"
                name = f"{_safe(spec.name)}-{stem}"
                design_cfg = {"name": name, **d.design}
                header = (f"# sampled by peftds search: stage {spec.name}, option {opt}, index {d.index} "
                          f"(seed {self.settings['seed']}, attempt {d.attempt})\n# {d.plan.compact()}  "
                          f"digest {d.plan.digest()}  trainable {d.plan.trainable_params:,} / {d.plan.budget_params:,}\n")
                body = yaml.safe_dump({"defaults": ["base_hparams", "_self_"], **design_cfg}, sort_keys=False,
                                      default_flow_style=None)
                _write_text_atomic(design_dir / f"{stem}.yaml", header + body)
                rows.append({
                    "option": opt, "index": d.index,
                    "design_file": str((design_dir / f"{stem}.yaml").relative_to(self.dir)),
                    "design_ref": f"{_safe(spec.name)}/{stem}", "digest": d.plan.digest(),
                    "compact": d.plan.compact(), "groups": list(d.plan.groups), "tuned": list(d.plan.tuned),
                    "allocation": d.plan.allocation, "strategies": [list(x) for x in d.plan.strategies],
                    "sizes": group_sizes_text(d.plan), "trainable_params": d.plan.trainable_params,
                    "budget_params": d.plan.budget_params,
                })
            samples[opt] = rows
        if not samples:
            detail = "; ".join(f"{o}: {r}" for o, r in infeasible.items())
            raise PeftdsError(f"stage '{spec.name}': every option is infeasible for this model "
                              f"(L={self.model_ctx()['layers']}, K={space.groups}): {detail}")
        meta = {
            "name": spec.name, "dimension": spec.dimension, "group": spec.group if spec.dimension == "strategies" else None,
            "options": plain(spec.options), "options_order": list(spec.options), "tasks": self.tasks,
            "n": self.settings["n"], "sample_seed": self.settings["seed"], "min_ok": self.settings["min_ok"],
            "bootstrap": self.settings["bootstrap"], "seed": self.settings["seed"], "epochs": self.settings["epochs"],
            "regime": self.regime_hash, "space_digest": space_digest,
            "space": {**space.to_config(), "describe": space.describe()},
            "infeasible": infeasible, "notes": notes,
            "planned": {o: len(r) for o, r in samples.items()}, "samples": samples,
        }
        _write_text_atomic(meta_path, json.dumps(meta, indent=1))
        return meta

    def trials_of(self, spec: StageSpec, meta: Mapping[str, Any]) -> dict[str, Trial]:
        trials: dict[str, Trial] = {}
        for opt in meta["options_order"]:
            for s in meta["samples"].get(opt, []):
                sample = Sample(**s)
                for task in self.tasks:
                    tid = f"{sample.digest}-{task}-s{self.seed}-r{self.regime_hash}"
                    t = trials.setdefault(tid, Trial(tid, task, sample))
                    t.keys.append((spec.name, opt, sample.index, task))
        return trials

    def trial_dir(self, trial_id: str) -> Path:
        return self.dir / "trials" / trial_id

    def row(self, key, trial: Trial, sample: Sample, rec: Mapping[str, Any]) -> dict[str, Any]:
        stage, opt, idx, task = key
        status = _effective_status(rec)
        error = rec.get("error") or ""
        score = rec.get("score")
        if status != rec.get("status"):
            error = f"non-finite score ({score})"
        best = rec.get("best") or {}
        metrics = {k: v for k, v in best.items() if k not in ("epoch", "score")}
        return {
            "stage": stage, "option": opt, "index": idx, "task": task, "trial_id": trial.trial_id,
            "design": sample.compact, "design_hash": sample.digest, "design_file": sample.design_file,
            "group_sizes": "-".join(map(str, sample.groups)), "tuned": ",".join(map(str, sample.tuned)),
            "allocation": sample.allocation,
            "strategies": " | ".join(strategy_label(s) if s else "-" for s in sample.strategies),
            "sizes": sample.sizes, "trainable_params": rec.get("trainable_params") or sample.trainable_params,
            "budget_params": sample.budget_params, "metrics": json.dumps(metrics, sort_keys=True) if metrics else "",
            "score": f"{score:.4f}" if status == "ok" else "", "epochs": self.settings["epochs"], "seed": self.seed,
            "wall_time_s": f"{float(rec.get('wall_time_s') or 0):.1f}", "device": rec.get("device") or "",
            "status": status, "error": str(error).replace("\n", " ")[:500],
        }

    def finished(self, trial: Trial) -> dict[str, Any] | None:
        rec = read_result(self.trial_dir(trial.trial_id))
        if rec is None or rec.get("status") not in FINISHED:
            return None
        return rec

    def reconcile(self, table: TrialTable, trials: Mapping[str, Trial]) -> int:
        """Append a row for every finished trial whose row is missing (after a kill, or a trial shared
        with another stage)."""
        have = table.keys()
        rows = []
        for t in trials.values():
            missing = [k for k in t.keys if k not in have]
            if not missing:
                continue
            rec = self.finished(t)
            if rec is None:
                continue
            rows += [self.row(k, t, t.sample, rec) for k in missing]
        return table.append(rows)

    def trial_overrides(self, trial: Trial, spec: StageSpec) -> list[str]:
        s = trial.sample
        return [
            *self.forward,
            f"design={s.design_ref}",
            f"task={trial.task}",
            "train.eval_split=heldout",
            f"train.epochs={self.settings['epochs']}",
            "train.progress=false",
            f"train.save_params={'true' if self.settings['save_params'] else 'false'}",
            f"+trial={{id: '{trial.trial_id}', stage: '{spec.name}', option: '{s.option}', index: {s.index}, "
            f"design_hash: '{s.digest}', regime: '{self.regime_hash}'}}",
            f"hydra.sweep.subdir=trials/{trial.trial_id}",
            "hydra.job.name=trial",
        ]

    def batch_size(self, pending: int) -> int:
        bs = self.settings.get("batch_size")
        if bs:
            return max(1, int(bs))
        target = str(self.cfg.hydra.launcher.get("_target_", "")) if self.launcher is not None else ""
        if "joblib" in target.lower():
            n_jobs = int(self.cfg.hydra.launcher.get("n_jobs") or -1)
            return max(1, os.cpu_count() or 1) if n_jobs < 0 else n_jobs
        if "submitit" in target.lower():
            return max(1, pending)
        return 1

    def run_stage(self, spec: StageSpec, space: Space) -> dict[str, Any]:
        from peftds.search.report import stage_summary, write_stage_report, markdown_table, verdict

        stage_dir = self.dir / _safe(spec.name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        if spec.name not in self.stages_run:
            self.stages_run.append(spec.name)
            self._save_state()
        self.echo(f"\n[search] === {spec.describe()} on space: {space.describe()}")
        meta = self.sample_stage(spec, space, stage_dir)
        for opt, reason in meta["infeasible"].items():
            self.echo(f"[search] {spec.name}/{opt}: infeasible: {reason}")
        table = TrialTable(stage_dir / "trials.csv")
        trials = self.trials_of(spec, meta)
        if self.settings["retry_failed"]:
            self._reset_failed(table, trials)
        added = self.reconcile(table, trials)
        if added:
            self.echo(f"[search] {spec.name}: recorded {added} row(s) of trials that had finished earlier")
        total_rows = sum(len(t.keys) for t in trials.values())
        pending = [t for t in trials.values() if self._needs_run(t)]
        done_rows = len(table.keys() & {k for t in trials.values() for k in t.keys})
        self.echo(f"[search] {spec.name}: {len(meta['planned'])} feasible option(s), {total_rows} trials "
                  f"({len(trials)} distinct), {done_rows} done, {len(pending)} to run")
        t0 = time.time()
        ran = 0
        bs = self.batch_size(len(pending))
        for start in range(0, len(pending), bs):
            batch = pending[start:start + bs]
            self._launch(batch, spec)
            ran += len(batch)
            self.reconcile(table, trials)
            self._progress(spec, stage_dir, trials, table, ran, len(pending), t0)
        # final summary
        summary = stage_summary(stage_dir)
        next_space, best_file = None, None
        if summary["status"] == "ok" and summary["winner"]:
            w = summary["winner"]
            ws = summary["options"][w]
            if spec.dimension is None:
                next_space = space
            else:
                next_space = space.constrain(spec.dimension, spec.options[w],
                                             group=spec.group if spec.dimension == "strategies" else None)
            hist = {"stage": spec.name, "option": w, "value": plain(spec.options[w]), "mean": round(ws["mean"], 4),
                    "ci": [round(ws["ci_low"], 4), round(ws["ci_high"], 4)], "designs": ws["designs_ok"],
                    "overlap_runner_up": summary["overlap"]}
            from dataclasses import replace as _replace

            next_space = _replace(next_space, name=f"after_{spec.name}", history=(*space.history, hist))
            _write_text_atomic(stage_dir / "space_next.yaml",
                               f"# space after stage {spec.name}: input space + winner {w}\n"
                               f"# next: peftds search stage=<next stage> space={stage_dir / 'space_next.yaml'}\n"
                               + yaml.safe_dump(next_space.to_config(), sort_keys=False, default_flow_style=None))
            best_file = self._write_best(spec, meta, summary, stage_dir)
        _write_text_atomic(stage_dir / "summary.json", json.dumps(summary, indent=1, default=str))
        if self.settings["report"]:
            try:
                write_stage_report(stage_dir)
            except Exception as e:  # a plotting problem must not lose the stage
                self.echo(f"[search] report failed: {type(e).__name__}: {e}")
        self.echo(f"\n[search] stage {spec.name} ({stage_dir}):")
        self.echo(markdown_table(summary, summary.get("values")))
        self.echo(f"[search] {verdict(summary)}")
        return {"summary": summary, "next_space": next_space, "best_design": best_file, "dir": stage_dir}

    def _write_best(self, spec, meta, summary, stage_dir: Path) -> Path | None:
        w = summary["winner"]
        best = summary["options"][w].get("best")
        if not best:
            return None
        sample = next(s for s in meta["samples"][w] if s["index"] == best["index"])
        src = yaml.safe_load((self.dir / sample["design_file"]).read_text())
        src.pop("defaults", None)
        cfg = {"defaults": ["base_hparams", "_self_"], **src, "name": f"best_{_safe(spec.name)}",
               "hparams": self.model_ctx()["hparams"]}
        header = (f"# best design of stage {spec.name}: option {w} (mean {summary['options'][w]['mean']:.2f}), "
                  f"design {best['design']} scored {best['score']:.2f}\n"
                  f"# (mean over {', '.join(self.tasks)} on the held-out slice; concrete group sizes for this model)\n"
                  f"# use: peftds train design={stage_dir / 'best_design.yaml'}\n")
        path = stage_dir / "best_design.yaml"
        _write_text_atomic(path, header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        return path

    def _needs_run(self, t: Trial) -> bool:
        return self.finished(t) is None

    def _reset_failed(self, table: TrialTable, trials: Mapping[str, Trial]) -> None:
        """search.retry_failed: forget failed trials (their rows go, result.json -> result.failed.json)."""
        from peftds.files import RESULT_FILE

        failed = [t for t in trials.values() if _effective_status(self.finished(t)) == "failed"]
        if not failed:
            return
        for t in failed:
            d = self.trial_dir(t.trial_id)
            os.replace(d / RESULT_FILE, d / "result.failed.json")
        n = table.remove({k for t in failed for k in t.keys})
        self.echo(f"[search] retry_failed: {len(failed)} failed trial(s) will run again ({n} row(s) removed)")

    def _launch(self, batch: list[Trial], spec: StageSpec) -> None:
        from hydra.core.utils import JobStatus

        from peftds.train.record import RunRecord

        overrides = [self.trial_overrides(t, spec) for t in batch]
        try:
            rets = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # the launcher itself failed (e.g. a submitit job died)
            rets = [None] * len(batch)
            launch_error = f"launcher error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        else:
            launch_error = None
        self.job_idx += len(batch)
        for t, r in zip(batch, rets):
            if self.finished(t) is not None:
                continue
            if r is not None and r.status == JobStatus.COMPLETED:
                continue  # the job returned without a finished record: it stays pending
            err = launch_error or f"{type(r._return_value).__name__}: {r._return_value}"
            rec = RunRecord(self.trial_dir(t.trial_id), task=t.task, design=t.sample.design_ref)
            rec.update(status="failed", error=err, wall_time_s=0.0)

    def _progress(self, spec, stage_dir, trials, table: TrialTable, ran: int, to_run: int, t0: float) -> None:
        keys = {k for t in trials.values() for k in t.keys}
        mine = [r for r in table.read() if TrialTable.key(r) in keys]
        ok = sum(r["status"] == "ok" for r in mine)
        total = len(keys)
        elapsed = time.time() - t0
        eta = elapsed / ran * (to_run - ran) if ran else float("nan")
        leader = ""
        lead = current_leader(mine, len(self.tasks))
        if lead:
            leader = f" | leader: {lead[0]} {lead[1]:.2f} ({lead[2]} designs)"
        self.echo(f"[{spec.name}] {len(mine)}/{total} trials ({ok} ok, {len(mine) - ok} failed) | "
                  f"{_dur(elapsed)} elapsed, ETA {_dur(eta)}{leader}")

    def _save_state(self) -> None:
        p = self.dir / "search.json"
        state = json.loads(p.read_text()) if p.exists() else {}
        runs = list(state.get("stages_run") or [])
        for s in self.stages_run:
            if s not in runs:
                runs.append(s)
        state["stages_run"] = runs
        _write_text_atomic(p, json.dumps(state, indent=1))


def _effective_status(rec: Mapping[str, Any] | None) -> str | None:
    """A record's status, with an `ok` run whose score is missing or not finite counted as failed."""
    if rec is None:
        return None
    status = rec.get("status")
    score = rec.get("score")
    if status == "ok" and not (isinstance(score, (int, float)) and math.isfinite(score)):
        return "failed"
    return status


def current_leader(rows: Sequence[Mapping[str, str]], n_tasks: int) -> tuple[str, float, int] | None:
    """(option, mean, designs) of the best option so far, over designs with every task ok."""
    per_design: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("score"):
            per_design.setdefault((r["option"], r["index"]), []).append(float(r["score"]))
    by_opt: dict[str, list[float]] = {}
    for (opt, _), scores in per_design.items():
        if len(scores) >= n_tasks:
            by_opt.setdefault(opt, []).append(sum(scores) / len(scores))
    if not by_opt:
        return None
    opt, scores = max(by_opt.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
    return opt, sum(scores) / len(scores), len(scores)


def _write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# =================================================================================== CLI
def _override_key(arg: str) -> str:
    m = re.match(r"^[+~]*([^=]+)", arg)
    return m.group(1) if m else arg


def _primary_groups() -> set[str]:
    from peftds.config.compose import conf_dir

    cfg = yaml.safe_load((conf_dir() / "config.yaml").read_text()) or {}
    groups = set()
    for d in cfg.get("defaults") or []:
        if isinstance(d, dict):
            for k in d:
                groups.add(str(k).split("@")[0].replace("override ", "").strip())
    return groups


def _merge_args(*lists: Sequence[str]) -> list[str]:
    """Later arguments win, keyed by the override key (so stored and new arguments combine)."""
    merged: dict[str, str] = {}
    for lst in lists:
        for a in lst:
            merged.pop(_override_key(a), None)
            merged[_override_key(a)] = a
    return list(merged.values())


def _normalise(argv: Sequence[str], conf_root: Path | None) -> list[str]:
    """Group selections for search/stage/space get `+` when config.yaml has no default for them; a
    YAML path for one of them is copied into <conf_root>/<group>/ and selected by name."""
    primary = _primary_groups()
    out = []
    for a in argv:
        if a in ("-m", "--multirun"):
            continue
        m = re.fullmatch(r"\+*(%s)=(.+)" % "|".join(FILE_GROUPS), a)
        if not m:
            out.append(a)
            continue
        group, value = m.group(1), m.group(2)
        if value.endswith((".yaml", ".yml")) or os.sep in value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise PeftdsError(f"{group} file not found: {path}")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise PeftdsError(f"{group} file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
            if conf_root is None:
                raise PeftdsError("internal: no conf root for file overrides")
            name = f"file_{_safe(path.stem)}"
            dest = conf_root / group / f"{name}.yaml"
            dest.parent.mkdir(parents=True, exist_ok=True)
            if path.resolve() != dest.resolve():
                shutil.copy(path, dest)
            value = name
        plus = "" if group in primary else "+"
        out.append(f"{plus}{group}={value}")
    return out


def _with_defaults(args: list[str]) -> list[str]:
    keys = {_override_key(a) for a in args}
    primary = _primary_groups()
    extra = []
    for group, default in (("search", "default"), ("stage", "grouping"), ("space", "s0")):
        if group not in keys and group not in primary:
            extra.append(f"+{group}={default}")
    return extra + args


def _hydra_session(overrides: list[str]):
    """Compose the config with Hydra (multirun mode) and instantiate the configured launcher."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext, RunMode

    from peftds.config.compose import conf_dir, hydra_error_line

    @contextlib.contextmanager
    def session():
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="search"):
                gh = GlobalHydra.instance().hydra
                try:
                    cfg = gh.compose_config("config", overrides, run_mode=RunMode.MULTIRUN,
                                            with_log_configuration=False)
                except Exception as e:
                    raise PeftdsError(hydra_error_line(e)) from None
                HydraConfig.instance().set_config(cfg)
                ctx = HydraContext(config_loader=gh.config_loader, callbacks=Callbacks(cfg))
                try:
                    launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=trial_job,
                                                                       config=cfg)
                except Exception as e:
                    raise PeftdsError(f"cannot start the Hydra launcher: {hydra_error_line(e)}") from None
                yield cfg, launcher
        finally:
            GlobalHydra.instance().clear()

    return session()


def prepare(argv: Sequence[str]) -> tuple[Path, list[str], list[str]]:
    """(search dir, all overrides for the search process, overrides forwarded to every trial)."""
    argv = list(argv)
    for a in argv:
        k = _override_key(a)
        if k in ("design", "task"):
            raise PeftdsError(f"peftds search samples designs and takes its tasks from search.tasks/search.task_set; "
                              f"drop `{a}`")
    dir_arg = next((a.split("=", 1)[1] for a in argv if _override_key(a) == "search.dir"), None)
    stored: list[str] = []
    if dir_arg:
        sdir = Path(dir_arg).expanduser().resolve()
        state = sdir / "search.json"
        if state.exists():
            stored = list(json.loads(state.read_text()).get("args") or [])
    else:
        from peftds.config.compose import compose

        probe_root = Path(_tmpdir())
        probe = _with_defaults(_normalise(argv, probe_root / "conf"))
        cfg = compose([*probe, f"hydra.searchpath=[file://{probe_root / 'conf'}]"])
        configured = (cfg.get("search") or {}).get("dir")
        stage_name = _safe((cfg.get("stage") or {}).get("name") or "stage")
        sdir = Path(configured or f"outputs/search/{stage_name}/{_args_key(argv)}").expanduser().resolve()
        shutil.rmtree(probe_root, ignore_errors=True)
    conf_root = sdir / "conf"
    conf_root.mkdir(parents=True, exist_ok=True)
    args = _with_defaults(_merge_args(stored, _normalise(argv, conf_root)))
    args = [a for a in args if _override_key(a) != "search.dir"] + [f"search.dir={sdir}"]
    user_paths = []
    rest = []
    for a in args:
        if _override_key(a) == "hydra.searchpath":
            user_paths += [p.strip() for p in a.split("=", 1)[1].strip("[]").split(",") if p.strip()]
        else:
            rest.append(a)
    hydra_args = [
        f"hydra.sweep.dir={sdir}",
        "hydra.sweep.subdir=trials/${hydra.job.num}",
        f"hydra.searchpath=[{','.join([f'file://{conf_root}', *user_paths])}]",
        "hydra.hydra_logging.root.level=WARNING",
        "hydra.job_logging.root.handlers=[file]",
    ]
    all_args = _merge_args(hydra_args, rest)
    forward = [a for a in all_args
               if not _override_key(a).startswith("hydra.") and not _override_key(a).startswith("hydra/")
               and _override_key(a).split(".")[0] not in ("stage", "space") and _override_key(a) != "search.dir"]
    # remember the arguments (file groups already rewritten to names in the search dir) for resume
    state_path = sdir / "search.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"created": _dt.datetime.now().isoformat()}
    state["args"] = [a for a in rest if _override_key(a) != "search.dir" and not a.startswith("hydra/launcher")
                     and not _override_key(a).startswith("hydra.launcher")]
    _write_text_atomic(state_path, json.dumps(state, indent=1))
    return sdir, all_args, forward


NOT_IN_DIR_KEY = ("hydra/launcher", "hydra.launcher.", "hydra.hydra_logging", "hydra.job_logging", "search.batch_size",
                  "search.trial_threads", "search.gpu_slots", "search.report")


def _args_key(argv: Sequence[str]) -> str:
    """The default search dir's name: a hash of the arguments that change what the search computes
    (and of the files they name), so running the same command again resumes the same search."""
    parts = []
    for a in sorted(argv):
        if any(_override_key(a).startswith(p) for p in NOT_IN_DIR_KEY):
            continue
        parts.append(a)
        value = a.split("=", 1)[1] if "=" in a else ""
        if value.endswith((".yaml", ".yml")) and Path(value).expanduser().is_file():
            parts.append(hashlib.sha1(Path(value).expanduser().read_bytes()).hexdigest())
    return "run-" + _hash(parts, 10)


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="peftds-search-")


@contextlib.contextmanager
def _dir_lock(sdir: Path):
    fh = open(sdir / ".search.lock", "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise PeftdsError(f"another peftds search is running in {sdir}") from None
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def run_search(argv: Sequence[str], echo: Callable = print) -> int:
    sdir, overrides, forward = prepare(argv)
    try:
        return _run(sdir, overrides, forward, echo)
    except KeyboardInterrupt:
        echo(f"\n[search] interrupted; resume with: peftds search search.dir={sdir}")
        raise


def _run(sdir: Path, overrides: list[str], forward: list[str], echo: Callable) -> int:
    with _dir_lock(sdir), _hydra_session(overrides) as (cfg, launcher):
        from omegaconf import OmegaConf

        search = Search(cfg, sdir, forward, launcher, echo=echo)
        plain = OmegaConf.to_container(cfg, resolve=False)
        plain.pop("hydra", None)
        _write_text_atomic(sdir / "config.yaml", "# the composed search config (without hydra)\n"
                           + yaml.safe_dump(plain, sort_keys=False))
        return search.run()


def cmd_search(argv: list[str]) -> int:
    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C (the running trial records `interrupted`)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        return run_search(argv, echo=lambda *a: print(*a, flush=True))
    except KeyboardInterrupt:
        print("peftds search: interrupted (finished trials are kept)", file=sys.stderr, flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


CLI_COMMANDS["search"] = cmd_search

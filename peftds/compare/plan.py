"""The runs of a comparison: designs x tasks x seeds in the final regime (train on the task's training
set, score on dev), each with a stable id, checked before anything trains.

A design entry is a design name (conf/design/<name>.yaml) or a YAML path, optionally followed by
`@<budget>`: a budget option (`bitfit@p0_1`, conf/budget/p0_1.yaml) or a fraction (`bitfit@0.001`).
Without `@` the design takes the comparison's budget (`budget=` of the command, default p0_5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from peftds.config.compose import conf_dir, group_options, names_peft_config, plain
from peftds.config.schema import convert
from peftds.config.sections import CompareConfig
from peftds.data.tasks import known_tasks, load_task, task_set
from peftds.errors import PeftdsError
from peftds.run_config import RunConfig
from peftds.search.settings import COSMETIC_DATA_KEYS, COSMETIC_MODEL_KEYS, COSMETIC_TRAIN_KEYS, config_hash
from peftds.search.stages import safe_name
from peftds.search.trial import trial_id

# what every run of a comparison is: the final regime (whole training set, scored on dev)
FINAL_REGIME = ["train.eval_split=validation", "data.heldout=0"]
SEQ2SEQ_ARCHS = ("t5", "bart")


@dataclass(frozen=True)
class DesignEntry:
    """One row of the table: a design and, optionally, its own budget."""

    text: str  # as configured, e.g. "bitfit@p0_1"
    ref: str  # the design: a name or a YAML path
    budget: str | None = None  # a budget option name or a fraction (as text)
    name: str | None = None  # a file's own `name:` (None: the file's stem)
    where: str | None = None  # the folders that tell two files of the same name apart

    @property
    def is_file(self) -> bool:
        return self.ref.endswith((".yaml", ".yml")) or os.sep in self.ref

    @property
    def label(self) -> str:
        """The row name: the design's own name (a file: its `name:`, else its stem; a peft adapter config: its
        folder), the folders that tell it from another file of that name, and its own budget, if any."""
        path = Path(self.ref)
        stem = path.parent.name if path.stem == "adapter_config" else path.stem
        name = self.name or (stem if self.is_file else self.ref)
        name += f" ({self.where})" if self.where else ""
        return f"{name}@{self.budget}" if self.budget else name

    def overrides(self, lr: Mapping[str, float]) -> list[str]:
        """The overrides that select this design, its budget and its own learning rate."""
        own_lr = [f"train.lr={lr[self.label]}"] if self.label in lr else []
        return [f"design={self.ref}", *self.budget_overrides(), *own_lr]

    def budget_overrides(self) -> list[str]:
        if self.budget is None:
            return []
        if self.budget in group_options("budget"):
            return [f"budget={self.budget}"]
        return [f"budget.fraction={self.budget}"]


def parse_design(text: str) -> DesignEntry:
    """`name`, `path.yaml`, `name@p0_1` or `name@0.001` -> DesignEntry (unknown names and budgets are errors)."""
    text = str(text).strip()
    ref, sep, budget = text.rpartition("@") if "@" in text else (text, "", "")
    if not ref or (sep and not budget):
        raise PeftdsError(f"compare.designs: bad entry '{text}' (a design name or YAML path, optionally @<budget>)")
    entry = DesignEntry(text, ref, budget or None)
    if entry.is_file:
        if not (Path(ref).expanduser().is_file() or names_peft_config(ref)):
            raise PeftdsError(f"compare.designs: design file not found: {ref}")
        entry = replace(entry, name=own_name(Path(ref).expanduser()))
    elif ref not in group_options("design"):
        raise PeftdsError(f"compare.designs: unknown design '{ref}' (known: {', '.join(group_options('design'))})")
    fraction = re.fullmatch(r"0?\.\d+|\d+(\.\d*)?[eE]-?\d+", budget or "") and 0 < float(budget) < 1
    if budget and budget not in group_options("budget") and not fraction:
        raise PeftdsError(
            f"compare.designs: '{text}': budget '{budget}' is neither a budget option "
            f"({', '.join(group_options('budget'))}) nor a fraction in (0, 1)"
        )
    return entry


def own_fraction(run: RunConfig) -> float:
    """The budget of a design that sets its sizes itself (a peft LoRA config): its own trainable share of the
    backbone, counted on the meta device."""
    from peftds.design.apply import build

    built = build(run.model, run.design_config, run.budget.fraction, num_labels=2, device="meta")
    return built.plan.budget_params / built.plan.backbone_params


def own_name(path: Path) -> str | None:
    """The `name:` a design file gives itself (None when it names none or cannot be read: composing it
    reports a broken file with its own message)."""
    try:
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(name) if isinstance(name, str | int) and str(name) else None


def distinct_rows(entries: list[DesignEntry]) -> list[DesignEntry]:
    """Entries whose labels clash get the nearest folders of their files that tell them apart, e.g.
    two searches' best_design.yaml: `best_grouping (run-a/grouping)`, `best_grouping (run-b/grouping)`."""
    out = list(entries)
    for label in {e.label for e in entries if [x.label for x in entries].count(e.label) > 1}:
        clash = [i for i, e in enumerate(entries) if e.label == label and e.is_file]
        paths = [Path(entries[i].ref).expanduser().resolve() for i in clash]
        for depth in range(1, max((len(p.parts) for p in paths), default=1)):
            wheres = ["/".join(p.parent.parts[-depth:]) for p in paths]
            if len(set(wheres)) == len(wheres):
                for i, w in zip(clash, wheres):
                    out[i] = replace(entries[i], where=w)
                break
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        twice = sorted({x for x in labels if labels.count(x) > 1})
        raise PeftdsError(
            f"compare.designs repeats a design: {', '.join(twice)} (list each once; two design files of the same "
            "name are told apart by their folders, a file and a conf/design name are not: rename the file's `name:`)"
        )
    return out


def compare_tasks(settings: CompareConfig) -> list[str]:
    """The table's tasks: compare.tasks, else the task set; every one known, none repeated."""
    if settings.tasks is not None:
        tasks = [str(t) for t in settings.tasks]
        if not tasks:
            raise PeftdsError("compare.tasks is empty (name at least one task, or null for compare.task_set)")
        bad = [t for t in tasks if t not in known_tasks(conf_dir())]
        if bad:
            raise PeftdsError(f"compare.tasks: unknown task(s) {bad} (known: {', '.join(known_tasks(conf_dir()))})")
    else:
        tasks = task_set(settings.task_set, conf_dir())
    if len(set(tasks)) != len(tasks):
        raise PeftdsError(f"compare.tasks repeats a task: {tasks}")
    return tasks


def check_seeds(seeds: Sequence[int]) -> list[int]:
    if not seeds:
        raise PeftdsError("compare.seeds is empty (give at least one seed, e.g. [1,2,3])")
    if any(s < 0 for s in seeds):
        raise PeftdsError(f"compare.seeds must be >= 0, got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise PeftdsError(f"compare.seeds repeats a seed: {list(seeds)}")
    return list(seeds)


def regime_of(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What besides design, budget, task and seed decides a run's result: model, data and training."""
    train = {k: v for k, v in (cfg.get("train") or {}).items() if k not in COSMETIC_TRAIN_KEYS}
    data = {k: v for k, v in (cfg.get("data") or {}).items() if k not in COSMETIC_DATA_KEYS}
    model = {k: v for k, v in (cfg.get("model") or {}).items() if k not in COSMETIC_MODEL_KEYS}
    return {"model": model, "data": data, "train": train}


def design_digest(design_config: Mapping[str, Any], fraction: float, lr: float | None = None) -> str:
    """A design's identity in a comparison: its configuration (name and model left out), its budget and
    its own learning rate (compare.lr), if any."""
    d = {k: v for k, v in design_config.items() if k not in ("name", "model")}
    return config_hash({"design": d, "budget": fraction, **({"lr": lr} if lr is not None else {})}, 10)


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    design: DesignEntry
    task: str
    seed: int
    digest: str


@dataclass
class ComparePlan:
    """Every run of a comparison, and what the table needs to know about its setting."""

    settings: CompareConfig
    model: str
    arch: str | None
    tasks: list[str]
    seeds: list[int]
    designs: list[DesignEntry]
    fractions: dict[str, float]  # per design label
    regime: dict[str, Any]
    epochs: int
    max_train_samples: int | None
    runs: list[PlannedRun] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # the data section (with its folder)
    full: set[str] = field(default_factory=set)  # labels of full fine-tuning designs (no budget)
    notes: list[str] = field(default_factory=list)  # settings the plan ignored, and why
    max_steps: int = -1  # train.max_steps: > 0 cuts every run after that many optimizer steps

    @property
    def length(self) -> str:
        """How long each run trains, as a header says it (train.max_steps cuts the epochs short)."""
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return f"at most {self.max_steps} steps (train.max_steps cuts {epochs})" if self.max_steps > 0 else epochs

    @property
    def regime_hash(self) -> str:
        return config_hash(self.regime)

    @property
    def task_set_name(self) -> str | None:
        return None if self.settings.tasks is not None else self.settings.task_set


Composer = Callable[[list[str]], Any]  # overrides -> composed config


def build_plan(compose: Composer, overrides: Sequence[str]) -> ComparePlan:
    """The comparison's runs from the command's overrides; every design is composed and checked
    (RunConfig) against the comparison's model before anything trains."""
    overrides = [*overrides, *FINAL_REGIME]
    base = compose(overrides)
    settings = convert(CompareConfig, plain(base.get("compare")))
    tasks = compare_tasks(settings)
    seeds = check_seeds(settings.seeds)
    if not settings.designs:
        raise PeftdsError("compare.designs is empty (name at least one design)")
    entries = distinct_rows([parse_design(d) for d in settings.designs])
    labels = [e.label for e in entries]
    ignored = [label for label in settings.lr if label not in labels]
    for label, lr in settings.lr.items():
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
            raise PeftdsError(f"compare.lr.{label} must be a positive number, got {lr!r}")
    run0 = RunConfig.from_composed(base)
    if run0.train.stop_epoch is not None:  # a stopped run never finishes its row
        raise PeftdsError("train.stop_epoch cannot be set for a comparison: its runs train train.epochs")
    model, arch = run0.model.name, run0.model.arch
    if arch not in SEQ2SEQ_ARCHS:
        gen = [t for t in tasks if load_task(t, conf_dir()).kind == "generation"]
        if gen:
            raise PeftdsError(f"compare.tasks: {gen} need a text-to-text model; model {model} is {arch}")
    regime = regime_of({k: plain(base.get(k)) for k in ("model", "data", "train")})
    plan = ComparePlan(settings, model, arch, tasks, seeds, entries, {}, regime, run0.train.epochs,
                       run0.data.max_train_samples)  # fmt: skip
    plan.data = dict(plain(base.get("data")) or {})
    if ignored:  # a preset's setting for a design the command left out of compare.designs
        plan.notes.append(f"compare.lr for {', '.join(ignored)} ignored: not in compare.designs ({', '.join(labels)})")
    plan.max_steps = run0.train.max_steps
    for e in entries:
        run = RunConfig.from_composed(compose([*overrides, *e.overrides(settings.lr)]))
        made_for = run.design_config.get("model")
        if made_for and made_for != model:
            raise PeftdsError(
                f"compare.designs: '{e.text}' was made for model {made_for}, the comparison is on {model}"
            )
        fraction = own_fraction(run) if run.design_config.get("fixed_sizes") else run.budget.fraction
        plan.fractions[e.label] = fraction
        if run.design_config.get("full"):
            plan.full.add(e.label)
        digest = design_digest(run.design_config, fraction, settings.lr.get(e.label))
        for task in tasks:
            for seed in seeds:
                rid = f"{safe_name(e.label)}-{trial_id(digest, task, seed, plan.regime_hash)}"
                plan.runs.append(PlannedRun(rid, e, task, seed, digest))
    return plan

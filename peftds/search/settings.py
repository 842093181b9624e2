"""What a search reads from the composed config, turned into plain values once (SearchSetup.from_config).

Nothing past SearchSetup touches an OmegaConf object: the search, its stages and trials work on the
dataclasses and plain dicts built here.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftds.config.compose import conf_dir, plain
from peftds.config.schema import convert
from peftds.config.sections import COSMETIC_DATA_KEYS, COSMETIC_MODEL_KEYS, COSMETIC_TRAIN_KEYS, SearchConfig
from peftds.data.tasks import known_tasks, task_set
from peftds.errors import PeftdsError
from peftds.run_config import RunConfig
from peftds.search.decision import DecisionSettings, Fidelity
from peftds.search.racing import RaceSettings

REGIME_SECTIONS = ("model", "budget", "data", "train")


def search_settings(raw: Mapping[str, Any] | None) -> SearchConfig:
    """The `search` section, checked (known keys, types, ranges: see peftds.config.sections.SearchConfig)."""
    settings = convert(SearchConfig, raw)
    race_settings(settings)  # the race's own checks, before anything is sampled
    decision_settings(settings)
    fidelity_of(settings)
    return settings


def decision_settings(settings: SearchConfig) -> DecisionSettings:
    """How a stage is decided (search.tolerance, alpha, sequential, first_designs, round_growth); a racing
    stage is decided by its race, so its verdict takes one look at the designs the race ran."""
    return DecisionSettings(
        tolerance=settings.tolerance,
        alpha=settings.alpha,
        first=settings.first_designs,
        growth=settings.round_growth,
        sequential=settings.sequential and not settings.racing,
    )


def fidelity_of(settings: SearchConfig) -> Fidelity | None:
    """The multi-fidelity plan of a sequential stage (search.cheap_epochs, continue_share); None: every trial
    trains search.epochs."""
    k = settings.cheap_epochs
    if k is None:
        return None
    if k >= settings.epochs:
        raise PeftdsError(f"search.cheap_epochs ({k}) must be below search.epochs ({settings.epochs})")
    if settings.racing:
        raise PeftdsError("search.cheap_epochs decides the looks of the stage decision: set search.racing=false")
    return Fidelity(cheap_epochs=k, epochs=settings.epochs, share=settings.continue_share)


def race_settings(settings: SearchConfig) -> RaceSettings:
    """How a racing stage races (search.racing_*). Epoch fidelity stays a replay knob: trials train
    search.epochs epochs (they cannot stop after epoch k yet)."""
    return RaceSettings(
        delta=settings.racing_delta,
        round_size=settings.racing_round_size,
        min_designs=settings.racing_min_designs,
        method=settings.racing_method,
    )


def min_ok_count(settings: SearchConfig) -> int:
    """Complete designs an option needs for a winner: search.min_ok as a count (a share of n when < 1)."""
    return max(1, math.ceil(settings.min_ok * settings.n) if settings.min_ok < 1 else int(settings.min_ok))


def search_tasks(settings: SearchConfig) -> list[str]:
    """The tasks every design is trained on: search.tasks, else the task set (conf_dir() honours PEFTDS_CONF)."""
    if settings.tasks is not None:
        tasks = [str(t) for t in settings.tasks]
        if not tasks:
            raise PeftdsError("search.tasks is empty (name at least one task, or null for search.task_set)")
        known = known_tasks(conf_dir())
        bad = [t for t in tasks if t not in known]
        if bad:
            raise PeftdsError(f"search.tasks names unknown task(s) {bad} (known: {', '.join(known)})")
    else:
        tasks = task_set(str(settings.task_set), conf_dir())
    if len(set(tasks)) != len(tasks):
        raise PeftdsError(f"search tasks repeat a task: {tasks}")
    return tasks


def regime_of(sections: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """What (besides design, task and seed) determines a trial's result: model, budget, data, training."""
    train = {k: v for k, v in (sections.get("train") or {}).items() if k not in COSMETIC_TRAIN_KEYS}
    train.update(epochs=int(epochs), eval_split="heldout")
    data = {k: v for k, v in (sections.get("data") or {}).items() if k not in COSMETIC_DATA_KEYS}
    model = sections.get("model")
    if isinstance(model, Mapping):
        model = {k: v for k, v in model.items() if k not in COSMETIC_MODEL_KEYS}
    return {"model": model, "budget": sections.get("budget"), "data": data, "train": train}


def config_hash(obj: Any, n: int = 8) -> str:
    """A short stable hash of a JSON-able object (trial ids and search dir names depend on it: never change it)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


@dataclass
class SearchSetup:
    """Everything a search needs from the composed config, as plain values."""

    settings: SearchConfig
    tasks: list[str]
    seed: int  # the global `seed` (part of every trial id)
    regime: dict[str, Any]
    model: dict[str, Any]
    budget_fraction: float
    hparams: dict[str, Any]  # the strategy hyper-parameters every sampled design gets (design.hparams)
    space: dict[str, Any]
    stage: dict[str, Any]
    data: dict[str, Any]
    launcher_target: str = ""
    launcher_n_jobs: int | None = None

    @property
    def regime_hash(self) -> str:
        return config_hash(self.regime)

    @classmethod
    def from_config(cls, cfg: Any) -> SearchSetup:
        """Read the composed config (an OmegaConf object or a plain mapping) in one place; every section is
        checked (RunConfig) before anything is sampled or trained."""
        settings = search_settings(cfg.get("search"))
        train = RunConfig.from_composed(cfg).train
        if train.stop_epoch is not None:  # a trial's fidelity is the stage's choice
            raise PeftdsError(
                "train.stop_epoch cannot be set for a whole search: its trials train search.epochs "
                "(search.cheap_epochs stops a stage's trials early)"
            )
        if settings.cheap_epochs is not None and train.max_steps > 0:
            raise PeftdsError(
                f"search.cheap_epochs stops trials after an epoch: train.max_steps={train.max_steps} replaces the "
                "epoch schedule (set train.max_steps=-1)"
            )
        tasks = search_tasks(settings)
        sections = {k: plain(cfg.get(k)) for k in REGIME_SECTIONS}
        launcher = (cfg.get("hydra") or {}).get("launcher") or {}  # only two scalars: no need to resolve it all
        n_jobs = launcher.get("n_jobs")
        return cls(
            settings=settings,
            tasks=tasks,
            seed=int(cfg.get("seed")),
            regime=regime_of(sections, settings.epochs),
            model=dict(sections["model"] or {}),
            budget_fraction=float((sections["budget"] or {})["fraction"]),
            hparams=dict(plain((cfg.get("design") or {}).get("hparams")) or {}),
            space=dict(plain(cfg.get("space")) or {}),
            stage=dict(plain(cfg.get("stage")) or {}),
            data=dict(sections["data"] or {}),
            launcher_target=str(launcher.get("_target_") or ""),
            launcher_n_jobs=None if n_jobs is None else int(n_jobs),
        )

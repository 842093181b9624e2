"""A stage's designs: the model context they are resolved against, sampling N designs per option, the
design files trials train (a Hydra `design` group in the search dir), stage.json and the best design."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from peftds.design.apply import layer_shapes
from peftds.design.budget import budget_params
from peftds.design.plan import Design
from peftds.design.space import Space
from peftds.errors import PeftdsError
from peftds.files import BEST_DESIGN, DESIGN_CONF_DIR, STAGE_FILE, TRIALS_FILE, read_json, write_text_atomic
from peftds.model.backbones import Backbone, build_model
from peftds.model.strategies import LETTERS, NAMES
from peftds.search.sampler import sample_designs
from peftds.search.settings import SearchSetup, min_ok_count, race_settings
from peftds.search.stages import StageSpec, safe_name
from peftds.search.stats import read_table

DESIGN_DEFAULTS = ["base_hparams", "_self_"]


@dataclass
class Sample:
    """One sampled design of a stage option (as stored in stage.json)."""

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
    attempt: int = 0  # the sampler's attempt that gave this design (paired: same attempt = exact pair)


@dataclass
class ModelContext:
    """The backbone's layer shapes (built on the meta device, once) that designs are resolved against."""

    shapes: list[Any]
    backbone_params: int
    budget: int
    hparams: dict[str, Any]

    @property
    def layers(self) -> int:
        return len(self.shapes)

    @classmethod
    def build(cls, config: SearchSetup) -> ModelContext:
        bb = Backbone(build_model(config.model, num_labels=2, device="meta"))
        shapes = layer_shapes(bb)
        n = bb.backbone_params()
        hp = dict(config.hparams)
        # validates the strategy hyper-parameters before any sampling
        Design.from_config({"name": "hparams", "grouping": {"groups": 1}, "strategies": [["lora"]], "hparams": hp})
        return cls(shapes, n, budget_params(config.budget_fraction, n), hp)

    def resolve(self, design: Mapping[str, Any]) -> Any:
        """The Plan of a sampled design (raises InfeasibleDesign when it cannot be realised)."""
        d = Design.from_config({"name": "sample", **design, "hparams": self.hparams})
        return d.resolve(self.shapes, self.backbone_params, self.budget)


def group_sizes_text(plan: Any) -> str:
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


def option_spaces(spec: StageSpec, space: Space, layers: int) -> tuple[dict[str, Space], dict[str, str]]:
    """Per option the space (input space ∧ option) to sample from, and the options that are infeasible."""
    spaces, infeasible = {}, {}
    for opt, value in spec.options.items():
        try:
            s = space
            if spec.dimension is not None:
                group = spec.group if spec.dimension == "strategies" else None
                s = space.constrain(spec.dimension, value, group=group, where=f"stage '{spec.name}' option '{opt}'")
            s.check(layers)
            spaces[opt] = s
        except PeftdsError as e:
            infeasible[opt] = str(e).split(": ", 1)[-1]
    return spaces, infeasible


def pair_record(samples: Mapping[str, list[Mapping[str, Any]]]) -> dict[str, Any]:
    """Which sample indices form exact pairs: every option that has design i kept the same attempt, so
    the designs share every draw their options do not fix (an infeasible or repeated draw moved one on)."""
    attempts: dict[int, set[int]] = {}
    for rows in samples.values():
        for r in rows:
            attempts.setdefault(int(r["index"]), set()).add(int(r["attempt"]))
    exact = sorted(i for i, a in attempts.items() if len(a) == 1)
    return {"exact": exact, "inexact": sorted(set(attempts) - set(exact))}


def changed_settings(meta: Mapping[str, Any], config: SearchSetup, stage_dir: Path) -> list[str]:
    """The settings that decide what a stage's trials compute and differ from those it was started with
    (stage.json): the global seed, search.seed, the task set and the training regime."""
    trial_seed = meta.get("trial_seed")
    if trial_seed is None:  # a stage.json of an older version: the seed its rows were trained with
        seeds = set(read_table(Path(stage_dir) / TRIALS_FILE).get("seed", []))
        trial_seed = int(seeds.pop()) if len(seeds) == 1 else None
    changed = []
    for name, old, new in (
        ("seed", trial_seed, config.seed),
        ("search.seed", meta.get("sample_seed"), config.settings.seed),
    ):
        if old is not None and old != new:
            changed.append(f"{name} ({old}, now {new})")
    if meta.get("tasks") != config.tasks:
        changed.append("the task set")
    if meta.get("regime") != config.regime_hash:
        changed.append("the training regime")
    return changed


class StageDesigns:
    """Samples (or reloads) a stage's designs and writes their design files and stage.json."""

    def __init__(self, config: SearchSetup, search_dir: Path, model: ModelContext, echo: Callable[..., Any]):
        self.config = config
        self.settings = config.settings
        self.dir = Path(search_dir)
        self.model = model
        self.echo = echo

    def load_or_sample(self, spec: StageSpec, space: Space, stage_dir: Path) -> dict[str, Any]:
        """stage.json of the stage: reloaded when it was sampled with the same settings, else (re)sampled."""
        meta = read_json(stage_dir / STAGE_FILE) if (stage_dir / STAGE_FILE).exists() else None
        if meta is not None:
            self.check_same(meta, spec, space, stage_dir)
            if meta.get("n") == self.settings.n:
                return meta
            # another N: draws are prefix-stable (draw i depends only on draws < i), so rows stay valid
            self.echo(f"[search] {spec.name}: N changed {meta.get('n')} -> {self.settings.n}; resampling")
        return self.sample(spec, space, stage_dir)

    def check_same(self, meta: Mapping[str, Any], spec: StageSpec, space: Space, stage_dir: Path) -> None:
        if meta.get("space_digest") != space.digest():
            raise PeftdsError(
                f"{stage_dir} was sampled from another space ({meta.get('space', {}).get('describe')}); "
                f"now: {space.describe()}. Use a new search.dir"
            )
        changed = changed_settings(meta, self.config, stage_dir)
        if bool(meta.get("paired", False)) != self.settings.paired:
            changed.append("search.paired")
        if meta.get("options") != spec.options:
            changed.append("the stage's options")
        if changed:
            raise PeftdsError(
                f"{stage_dir} was started with different {', '.join(changed)}; resume it with "
                f"the same settings or use a new search.dir"
            )

    def sample(self, spec: StageSpec, space: Space, stage_dir: Path) -> dict[str, Any]:
        s = self.settings
        spaces, infeasible = option_spaces(spec, space, self.model.layers)
        samples: dict[str, list[dict]] = {}
        design_dir = self.dir / DESIGN_CONF_DIR / safe_name(spec.name)
        design_dir.mkdir(parents=True, exist_ok=True)
        notes = {}
        for opt, opt_space in spaces.items():
            stats = sample_designs(
                opt_space,
                self.model.layers,
                s.n,
                self.model.resolve,
                seed=s.seed,
                stage=spec.name,
                option=opt,
                max_draws=s.max_draws,
                paired=s.paired,
            )
            if not stats.draws:
                infeasible[opt] = f"no feasible design in {s.max_draws} draws ({stats.last_error})"
                continue
            if stats.exhausted:
                notes[opt] = (
                    f"only {len(stats.draws)} distinct feasible design(s) (asked {s.n}; "
                    f"{stats.infeasible} infeasible and {stats.duplicates} repeated draws)"
                )
                self.echo(f"[search] {spec.name}/{opt}: {notes[opt]}")
            samples[opt] = [self.write_design(spec, opt, d, design_dir) for d in stats.draws]
        if not samples:
            detail = "; ".join(f"{o}: {r}" for o, r in infeasible.items())
            raise PeftdsError(
                f"stage '{spec.name}': every option is infeasible for this model "
                f"(L={self.model.layers}, K={space.groups}): {detail}"
            )
        meta = {
            "name": spec.name,
            "dimension": spec.dimension,
            "group": spec.group if spec.dimension == "strategies" else None,
            "options": spec.options,
            "options_order": list(spec.options),
            "tasks": self.config.tasks,
            "n": s.n,
            "sample_seed": s.seed,
            "paired": s.paired,
            "pairs": pair_record(samples) if s.paired else None,
            "trial_seed": self.config.seed,  # the global seed every trial trains with (part of its id)
            "min_ok": min_ok_count(s),
            "bootstrap": s.bootstrap,
            "seed": s.seed,
            "epochs": s.epochs,
            "regime": self.config.regime_hash,
            "space_digest": space.digest(),
            "space": {**space.to_config(), "describe": space.describe()},
            "infeasible": infeasible,
            "notes": notes,
            "planned": {o: len(r) for o, r in samples.items()},
            # for the record: a race takes prefixes of the samples, and its decisions are recomputed from the
            # rows on every run (race.json holds the settings of the latest one)
            "racing": asdict(race_settings(s)) if s.racing else None,
            "samples": samples,
        }
        write_text_atomic(stage_dir / STAGE_FILE, json.dumps(meta, indent=1))
        return meta

    def write_design(self, spec: StageSpec, opt: str, draw: Any, design_dir: Path) -> dict[str, Any]:
        """Write one draw as a design config file; returns its Sample fields (stage.json)."""
        plan = draw.plan
        stem = f"{safe_name(opt)}-{draw.index:03d}"
        header = (
            f"# sampled by peftds search: stage {spec.name}, option {opt}, index {draw.index} "
            f"(seed {self.settings.seed}, attempt {draw.attempt})\n# {plan.compact()}  "
            f"digest {plan.digest()}  trainable {plan.trainable_params:,} / {plan.budget_params:,}\n"
        )
        body = {"defaults": DESIGN_DEFAULTS, "name": f"{safe_name(spec.name)}-{stem}", **draw.design}
        path = design_dir / f"{stem}.yaml"
        write_text_atomic(path, header + yaml.safe_dump(body, sort_keys=False, default_flow_style=None))
        return {
            "option": opt,
            "index": draw.index,
            "attempt": draw.attempt,
            "design_file": str(path.relative_to(self.dir)),
            "design_ref": f"{safe_name(spec.name)}/{stem}",
            "digest": plan.digest(),
            "compact": plan.compact(),
            "groups": list(plan.groups),
            "tuned": list(plan.tuned),
            "allocation": plan.allocation,
            "strategies": [list(x) for x in plan.strategies],
            "sizes": group_sizes_text(plan),
            "trainable_params": plan.trainable_params,
            "budget_params": plan.budget_params,
        }

    def write_best(
        self, spec: StageSpec, meta: Mapping[str, Any], summary: Mapping[str, Any], stage_dir: Path
    ) -> Path | None:
        """best_design.yaml of the stage: the best design of the winning option, concrete for this model."""
        w = summary["winner"]
        best = summary["options"][w].get("best")
        if not best:
            return None
        sample = next(s for s in meta["samples"][w] if s["index"] == best["index"])
        src = yaml.safe_load((self.dir / sample["design_file"]).read_text())
        src.pop("defaults", None)
        model = self.config.model.get("name")
        cfg = {
            "defaults": DESIGN_DEFAULTS,
            **src,
            "name": f"best_{safe_name(spec.name)}",
            # the model it was made for: `peftds train design=<this file>` selects it (an explicit model= wins)
            **({"model": model} if model else {}),
            "hparams": self.model.hparams,
        }
        path = stage_dir / BEST_DESIGN
        header = (
            f"# best design of stage {spec.name}: option {w} (mean {summary['options'][w]['mean']:.2f}), "
            f"design {best['design']} scored {best['score']:.2f}\n"
            f"# (mean over {', '.join(self.config.tasks)} on the held-out slice; concrete group sizes for model "
            f"{model})\n"
            f"# use: peftds train design={path} task=<task>\n"
        )
        write_text_atomic(path, header + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None))
        return path

"""A command's composed config turned into typed objects, once, at the command's entry.

Below this point no module sees an OmegaConf object: a training job takes a :class:`RunConfig`
(typed model, budget, design, task, data and training settings). Building one checks every section,
so a bad value stops here, before any model or dataset loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peftds.config.schema import convert
from peftds.config.sections import BudgetConfig, DataConfig, ModelConfig, TrainConfig
from peftds.data.tasks import Task
from peftds.design.from_peft import resolve_peft_design
from peftds.design.plan import Design
from peftds.errors import PeftdsError
from peftds.model.backbones import check_shape

# Top-level keys of the config tree: the groups (each command composes its own), `seed`, `format` (inspect)
# and `trial` (a search trial's identity).
TOP_LEVEL_KEYS = (
    "model", "budget", "design", "task", "data", "train", "seed", "format", "trial",
    "search", "stage", "space", "bench", "compare",
)  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run (or an inspect) needs, typed and checked."""

    model: ModelConfig
    budget: BudgetConfig
    design: Design
    design_config: dict[str, Any]  # the design as configured (what a run records and a search writes)
    task: Task | None
    data: DataConfig
    train: TrainConfig
    seed: int = 42
    trial: dict[str, Any] | None = None  # set for a search trial: its identity
    config: dict[str, Any] = field(default_factory=dict, compare=False)  # the whole resolved config, for records

    @classmethod
    def from_composed(cls, cfg: Any) -> RunConfig:
        """Check and convert a composed config (OmegaConf or plain mapping)."""
        from omegaconf import OmegaConf

        plain: dict[str, Any] = {}
        for key in cfg:
            if key == "hydra":  # Hydra's own node (run-time values such as hydra.job.num) is not ours
                continue
            value = cfg[key] if not hasattr(cfg, "_metadata") else OmegaConf.select(cfg, key, throw_on_missing=False)
            try:
                plain[key] = OmegaConf.to_container(value, resolve=True) if hasattr(value, "_metadata") else value
            except Exception as e:  # an interpolation that cannot resolve, e.g. a missing environment variable
                raise PeftdsError(f"config: {key}: {str(e).splitlines()[0]}") from None
        return cls.from_mapping(plain)

    @classmethod
    def from_mapping(cls, plain: Mapping[str, Any]) -> RunConfig:
        plain = dict(plain)
        plain.pop("hydra", None)
        unknown = sorted(set(plain) - set(TOP_LEVEL_KEYS))
        if unknown:
            raise PeftdsError(f"unknown top-level key(s) {', '.join(unknown)} (known: {', '.join(TOP_LEVEL_KEYS)})")
        seed = plain.get("seed", 42)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise PeftdsError(f"seed must be an integer, got {seed!r}")
        model = convert(ModelConfig, plain.get("model"))
        design_cfg = resolve_peft_design(plain.get("design") or {}, model)  # a peft config: its design here
        plain["design"] = design_cfg
        task_cfg = plain.get("task")
        model = convert(ModelConfig, plain.get("model"))
        check_shape(model)
        return cls(
            model=model,
            budget=convert(BudgetConfig, plain.get("budget")),
            design=Design.from_config(design_cfg),
            design_config=design_cfg,
            task=Task.from_config(task_cfg) if task_cfg else None,
            data=convert(DataConfig, plain.get("data")),
            train=convert(TrainConfig, plain.get("train")),
            seed=seed,
            trial=plain.get("trial"),
            config=plain,
        )

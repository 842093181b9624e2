"""Search stages (SPEC §5): a stage config (one dimension, its options) or a chain of them (stage=all)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftds.config.compose import reject_unknown_keys
from peftds.design.space import Space
from peftds.errors import PeftdsError

STAGE_KEYS = {"name", "dimension", "group", "options", "chain", "stages", "note"}
STAGE_DIMENSIONS = {
    "none": None,
    "grouping": "grouping",
    "allocation": "allocation",
    "tuned": "tuned",
    "tunable": "tuned",
    "strategies": "strategies",
    "strategy": "strategies",
}


def safe_name(name: str) -> str:
    """A file-name-safe version of a stage or option name (stage dirs, design files)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name))


@dataclass
class StageSpec:
    """One stage: the dimension it decides and its options (option name -> constraint value)."""

    name: str
    dimension: str | None  # None | grouping | allocation | tuned | strategies
    group: int | str | None  # strategies: 1..K or "each"
    options: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "stage") -> StageSpec:
        """Validate a (plain) stage config; every problem names the key or value."""
        cfg = dict(cfg or {})
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
            base.constrain(
                self.dimension,
                value,
                group=g if self.dimension == "strategies" else None,
                where=f"stage '{self.name}' option '{opt}'",
            )

    def for_group(self, g: int) -> StageSpec:
        """The stage of a strategies stage with group=each for group g (named <name>_g<g>)."""
        base = self.name if self.name.endswith(f"_g{g}") else re.sub(r"_g\d+$", "", self.name) + f"_g{g}"
        return StageSpec(base, self.dimension, g, dict(self.options))

    def describe(self) -> str:
        """One line for the log, e.g. `stage grouping (grouping, 5 options)`."""
        dim = self.dimension or "none"
        if self.dimension == "strategies":
            dim += f" of group {self.group}"
        return f"stage {self.name} ({dim}, {len(self.options)} options)"


def stage_chain(stage_cfg: Mapping[str, Any] | None) -> tuple[list[StageSpec], bool]:
    """The stage specs to run in order (from the plain `stage` config), and whether this is a chain (stage=all)."""
    cfg = dict(stage_cfg or {})
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
                raise PeftdsError(f"stage '{name}': chain names stage '{item}' but `stages` has only {sorted(stages)}")
            specs.append(StageSpec.from_config(stages[item], where=f"stage '{name}' -> stage"))
        else:
            specs.append(StageSpec.from_config(item, where=f"stage '{name}' -> stage"))
    if not specs:
        raise PeftdsError(f"stage '{name}': empty chain")
    return specs, True

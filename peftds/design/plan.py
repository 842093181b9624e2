"""Designs (what a user or the search asks for) and plans (what a design resolves to on a model).

A design names a grouping (explicit sizes, or a pattern to sample from), the tuned groups, the
allocation rule and a strategy subset per group, plus strategy hyper-parameters. Resolving it for a
model's layer shapes and a budget gives a :class:`Plan`: the group of every layer and each layer's
strategies with concrete sizes and exact parameter counts (SPEC §2–3).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from peftds.config.compose import reject_unknown_keys
from peftds.design.budget import ALLOCATIONS, MIN_BUDGET_USE, layer_budgets, layer_cost, size_layers
from peftds.design.grouping import PATTERNS, sample_grouping, satisfies
from peftds.errors import InfeasibleDesign, PeftdsError
from peftds.model.strategies import NAMES, LayerShape, get_strategy, strategy_label

DESIGN_KEYS = {
    "name",
    "model",
    "full",
    "grouping",
    "tuned",
    "allocation",
    "strategies",
    "hparams",
    "note",
    "fixed_sizes",
}
# A design with `fixed_sizes` (e.g. a peft LoRA config turned into a design) sets every layer's size itself: no
# grouping, allocation or budget decides them, and its own trainable count is its budget.
FIXED = "fixed"
RULE_KEYS = ("grouping", "tuned", "allocation", "strategies")


def design_key_help() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) of a design's keys, strategy hyper-parameters included: what `--help` prints."""
    from peftds.config.schema import describe

    rows: list[tuple[str, str, Any, str]] = [
        ("design.name", "str", "custom", "the design's name: records, tables and compare rows show it"),
        ("design.model", "str or null", None, "the model it was made for (selected unless model= is given)"),
        ("design.full", "bool", False, "full fine-tuning: every backbone parameter trains, no budget"),
        ("design.grouping.groups", "int", 4, "number of layer groups"),
        ("design.grouping.sizes", "list[int] or null", None, "explicit group sizes (sum: the layer count)"),
        ("design.grouping.pattern", "str or null", None, f"or sample sizes from a pattern: {', '.join(PATTERNS)}"),
        ("design.tuned", "all or list[int]", "all", "1-based groups that train"),
        ("design.allocation", "str", "uniform", f"budget over tuned groups: {', '.join(ALLOCATIONS)}"),
        ("design.strategies", "list[list[str]]", [], f"one strategy subset per group, of {', '.join(NAMES)}"),
        ("design.note", "str", None, "free text, kept with the design"),
        ("design.fixed_sizes", "map or null", None, "per-layer sizes set by the design itself (a peft LoRA config)"),
    ]
    for name in NAMES:
        rows += describe(get_strategy(name).config, f"design.hparams.{name}")
    return rows


GROUPING_KEYS = {"groups", "sizes", "pattern"}


@dataclass
class Design:
    name: str = "custom"
    full: bool = False  # full fine-tuning: every backbone parameter trains, no budget
    num_groups: int = 4
    sizes: tuple[int, ...] | None = None  # explicit group sizes (sum must be L)
    pattern: str | None = None  # or a pattern to sample sizes from
    tuned: tuple[int, ...] | None = None  # 1-based tuned groups; None = all
    allocation: str = "uniform"
    strategies: tuple[tuple[str, ...], ...] = ()  # one subset per group
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: str | None = None  # the model (conf/model/<name>) the design was made for, if it names one
    fixed_sizes: dict[str, tuple[int, ...]] | None = None  # strategy -> size of every layer (0: none)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Design:
        cfg = dict(cfg or {})
        name = str(cfg.get("name", "custom"))
        reject_unknown_keys(cfg, DESIGN_KEYS, f"design '{name}'")
        hparams = {k: dict(v or {}) for k, v in (cfg.get("hparams") or {}).items()}
        for strat in sorted(set(hparams) | set(NAMES)):
            get_strategy(strat).hparams(hparams.get(strat))  # every strategy's, used by this design or not
        model = cfg.get("model")
        if model is not None and not isinstance(model, str):
            raise PeftdsError(f"design '{name}': model must be a model name (conf/model/<name>), got {model!r}")
        if cfg.get("full"):
            return cls(name=name, full=True, num_groups=1, strategies=(), hparams=hparams, model=model)
        if cfg.get("fixed_sizes") is not None:
            return cls(name=name, hparams=hparams, model=model, fixed_sizes=fixed_sizes(name, cfg))
        grouping = dict(cfg.get("grouping") or {})
        unknown = set(grouping) - GROUPING_KEYS
        if unknown:
            raise PeftdsError(
                f"design '{name}': unknown grouping key(s) {sorted(unknown)} (known: {sorted(GROUPING_KEYS)})"
            )
        sizes = tuple(int(x) for x in grouping["sizes"]) if grouping.get("sizes") else None
        k = int(grouping.get("groups") or (len(sizes) if sizes else 4))
        if sizes is not None and len(sizes) != k:
            raise PeftdsError(f"design '{name}': grouping.sizes {list(sizes)} has {len(sizes)} groups, groups={k}")
        pattern = grouping.get("pattern")
        if pattern is not None and pattern not in PATTERNS:
            raise PeftdsError(f"design '{name}': unknown grouping pattern '{pattern}' (known: {', '.join(PATTERNS)})")
        if sizes is None and pattern is None and k > 1:
            raise PeftdsError(f"design '{name}': grouping needs `sizes` or a `pattern` for {k} groups")
        tuned_cfg = cfg.get("tuned", "all")
        tuned = None if tuned_cfg in (None, "all") else tuple(sorted(int(g) for g in tuned_cfg))
        if tuned is not None and (not tuned or min(tuned) < 1 or max(tuned) > k):
            raise PeftdsError(f"design '{name}': tuned groups {list(tuned)} must be within 1..{k}")
        allocation = cfg.get("allocation", "uniform")
        if allocation not in ALLOCATIONS:
            raise PeftdsError(f"design '{name}': unknown allocation '{allocation}' (known: {', '.join(ALLOCATIONS)})")
        raw = cfg.get("strategies") or []
        if raw and all(isinstance(s, str) for s in raw):
            raw = [raw] * k  # one subset for every group
        if len(raw) != k:
            raise PeftdsError(f"design '{name}': strategies lists {len(raw)} group subsets for {k} groups")
        strategies = []
        for g, subset in enumerate(raw, 1):
            subset = [subset] if isinstance(subset, str) else list(subset or [])
            for s in subset:
                get_strategy(s)
            if len(set(subset)) != len(subset):
                raise PeftdsError(f"design '{name}': group {g} repeats a strategy: {subset}")
            strategies.append(tuple(s for s in NAMES if s in subset))
        return cls(name, False, k, sizes, pattern, tuned, allocation, tuple(strategies), hparams, model)

    def to_config(self) -> dict[str, Any]:
        made_for = {"model": self.model} if self.model else {}
        if self.full:
            return {"name": self.name, **made_for, "full": True, "hparams": self.hparams}
        if self.fixed_sizes is not None:
            sizes = {n: list(v) for n, v in self.fixed_sizes.items()}
            return {"name": self.name, **made_for, "fixed_sizes": sizes, "hparams": self.hparams}
        grouping: dict[str, Any] = {"groups": self.num_groups}
        if self.sizes is not None:
            grouping["sizes"] = list(self.sizes)
        if self.pattern is not None:
            grouping["pattern"] = self.pattern
        return {
            "name": self.name,
            **made_for,
            "grouping": grouping,
            "tuned": "all" if self.tuned is None else list(self.tuned),
            "allocation": self.allocation,
            "strategies": [list(s) for s in self.strategies],
            "hparams": self.hparams,
        }

    def strategy_hparams(self) -> dict[str, dict[str, Any]]:
        """Every strategy's hyper-parameters with defaults filled in."""
        return {n: get_strategy(n).hparams(self.hparams.get(n)) for n in NAMES}

    def resolve(self, shapes: Sequence[LayerShape], backbone_params: int, budget: int, seed: int = 0) -> Plan:
        """A concrete per-layer plan for a model with these layer shapes. Raises InfeasibleDesign."""
        num_layers = len(shapes)
        hp = self.strategy_hparams()
        if self.full:
            layers = [LayerPlan(s.index, s.stack, 1, {}, {}) for s in shapes]
            return Plan(
                self.name,
                True,
                backbone_params,
                budget,
                [num_layers],
                [1],
                "uniform",
                [[]],
                hp,
                layers,
                full_params=backbone_params,
            )
        if self.fixed_sizes is not None:
            return self.resolve_fixed(shapes, backbone_params, hp)
        if self.sizes is not None:
            sizes = self.sizes
            if sum(sizes) != num_layers or min(sizes) < 1:
                raise InfeasibleDesign(
                    f"design '{self.name}': group sizes {list(sizes)} do not split the L={num_layers}-layer stack"
                )
            if self.pattern is not None and not satisfies(sizes, self.pattern):
                raise InfeasibleDesign(f"design '{self.name}': group sizes {list(sizes)} are not '{self.pattern}'")
        elif self.num_groups == 1:
            sizes = (num_layers,)
        else:
            sizes = sample_grouping(num_layers, self.num_groups, self.pattern, random.Random(seed))
        tuned = list(self.tuned) if self.tuned is not None else list(range(1, self.num_groups + 1))
        group_of_layer = [g for g, n in enumerate(sizes, 1) for _ in range(n)]
        for g in tuned:
            if not self.strategies[g - 1]:
                raise PeftdsError(f"design '{self.name}': tuned group {g} has no strategy")
        per_layer = [self.strategies[g - 1] if g in tuned else () for g in group_of_layer]
        budgets = layer_budgets(group_of_layer, tuned, self.allocation, budget)
        try:
            sizes_per_layer = size_layers(shapes, per_layer, budgets, hp, budget)
        except InfeasibleDesign as e:
            raise InfeasibleDesign(f"design '{self.name}' (groups {list(sizes)}, budget {budget}): {e}") from None
        layers = [
            LayerPlan(s.index, s.stack, g, dict(sz), layer_cost(s, sz, hp))
            for s, g, sz in zip(shapes, group_of_layer, sizes_per_layer)
        ]
        plan = Plan(
            self.name,
            False,
            backbone_params,
            budget,
            list(sizes),
            tuned,
            self.allocation,
            [list(s) for s in self.strategies],
            hp,
            layers,
        )
        total = plan.trainable_params
        if total > budget:
            raise InfeasibleDesign(f"design '{self.name}': {total} trainable params exceed the budget of {budget}")
        scalable = any(get_strategy(n).scalable for lp in layers for n in lp.modules)
        if scalable and total < MIN_BUDGET_USE * budget:
            raise InfeasibleDesign(
                f"design '{self.name}': integer sizes spend only {total} of the {budget}-param budget "
                f"({100 * total / budget:.1f}% < {100 * MIN_BUDGET_USE:.0f}%)"
            )
        return plan

    def resolve_fixed(self, shapes: Sequence[LayerShape], backbone_params: int, hp: dict[str, dict[str, Any]]) -> Plan:
        """The plan of a design that sets every layer's sizes: groups are the runs of consecutive layers with
        the same sizes, tuned those with any, and the budget is the design's own count."""
        assert self.fixed_sizes is not None
        for strat, per_layer in self.fixed_sizes.items():
            if len(per_layer) != len(shapes):
                raise InfeasibleDesign(
                    f"design '{self.name}': fixed_sizes.{strat} lists {len(per_layer)} layers, the model has "
                    f"{len(shapes)}"
                )
        modules = [{n: s[i] for n, s in self.fixed_sizes.items() if s[i] > 0} for i in range(len(shapes))]
        groups: list[int] = []
        subsets: list[list[str]] = []
        group_of_layer: list[int] = []
        for i, mods in enumerate(modules):
            if i == 0 or mods != modules[i - 1]:
                groups.append(0)
                subsets.append([n for n in NAMES if n in mods])
            groups[-1] += 1
            group_of_layer.append(len(groups))
        tuned = [g for g, subset in enumerate(subsets, 1) if subset]
        if not tuned:
            raise InfeasibleDesign(f"design '{self.name}': fixed_sizes adapt no layer")
        layers = [
            LayerPlan(s.index, s.stack, g, dict(m), layer_cost(s, m, hp))
            for s, g, m in zip(shapes, group_of_layer, modules)
        ]
        total = sum(sum(lp.params.values()) for lp in layers)
        return Plan(self.name, False, backbone_params, total, groups, tuned, FIXED, subsets, hp, layers)


def fixed_sizes(name: str, cfg: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """A design's `fixed_sizes` (strategy -> one size per layer), checked; no budget rule may come with it."""
    given = [k for k in RULE_KEYS if k in cfg]
    if given:
        raise PeftdsError(
            f"design '{name}': fixed_sizes sets every layer itself, so {', '.join(given)} cannot be given"
        )
    raw = cfg["fixed_sizes"]
    if not isinstance(raw, Mapping) or not raw:
        raise PeftdsError(f"design '{name}': fixed_sizes must map strategies to per-layer sizes, got {raw!r}")
    out: dict[str, tuple[int, ...]] = {}
    for strat, sizes in raw.items():
        if not get_strategy(strat).scalable:
            raise PeftdsError(f"design '{name}': fixed_sizes.{strat}: {strat} has no size")
        ok = isinstance(sizes, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in sizes)
        if not ok or not sizes or min(sizes) < 0:
            raise PeftdsError(f"design '{name}': fixed_sizes.{strat} must list one size >= 0 per layer, got {sizes!r}")
        out[strat] = tuple(sizes)
    if len({len(v) for v in out.values()}) > 1:
        raise PeftdsError(f"design '{name}': fixed_sizes lists differ in length")
    return out


@dataclass
class LayerPlan:
    index: int
    stack: str
    group: int  # 1-based
    modules: dict[str, int]  # strategy -> size (BitFit: 0)
    params: dict[str, int]  # strategy -> exact trainable params


@dataclass
class Plan:
    design: str
    full: bool
    backbone_params: int
    budget_params: int
    groups: list[int]
    tuned: list[int]
    allocation: str
    strategies: list[list[str]]
    hparams: dict[str, dict[str, Any]]
    layers: list[LayerPlan]
    full_params: int = 0
    model: dict[str, Any] = field(default_factory=dict)  # the model config it was resolved for

    @property
    def trainable_params(self) -> int:
        """Exact trainable parameters outside the task head (by formula)."""
        if self.full:
            return self.full_params
        return sum(sum(lp.params.values()) for lp in self.layers)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trainable_params"] = self.trainable_params
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        d = dict(d)
        d.pop("trainable_params", None)
        d["layers"] = [LayerPlan(**lp) for lp in d["layers"]]
        return cls(**d)

    def design_config(self) -> dict[str, Any]:
        """A concrete design (explicit group sizes) that resolves back to this plan on the same model."""
        if self.full:
            return {"name": self.design, "full": True, "hparams": self.hparams}
        if self.allocation == FIXED:
            names = [n for n in NAMES if any(n in lp.modules for lp in self.layers)]
            sizes = {n: [lp.modules.get(n, 0) for lp in self.layers] for n in names}
            return {"name": self.design, "fixed_sizes": sizes, "hparams": self.hparams}
        return {
            "name": self.design,
            "grouping": {"groups": len(self.groups), "sizes": list(self.groups)},
            "tuned": list(self.tuned),
            "allocation": self.allocation,
            "strategies": [list(s) for s in self.strategies],
            "hparams": self.hparams,
        }

    def compact(self) -> str:
        """A short human-readable description, e.g. 'G4-8-8-4 T1234 uniform | A+L | A+P | ...'."""
        if self.full:
            return "full"
        groups = "-".join(map(str, self.groups))
        tuned = "".join(map(str, self.tuned))
        strat = " | ".join(strategy_label(g) for g in self.strategies)
        return f"G{groups} T{tuned} {self.allocation} | {strat}"

    def digest(self) -> str:
        """Stable hash of what determines training (design + sizes), independent of its name."""
        d = self.to_dict()
        d.pop("design", None)
        d.pop("model", None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

"""Design spaces (SPEC §5): a constraint (or none, sampled at random) per design dimension."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from peftds.config.compose import reject_unknown_keys
from peftds.design.budget import ALLOCATIONS
from peftds.design.grouping import PATTERNS, all_groupings, feasible_groupings, nonempty_subsets
from peftds.errors import InfeasibleDesign, PeftdsError
from peftds.model.strategies import NAMES, strategy_label

DIMENSIONS = ("grouping", "allocation", "tuned", "strategies")
SPACE_KEYS = {"name", "groups", "grouping", "allocation", "tuned", "strategies", "pool", "history", "note"}


class DrawStreams:
    """One random generator per named stream (a dimension, or `strategies/<group>`), seeded by
    `seed_of(name)` on first use: the paired sampler's draws, where a stream's values do not depend
    on which other streams a space uses."""

    def __init__(self, seed_of: Callable[[str], int]):
        self.seed_of = seed_of
        self.generators: dict[str, random.Random] = {}

    def stream(self, name: str) -> random.Random:
        if name not in self.generators:
            self.generators[name] = random.Random(self.seed_of(name))
        return self.generators[name]


@dataclass(frozen=True)
class Space:
    """A design space: a constraint (or None = sampled at random) per dimension.

    grouping:   None (any split into `groups` groups) | a pattern name | explicit sizes
    allocation: None (uniform among uniform/increasing/decreasing) | one rule
    tuned:      None (any non-empty subset of groups) | a fixed tuple of 1-based groups
    strategies: one entry per group: None (random non-empty subset of `pool`) | a fixed subset
    """

    name: str = "s0"
    groups: int = 4
    grouping: str | tuple[int, ...] | None = None
    allocation: str | None = None
    tuned: tuple[int, ...] | None = None
    strategies: tuple[tuple[str, ...] | None, ...] = ()
    pool: tuple[str, ...] = ()
    history: tuple[dict, ...] = field(default=(), compare=False)

    # ---------------------------------------------------------------- construction / validation
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None, where: str = "space") -> Space:
        """Validate a space config; every problem names the offending key or value."""
        cfg = dict(cfg or {})
        name = str(cfg.get("name") or "s0")
        where = f"{where} '{name}'"
        reject_unknown_keys(cfg, SPACE_KEYS, where)
        try:
            k = int(cfg.get("groups") or 4)
        except (TypeError, ValueError):
            raise PeftdsError(f"{where}: groups must be an integer, got {cfg.get('groups')!r}") from None
        if k < 1:
            raise PeftdsError(f"{where}: groups must be >= 1, got {k}")
        names = NAMES
        pool_cfg = cfg.get("pool")
        pool = tuple(names) if pool_cfg in (None, "all") else tuple(pool_cfg)
        for s in pool:
            if s not in names:
                raise PeftdsError(f"{where}: pool names unknown strategy '{s}' (known: {', '.join(names)})")
        if not pool:
            raise PeftdsError(f"{where}: pool is empty")
        pool = tuple(s for s in names if s in pool)
        space = cls(
            name=name,
            groups=k,
            pool=pool,
            strategies=(None,) * k,
            history=tuple(dict(h) for h in (cfg.get("history") or [])),
        )
        for dim in DIMENSIONS:
            if cfg.get(dim) is not None:
                space = space.constrain(dim, cfg[dim], where=where)
        return space

    def _norm(self, dim: str, value: Any, where: str, group: int | None = None) -> Any:
        """A constraint value in canonical form (raises on a malformed one)."""
        k = self.groups
        if dim == "grouping":
            if isinstance(value, str):
                if value not in PATTERNS:
                    raise PeftdsError(f"{where}: unknown grouping pattern '{value}' (known: {', '.join(PATTERNS)})")
                return value
            if isinstance(value, (list, tuple)):
                try:
                    sizes = tuple(int(x) for x in value)
                except (TypeError, ValueError):
                    raise PeftdsError(f"{where}: grouping sizes must be integers, got {value}") from None
                if len(sizes) != k or min(sizes) < 1:
                    raise PeftdsError(f"{where}: grouping sizes {list(sizes)} must be {k} positive integers")
                return sizes
            raise PeftdsError(
                f"{where}: grouping must be a pattern ({', '.join(PATTERNS)}) or a list of sizes, got {value!r}"
            )
        if dim == "allocation":
            if value not in ALLOCATIONS:
                raise PeftdsError(f"{where}: unknown allocation '{value}' (known: {', '.join(ALLOCATIONS)})")
            return str(value)
        if dim == "tuned":
            if value == "all":
                return tuple(range(1, k + 1))
            if isinstance(value, int):
                value = [value]
            if not isinstance(value, (list, tuple)) or not value:
                raise PeftdsError(f"{where}: tuned must be 'all' or a non-empty list of groups, got {value!r}")
            groups = tuple(sorted({int(g) for g in value}))
            if min(groups) < 1 or max(groups) > k:
                raise PeftdsError(f"{where}: tuned groups {list(groups)} must be within 1..{k}")
            return groups
        if dim == "strategies":
            names = NAMES

            def subset(v: str | Sequence[str] | None, g: int) -> tuple[str, ...]:
                v = [v] if isinstance(v, str) else list(v or [])
                if not v:
                    raise PeftdsError(f"{where}: strategies of group {g} is empty (use null for 'any subset')")
                for s in v:
                    if s not in names:
                        raise PeftdsError(
                            f"{where}: group {g} names unknown strategy '{s}' (known: {', '.join(names)})"
                        )
                if len(set(v)) != len(v):
                    raise PeftdsError(f"{where}: group {g} repeats a strategy: {v}")
                return tuple(s for s in names if s in v)

            if group is not None:
                return subset(value, group)
            if not isinstance(value, (list, tuple)) or len(value) != k:
                raise PeftdsError(
                    f"{where}: strategies must list one entry (a subset or null) per group ({k} groups), got {value!r}"
                )
            return tuple(None if v is None else subset(v, g) for g, v in enumerate(value, 1))
        raise PeftdsError(f"{where}: unknown dimension '{dim}' (known: {', '.join(DIMENSIONS)})")

    def constrain(self, dim: str, value: Any, group: int | None = None, where: str = "space") -> Space:
        """This space with one more constraint; conflicting with an existing one is an error."""
        v = self._norm(dim, value, where, group)
        if dim == "strategies":
            if group is not None:
                if not 1 <= group <= self.groups:
                    raise PeftdsError(f"{where}: strategy group {group} is outside 1..{self.groups}")
                old = self.strategies[group - 1]
                if old is not None and old != v:
                    raise PeftdsError(
                        f"{where}: group {group} strategies are already fixed to {list(old)}; cannot also be {list(v)}"
                    )
                new = list(self.strategies)
                new[group - 1] = v
                return replace(self, strategies=tuple(new))
            for g, (old, nv) in enumerate(zip(self.strategies, v), 1):
                if old is not None and nv is not None and old != nv:
                    raise PeftdsError(
                        f"{where}: group {g} strategies are already fixed to {list(old)}; cannot also be {list(nv)}"
                    )
            return replace(self, strategies=tuple(o if o is not None else n for o, n in zip(self.strategies, v)))
        old = getattr(self, dim)
        if old is not None and old != v:
            raise PeftdsError(f"{where}: {dim} is already constrained to {_show(old)}; cannot also be {_show(v)}")
        return replace(self, **{dim: v})

    def constrained(self, dim: str, group: int | None = None) -> bool:
        if dim == "strategies":
            return (self.strategies[group - 1] is not None) if group else all(s is not None for s in self.strategies)
        return getattr(self, dim) is not None

    def check(self, num_layers: int) -> None:
        """Raise PeftdsError naming the constraint that no design on an L-layer stack can satisfy."""
        k = self.groups
        where = f"space '{self.name}'"
        if k > num_layers:
            raise PeftdsError(f"{where}: groups={k} exceeds the L={num_layers}-layer stack")
        if isinstance(self.grouping, str):
            if not feasible_groupings(num_layers, k, self.grouping):
                raise PeftdsError(
                    f"{where}: grouping pattern '{self.grouping}' is infeasible for L={num_layers} "
                    f"layers in K={k} groups"
                )
        elif self.grouping is not None and sum(self.grouping) != num_layers:
            raise PeftdsError(f"{where}: grouping sizes {list(self.grouping)} do not sum to L={num_layers}")
        required = self.required_tuned()
        if self.tuned is not None:
            missing = [g for g in required if g not in self.tuned]
            if missing:
                raise PeftdsError(
                    f"{where}: strategies are fixed for group(s) {missing} but tuned is "
                    f"{list(self.tuned)} (an untuned group gets no strategy)"
                )
            if self.allocation not in (None, "uniform") and len(self.tuned) < 2:
                raise PeftdsError(
                    f"{where}: allocation '{self.allocation}' needs at least two tuned groups "
                    f"(tuned: {list(self.tuned)})"
                )
        elif self.allocation not in (None, "uniform") and k < 2:
            raise PeftdsError(f"{where}: allocation '{self.allocation}' needs at least two groups (groups={k})")

    def required_tuned(self) -> tuple[int, ...]:
        """Groups that must be tuned because their strategies are fixed."""
        return tuple(g for g, s in enumerate(self.strategies, 1) if s is not None)

    # ---------------------------------------------------------------- sampling
    def tuned_options(self) -> list[tuple[int, ...]]:
        if self.tuned is not None:
            return [self.tuned]
        req = set(self.required_tuned())
        opts = [t for t in nonempty_subsets(range(1, self.groups + 1)) if req <= set(t)]
        if self.allocation not in (None, "uniform"):
            opts = [t for t in opts if len(t) >= 2]
        return opts

    def sample(self, num_layers: int, rng: random.Random | DrawStreams) -> dict[str, Any]:
        """One design (conf/design schema, explicit group sizes) drawn from this space.

        Unconstrained dimensions are drawn uniformly: grouping among all splits satisfying the
        pattern (or all splits), tuned among the allowed non-empty subsets, allocation among the
        rules, each tuned group's strategies among the non-empty subsets of the pool. Untuned groups
        get no strategy. Budget feasibility is the caller's (redraw on InfeasibleDesign).

        `rng` is one generator for every draw (the unpaired sampler), or DrawStreams: one generator
        per dimension (per group for strategies), so that fixing one dimension never shifts another
        dimension's draws. With streams, `tuned` is drawn among all non-empty subsets and redrawn
        from its own stream until allowed (uniform over the allowed subsets, as with one generator,
        and the same subset for every space that allows the first draw).
        """
        k = self.groups
        streams = rng if isinstance(rng, DrawStreams) else None

        def stream(name: str) -> random.Random:
            return streams.stream(name) if streams is not None else rng

        if isinstance(self.grouping, tuple):
            sizes = self.grouping
        else:
            options = all_groupings(num_layers, k, self.grouping)
            if not options:
                raise InfeasibleDesign(f"grouping {self.grouping or 'any'} is infeasible for L={num_layers}, K={k}")
            sizes = options[stream("grouping").randrange(len(options))]
        tuned_opts = self.tuned_options()
        if not tuned_opts:
            raise InfeasibleDesign(f"space '{self.name}': no tuned-group subset satisfies the constraints")
        if streams is None or self.tuned is not None:
            tuned = tuned_opts[stream("tuned").randrange(len(tuned_opts))]
        else:
            allowed = set(tuned_opts)
            every = nonempty_subsets(range(1, k + 1))
            tuned = every[stream("tuned").randrange(len(every))]
            while tuned not in allowed:
                tuned = every[stream("tuned").randrange(len(every))]
        allocs = ALLOCATIONS
        allocation = self.allocation or allocs[stream("allocation").randrange(len(allocs))]
        subsets = nonempty_subsets(self.pool)
        strategies: list[list[str]] = []
        for g in range(1, k + 1):
            fixed = self.strategies[g - 1]
            if g not in tuned:
                strategies.append([])
            elif fixed is not None:
                strategies.append(list(fixed))
            else:
                strategies.append(list(subsets[stream(f"strategies/{g}").randrange(len(subsets))]))
        grouping: dict[str, Any] = {"groups": k, "sizes": list(sizes)}
        if isinstance(self.grouping, str):
            grouping["pattern"] = self.grouping
        return {"grouping": grouping, "tuned": list(tuned), "allocation": allocation, "strategies": strategies}

    # ---------------------------------------------------------------- output
    def to_config(self) -> dict[str, Any]:
        grouping = list(self.grouping) if isinstance(self.grouping, tuple) else self.grouping
        strategies = None
        if any(s is not None for s in self.strategies):
            strategies = [None if s is None else list(s) for s in self.strategies]
        out: dict[str, Any] = {
            "name": self.name,
            "groups": self.groups,
            "grouping": grouping,
            "allocation": self.allocation,
            "tuned": None if self.tuned is None else list(self.tuned),
            "strategies": strategies,
        }
        if tuple(self.pool) != tuple(NAMES):
            out["pool"] = list(self.pool)
        out["history"] = [dict(h) for h in self.history]
        return out

    def digest(self) -> str:
        d = self.to_config()
        d.pop("name", None)
        d.pop("history", None)
        return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def describe(self) -> str:
        parts = [
            f"K={self.groups}",
            f"grouping={_show(self.grouping) if self.grouping is not None else 'any'}",
            f"allocation={self.allocation or 'any'}",
            f"tuned={_show(self.tuned) if self.tuned is not None else 'any'}",
        ]
        if any(s is not None for s in self.strategies):
            parts.append("strategies=" + " | ".join("?" if s is None else strategy_label(s) for s in self.strategies))
        return " ".join(parts)


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)

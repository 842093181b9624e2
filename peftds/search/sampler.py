"""Seeded sampling of N distinct feasible designs from a space (SPEC §5)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftds.design.space import Space
from peftds.errors import InfeasibleDesign

if TYPE_CHECKING:
    from peftds.design.plan import Plan


def draw_seed(*parts: Any) -> int:
    """A 64-bit seed from any parts (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


@dataclass
class Draw:
    index: int
    attempt: int
    design: dict[str, Any]  # conf/design schema (no name / hparams)
    plan: Any  # peftds.design.plan.Plan


@dataclass
class DrawStats:
    draws: list[Draw]
    infeasible: int = 0  # draws redrawn because the design cannot be realised (budget, allocation)
    duplicates: int = 0  # draws redrawn because an earlier index already has that design
    exhausted: bool = False  # fewer than n distinct feasible designs were found
    last_error: str | None = None


def sample_designs(
    space: Space,
    num_layers: int,
    n: int,
    resolve: Callable[[dict[str, Any]], Plan],
    *,
    seed: int,
    stage: str,
    option: str,
    max_draws: int = 200,
) -> DrawStats:
    """N distinct feasible designs from `space`, each reproducible from (seed, stage, option, index).

    Draw i tries attempts a = 0, 1, ... with an RNG seeded by (seed, stage, option, i, a); an attempt
    whose design is infeasible (`resolve` raises InfeasibleDesign) or repeats an earlier draw's plan
    (same `Plan.digest()`) is redrawn. After `max_draws` failed attempts for one index the space is
    taken as exhausted and fewer than n designs are returned.
    """
    stats = DrawStats(draws=[])
    seen: set[str] = set()
    for i in range(n):
        for a in range(max_draws):
            rng = random.Random(draw_seed(seed, stage, option, i, a))
            design = space.sample(num_layers, rng)
            try:
                plan = resolve(design)
            except InfeasibleDesign as e:
                stats.infeasible += 1
                stats.last_error = str(e)
                continue
            digest = plan.digest()
            if digest in seen:
                stats.duplicates += 1
                continue
            seen.add(digest)
            stats.draws.append(Draw(i, a, design, plan))
            break
        else:
            stats.exhausted = True
            return stats
    return stats

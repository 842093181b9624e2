"""Seeded sampling of N distinct feasible designs from a space (SPEC §5)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftds.design.space import DrawStreams, Space
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


def attempt_draws(
    seed: int, stage: str, option: str, index: int, attempt: int, paired: bool
) -> random.Random | DrawStreams:
    """The random draws of one attempt: one generator keyed by (seed, stage, option, index, attempt), or,
    paired, one stream per dimension keyed by (seed, stage, index, dimension[/group], attempt) — no
    option in the key, so design `index` of every option shares each draw its option does not fix."""
    if not paired:
        return random.Random(draw_seed(seed, stage, option, index, attempt))
    return DrawStreams(lambda name: draw_seed(seed, stage, index, name, attempt, "paired"))


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
    paired: bool = False,
) -> DrawStats:
    """N distinct feasible designs from `space`, each reproducible from (seed, stage, option, index).

    Draw i tries attempts a = 0, 1, ... (draws of `attempt_draws`); an attempt whose design is
    infeasible (`resolve` raises InfeasibleDesign) or repeats an earlier draw's plan (same
    `Plan.digest()`) is redrawn. After `max_draws` failed attempts for one index the space is taken as
    exhausted and fewer than n designs are returned.

    Paired (common random numbers across a stage's options): every option walks the attempts of index
    i on its own and keeps its first feasible, distinct one, so design i of two options shares every
    draw neither fixes whenever both keep the same attempt (the pair is exact), and each option's
    designs are distributed exactly as the unpaired sampler's (attempts are i.i.d. draws either way).
    """
    stats = DrawStats(draws=[])
    seen: set[str] = set()
    for i in range(n):
        for a in range(max_draws):
            design = space.sample(num_layers, attempt_draws(seed, stage, option, i, a, paired))
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

"""Grouping patterns (SPEC §2): constraints on the sizes n_1..n_K of K consecutive layer groups."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

from peftds.errors import InfeasibleDesign, PeftdsError

PATTERNS = ("increasing", "decreasing", "uniform", "spindle", "bottleneck")


def satisfies(sizes: tuple[int, ...], pattern: str) -> bool:
    """Whether group sizes satisfy a pattern (SPEC §2)."""
    n = list(sizes)
    if pattern == "increasing":
        return all(a <= b for a, b in itertools.pairwise(n)) and n[0] < n[-1]
    if pattern == "decreasing":
        return all(a >= b for a, b in itertools.pairwise(n)) and n[0] > n[-1]
    if pattern == "uniform":
        return max(n) - min(n) <= 1
    if pattern in ("spindle", "bottleneck"):
        if len(n) < 3:
            return False
        ends, middle = (n[0], n[-1]), n[1:-1]
        if pattern == "spindle":
            return max(ends) < min(middle)
        return min(ends) > max(middle)
    raise PeftdsError(f"unknown grouping pattern '{pattern}' (known: {', '.join(PATTERNS)})")


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All tuples of `parts` positive integers summing to `total` (stars and bars)."""
    for cuts in itertools.combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in itertools.pairwise(bounds))


@lru_cache(maxsize=256)
def feasible_groupings(num_layers: int, num_groups: int, pattern: str) -> tuple[tuple[int, ...], ...]:
    """Every grouping of `num_layers` into `num_groups` consecutive groups that satisfies `pattern`."""
    if pattern not in PATTERNS:
        raise PeftdsError(f"unknown grouping pattern '{pattern}' (known: {', '.join(PATTERNS)})")
    if not 1 <= num_groups <= num_layers:
        return ()
    return tuple(s for s in _compositions(num_layers, num_groups) if satisfies(s, pattern))


def sample_grouping(num_layers: int, num_groups: int, pattern: str, rng: random.Random) -> tuple[int, ...]:
    """Draw uniformly among the feasible groupings; infeasible (L, K, pattern) is a clear error."""
    options = feasible_groupings(num_layers, num_groups, pattern)
    if not options:
        raise InfeasibleDesign(
            f"grouping pattern '{pattern}' is infeasible for L={num_layers} layers in K={num_groups} groups"
        )
    return options[rng.randrange(len(options))]


@lru_cache(maxsize=256)
def all_groupings(num_layers: int, num_groups: int, pattern: str | None = None) -> tuple[tuple[int, ...], ...]:
    """Every split of the stack into `num_groups` consecutive groups (optionally satisfying `pattern`)."""
    if pattern is not None:
        return feasible_groupings(num_layers, num_groups, pattern)
    if not 1 <= num_groups <= num_layers:
        return ()
    return tuple(_compositions(num_layers, num_groups))


def nonempty_subsets(items: Sequence[Any]) -> list[tuple[Any, ...]]:
    """All non-empty subsets in a fixed order: by size, then lexicographically by position."""
    out: list[tuple[Any, ...]] = []
    for k in range(1, len(items) + 1):
        out.extend(itertools.combinations(items, k))
    return out

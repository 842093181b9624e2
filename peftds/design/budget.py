"""Exact trainable-parameter budgets (SPEC §3).

Per-layer budgets come from the allocation rule over the tuned groups; inside a layer BitFit's fixed
cost is taken first and the rest is split equally among the scalable strategies, each getting the
largest integer size that fits its share. Leftovers of all layers are pooled and spent one size step
at a time (fewest extra steps per layer first, then the cheapest step), so the allocation stays as
even as integer sizes allow and the total ends within one step of the budget, never above it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from peftds.errors import InfeasibleDesign, PeftdsError
from peftds.model.strategies import NAMES, LayerShape, get_strategy

ALLOCATIONS = ("uniform", "increasing", "decreasing")
MIN_BUDGET_USE = 0.95  # a design with a scalable strategy must spend at least this share of B


def budget_params(fraction: float, backbone_params: int) -> int:
    return int(fraction * backbone_params)


def layer_budgets(group_of_layer: Sequence[int], tuned: Sequence[int], allocation: str, budget: int) -> list[float]:
    """Per-layer budgets (0 for untuned layers) summing to `budget`.

    uniform: the same for every tuned layer. increasing: the j-th tuned group (in stack order) gets a
    per-layer weight j, so per-layer budgets grow strictly from the first to the last tuned group;
    decreasing is the mirror. With one tuned group increasing/decreasing cannot be strict: infeasible.
    """
    if allocation not in ALLOCATIONS:
        raise PeftdsError(f"unknown allocation '{allocation}' (known: {', '.join(ALLOCATIONS)})")
    order = sorted(set(tuned))
    if allocation != "uniform" and len(order) < 2:
        raise InfeasibleDesign(f"allocation '{allocation}' needs at least two tuned groups (tuned: {order})")
    rank = {g: i + 1 for i, g in enumerate(order)}
    if allocation == "decreasing":
        rank = {g: len(order) - i for i, g in enumerate(order)}
    if allocation == "uniform":
        rank = {g: 1 for g in order}
    weights = [float(rank.get(g, 0)) for g in group_of_layer]
    total = sum(weights)
    if total == 0:
        raise InfeasibleDesign("no layer is tuned")
    return [budget * w / total for w in weights]


def largest_size(name: str, shape: LayerShape, hp: Mapping, share: float) -> int:
    """Largest integer size whose cost fits `share` (0 if even size 1 does not)."""
    strat = get_strategy(name)
    if strat.cost(shape, 1, hp) > share:
        return 0
    lo, hi = 1, 2
    while strat.cost(shape, hi, hp) <= share:
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # cost is increasing in size: binary search the boundary
        mid = (lo + hi) // 2
        if strat.cost(shape, mid, hp) <= share:
            lo = mid
        else:
            hi = mid
    return lo


def layer_cost(shape: LayerShape, sizes: Mapping[str, int], hparams: Mapping[str, Mapping]) -> dict[str, int]:
    return {n: get_strategy(n).cost(shape, s, hparams.get(n, {})) for n, s in sizes.items()}


def size_layers(
    shapes: Sequence[LayerShape],
    strategies: Sequence[Sequence[str]],
    budgets: Sequence[float],
    hparams: Mapping[str, Mapping],
    budget: int,
) -> list[dict[str, int]]:
    """Sizes per layer (strategy -> size; BitFit 0) under SPEC §3's rules. Raises InfeasibleDesign."""
    sizes: list[dict[str, int]] = []
    for shape, names, share in zip(shapes, strategies, budgets):
        names = [n for n in NAMES if n in names]  # canonical order
        if not names:
            sizes.append({})
            continue
        layer: dict[str, int] = {}
        rest = share
        if "bitfit" in names:
            layer["bitfit"] = 0
            rest -= get_strategy("bitfit").cost(shape, 0, hparams.get("bitfit", {}))
        scalable = [n for n in names if get_strategy(n).scalable]
        for n in scalable:
            each = rest / len(scalable)
            size = largest_size(n, shape, hparams.get(n, {}), each)
            if size < 1:
                need = get_strategy(n).cost(shape, 1, hparams.get(n, {}))
                raise InfeasibleDesign(
                    f"layer {shape.index} ({shape.stack}): a share of {each:.0f} params cannot afford {n} "
                    f"at size 1 ({need} params)"
                )
            layer[n] = size
        sizes.append(layer)

    spent = sum(sum(layer_cost(sh, sz, hparams).values()) for sh, sz in zip(shapes, sizes))
    if spent > budget:
        raise InfeasibleDesign(f"fixed costs ({spent} params) exceed the budget ({budget} params)")
    _spend_leftovers(shapes, sizes, hparams, budget - spent)
    return sizes


def _spend_leftovers(
    shapes: Sequence[LayerShape], sizes: list[dict[str, int]], hparams: Mapping[str, Mapping], pool: int
) -> None:
    """Grow sizes one step at a time: fewest extra steps per layer first, then the cheapest step."""
    extra = [0] * len(shapes)
    order = {n: i for i, n in enumerate(NAMES)}

    def step_cost(i: int, n: str) -> int:
        strat, hp = get_strategy(n), hparams.get(n, {})
        return strat.cost(shapes[i], sizes[i][n] + 1, hp) - strat.cost(shapes[i], sizes[i][n], hp)

    steps = {(i, n): step_cost(i, n) for i, layer in enumerate(sizes) for n in layer if get_strategy(n).scalable}
    while True:
        affordable = [(extra[i], c, i, order[n], n) for (i, n), c in steps.items() if c <= pool]
        if not affordable:
            return
        _, c, i, _, n = min(affordable)
        sizes[i][n] += 1
        extra[i] += 1
        pool -= c
        steps[(i, n)] = step_cost(i, n)

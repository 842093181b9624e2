"""The comparison table from runs.csv and the runs' dev predictions: rows = designs, columns = tasks
(or task metrics) + average, cells mean ± std over seeds, the best of each column, its two p-values
against the second best, the majority-class baseline of every task and the paper's rows.

A task no design learns (no design's mean above the majority-class score of the dev set) is flagged
and left out of the average, never averaged in silently; the table then also shows the average over all
tasks (`avg_all`), the one the paper's averages are comparable with.

Only the runs of the plan count: a row of runs.csv whose run id is not one of the plan's (another
regime, another design configuration in the same dir) is stale: counted in the notes, never averaged in.
A best design gets a significance mark only when it also leads on the seeds both it and the second
best finished (the pairs the tests use); designs with equal means are tied and none of them is marked.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftds.compare.published import PaperRows, paper_rows
from peftds.compare.significance import PairedPredictions, StatisticsCache, paired_bootstrap, paired_t
from peftds.config.compose import conf_dir
from peftds.data.metrics import compute_metrics
from peftds.data.tasks import load_task

TIE_TOLERANCE = 1e-9  # means closer than this are equal (exact ties, up to float rounding)

# (design label, task, seed) -> (predictions, references) of that run, None when not saved
PredictionLoader = Callable[[str, str, int], tuple[list[Any], list[Any]] | None]


@dataclass(frozen=True)
class Column:
    id: str  # "sst2", "xsum/rouge1" or "avg"
    task: str | None
    metric: str  # "score" or one of the task's metrics
    score_metrics: tuple[str, ...] = ()


@dataclass
class Cell:
    values: dict[int, float]  # seed -> value

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values())))

    @property
    def std(self) -> float | None:
        """The spread over seeds (None with one seed: there is none)."""
        v = list(self.values.values())
        return float(np.std(v, ddof=1)) if len(v) > 1 else None


@dataclass
class Best:
    best: str
    second: str | None
    p_t: float | None = None
    p_boot: float | None = None
    tied: list[str] = field(default_factory=list)  # every design with the best mean, when more than one
    leads: bool = True  # the best is ahead of the second on the seeds both finished (the tests' pairs)
    same_seeds: bool = True  # the two means cover the same seeds

    @property
    def marked(self) -> bool:
        """Whether a significance mark may go on the best: no tie, and ahead on the paired data."""
        return not self.tied and self.leads


@dataclass
class Table:
    model: str
    columns: list[Column]
    designs: list[str]
    seeds: list[int]
    pct: dict[str, float | None]
    cells: dict[str, dict[str, Cell]]  # design -> column id -> cell
    best: dict[str, Best] = field(default_factory=dict)
    majority: dict[str, float] = field(default_factory=dict)  # column id -> majority-class value
    unlearned: list[str] = field(default_factory=list)  # task columns no design learns
    paper: PaperRows = field(default_factory=PaperRows)
    alpha: float = 0.05
    bootstrap: int = 0
    digits: int = 1
    stale: list[str] = field(default_factory=list)  # run ids of runs.csv rows that are not the plan's


AVG_ALL = "avg_all"  # the average over all tasks, beside `avg` when some task is unlearned


def columns_of(tasks: Sequence[str], mode: str, average: bool) -> list[Column]:
    cols = []
    for name in tasks:
        task = load_task(name, conf_dir())
        if mode == "metrics":
            cols += [Column(f"{name}/{m}", name, m, tuple(task.score)) for m in task.metrics]
        else:
            cols.append(Column(name, name, "score", tuple(task.score)))
    if average and len(tasks) > 1:
        cols.append(Column("avg", None, "score"))
    return cols


def plan_rows(plan: Any, rows: Sequence[Mapping[str, str]]) -> tuple[list[Mapping[str, str]], list[str]]:
    """(the rows of the plan's runs, the run ids of every other row): a table holds only its plan's runs."""
    ids = {r.run_id for r in plan.runs}
    mine = [r for r in rows if r.get("run_id") in ids]
    return mine, [str(r.get("run_id")) for r in rows if r.get("run_id") not in ids]


def ok_rows(rows: Sequence[Mapping[str, str]]) -> dict[tuple[str, str, int], dict[str, float]]:
    """(design, task, seed) -> metrics (with `score`) of the finished runs."""
    out = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("metrics"):
            out[(r["design"], r["task"], int(r["seed"]))] = json.loads(r["metrics"])
    return out


def majority_value(task: Any, metric: str, refs: Sequence[Any]) -> float | None:
    """The column's value of predicting the dev set's most frequent class (regression: its mean)."""
    if task.kind == "classification":
        const = Counter(int(r) for r in refs).most_common(1)[0][0]
    elif task.kind == "regression":
        const = float(np.mean(refs))
    else:
        return None
    return compute_metrics(task, [const] * len(refs), list(refs))[metric]


def build_table(
    plan: Any,
    rows: Sequence[Mapping[str, str]],
    load_predictions: PredictionLoader,
    published: bool = True,
) -> Table:
    """The table of a comparison plan (peftds.compare.plan.ComparePlan) from its runs.csv rows."""
    s = plan.settings
    designs = [e.label for e in plan.designs]
    columns = columns_of(plan.tasks, s.columns, s.average)
    rows, stale = plan_rows(plan, rows)
    got = ok_rows(rows)
    pct: dict[str, float | None] = {}
    for d in designs:
        vals = [float(r["trainable_pct"]) for r in rows if r["design"] == d and r.get("trainable_pct")]
        pct[d] = float(np.mean(vals)) if vals else None
    cells: dict[str, dict[str, Cell]] = {d: {} for d in designs}
    for d in designs:
        for c in columns:
            if c.task is None:
                continue
            vals = {sd: got[(d, c.task, sd)][c.metric] for sd in plan.seeds if (d, c.task, sd) in got}
            if vals:
                cells[d][c.id] = Cell(vals)
    t = Table(plan.model, columns, designs, list(plan.seeds), pct, cells,
              alpha=s.alpha, bootstrap=s.bootstrap, digits=s.digits, stale=stale)  # fmt: skip
    refs_of = {}
    for c in columns:
        if c.task is None or c.task in refs_of:
            continue
        refs_of[c.task] = next((p[1] for d in designs for sd in plan.seeds
                                if (p := load_predictions(d, c.task, sd)) is not None), None)  # fmt: skip
    for c in columns:
        if c.task is not None and refs_of.get(c.task) is not None:
            maj = majority_value(load_task(c.task, conf_dir()), c.metric, refs_of[c.task])
            if maj is not None:
                t.majority[c.id] = maj
    for name in plan.tasks:
        if refs_of.get(name) is None:
            continue
        floor = majority_value(load_task(name, conf_dir()), "score", refs_of[name])
        means = [np.mean([got[(d, name, sd)]["score"] for sd in plan.seeds if (d, name, sd) in got]) for d in designs
                 if any((d, name, sd) in got for sd in plan.seeds)]  # fmt: skip
        if floor is not None and means and max(means) <= floor + 1e-9:
            t.unlearned.append(name)
    avg = next((c for c in columns if c.id == "avg"), None)
    learned = [x for x in plan.tasks if x not in t.unlearned]
    averages = {"avg": learned}
    if avg is not None and t.unlearned:
        columns.insert(columns.index(avg) + 1, Column(AVG_ALL, None, "score"))
        averages[AVG_ALL] = list(plan.tasks)
    for col_id, over in averages.items():
        if avg is None or not over:
            continue
        for d in designs:
            per_seed = {sd: float(np.mean([got[(d, x, sd)]["score"] for x in over]))
                        for sd in plan.seeds if all((d, x, sd) in got for x in over)}  # fmt: skip
            if per_seed:
                cells[d][col_id] = Cell(per_seed)
    cache: StatisticsCache = {}
    for c in columns:
        over = averages.get(c.id, [c.task])
        t.best[c.id] = best_of(t, c, over, load_predictions, s.bootstrap, cache)
    t.best = {k: v for k, v in t.best.items() if v is not None}
    if published:
        t.paper = paper_rows(plan.model, columns, plan.tasks)
        if t.unlearned:  # the paper averages over every task: beside our average over all tasks
            for vals in t.paper.rows.values():
                if "avg" in vals:
                    vals[AVG_ALL] = vals.pop("avg")
    return t


def best_of(
    t: Table, col: Column, tasks: Sequence[str], load: PredictionLoader, resamples: int, cache: StatisticsCache
) -> Best | None:
    """The column's best and second-best design (by mean) and the p-values of their difference; designs
    with exactly the best mean are a tie (no p-values: there is no difference to test)."""
    ranked = sorted((d for d in t.designs if col.id in t.cells[d]), key=lambda d: -t.cells[d][col.id].mean)
    if not ranked:
        return None
    if len(ranked) == 1:
        return Best(ranked[0], None)
    b, s = ranked[0], ranked[1]
    cb, cs = t.cells[b][col.id], t.cells[s][col.id]
    tied = [d for d in ranked if abs(t.cells[d][col.id].mean - cb.mean) <= TIE_TOLERANCE]
    if len(tied) > 1:
        return Best(b, s, tied=tied, leads=False)
    seeds = [sd for sd in t.seeds if sd in cb.values and sd in cs.values]
    paired = [cb.values[x] - cs.values[x] for x in seeds]
    out = Best(
        b,
        s,
        p_t=paired_t([cb.values[x] for x in seeds], [cs.values[x] for x in seeds]),
        leads=bool(paired) and float(np.mean(paired)) > 0,
        same_seeds=set(cb.values) == set(cs.values),
    )
    if resamples and seeds:
        pairs = []
        for name in tasks:
            pb = [load(b, name, sd) for sd in seeds]
            ps = [load(s, name, sd) for sd in seeds]
            if any(x is None for x in [*pb, *ps]):
                return out  # a run without saved predictions: no bootstrap for this column
            task = load_task(name, conf_dir())
            metric = col.metric if col.task is not None else "score"
            pairs.append(PairedPredictions(task, metric, pb[0][1], [x[0] for x in pb], [x[0] for x in ps]))
        out.p_boot = paired_bootstrap(pairs, resamples, cache=cache)
    return out


def significant(p: float | None, alpha: float) -> bool:
    return p is not None and not math.isnan(p) and p < alpha

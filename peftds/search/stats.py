"""Search statistics (SPEC §5): design scores (mean over tasks), per-option means with bootstrap
intervals, EDFs, the winner of a stage and the running leader.

Everything here reads a stage's trials.csv (one row per trial, peftds.search.store) and its stage.json
(options, tasks, selection settings), so a summary can be made at any time, also while a search runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftds.errors import PeftdsError
from peftds.files import DECISION_FILE, RACE_FILE, STAGE_FILE, TRIALS_FILE, read_json
from peftds.search.decision import Decision, DecisionSettings, Fidelity, decide

if TYPE_CHECKING:
    import pandas as pd

TIE_TOLERANCE = 1e-9  # option means closer than this are equal (a tie, up to float rounding)


def finite(x: Any) -> bool:
    """x is a finite number (or a string of one)."""
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def edf(scores: Iterable[float]) -> list[tuple[float, float]]:
    """Empirical distribution of scores (Radosavovic et al. 2020): for every distinct score s, the
    share of designs scoring at most s, i.e. F(s) = #{score <= s} / n."""
    xs = sorted(float(s) for s in scores)
    n = len(xs)
    out: list[tuple[float, float]] = []
    for i, x in enumerate(xs):
        if i + 1 < n and xs[i + 1] == x:
            continue
        out.append((x, (i + 1) / n))
    return out


def edf_at(points: Sequence[tuple[float, float]], x: float) -> float:
    """F(x) of an EDF given as (score, share) points."""
    share = 0.0
    for s, f in points:
        if s <= x:
            share = f
        else:
            break
    return share


# Designs an option needs for its interval: below this the percentile bootstrap's 95% interval covers the
# true mean far less often than it says (simulated: 50% at 2 designs, 70-76% at 3, 78-83% at 5); from 8
# designs it covers it in >= 80% of simulated stages (normal scores ~89%, a skewed tail ~85%; see
# tests/search/test_stats.py). Below it, and when every design scores the same, the interval is n/a (NaN).
MIN_INTERVAL_DESIGNS = 8


def bootstrap_ci(
    scores: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling designs with replacement); (NaN, NaN), i.e.
    n/a, below MIN_INTERVAL_DESIGNS designs or when they all score the same (no zero-width interval)."""
    import numpy as np

    x = np.asarray(list(scores), dtype=float)
    if len(x) < MIN_INTERVAL_DESIGNS or n_boot <= 0 or np.ptp(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(int(n_boot), len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def read_table(path: str | Path) -> pd.DataFrame:
    """trials.csv as a DataFrame (empty frame with the right columns when there is no file)."""
    import pandas as pd

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["stage", "option", "index", "task", "design_hash", "score", "status"])
    df = pd.read_csv(
        path, dtype={"option": str, "design_hash": str, "trial_id": str}, keep_default_na=False, na_values=[""]
    )
    if "score" in df:
        df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df


def design_scores(df: pd.DataFrame, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (option, index) design, in order of first appearance: its score = mean over tasks
    (of each task's mean ok score), `complete` when every task of the task set has an ok trial (only
    complete designs enter an option's mean). One pass of group-bys: linear in the rows."""
    import numpy as np
    import pandas as pd

    cols = ["option", "index", "design_hash", "design", "score", "tasks_ok", "tasks_failed", "complete"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    keys = ["option", "index"]
    n_tasks = len(tasks) if tasks else df["task"].nunique()
    first = df.drop_duplicates(keys)  # a design's hash and name come from its first row
    ok = df[(df["status"] == "ok") & df["score"].map(finite)]
    # each task's mean first (a task can have two rows), then their mean: Series.mean per design, as
    # before, so that scores stay bit for bit the same
    per_task = ok.groupby([*keys, "task"], sort=True)["score"].mean()
    tasks_ok = per_task.groupby(level=[0, 1], sort=False).size()
    ends = np.cumsum(tasks_ok.to_numpy())  # per_task is sorted: each design's tasks are contiguous
    values = per_task.to_numpy(float)
    score = pd.Series([values[e - n : e].mean() for e, n in zip(ends, tasks_ok)], index=tasks_ok.index, dtype=float)
    ok_rows = ok.groupby(keys, sort=False).size()
    all_rows = df.groupby(keys, sort=False).size()
    idx = pd.MultiIndex.from_frame(first[keys])
    n_ok = tasks_ok.reindex(idx, fill_value=0).to_numpy(int)
    out = pd.DataFrame(
        {
            "option": first["option"].to_numpy(),
            "index": first["index"].astype(int).to_numpy(),
            "design_hash": [str(x) for x in first["design_hash"]],
            "design": [str(x) for x in first["design"]] if "design" in df else "",
            "score": score.reindex(idx).to_numpy(float),
            "tasks_ok": n_ok,
            "tasks_failed": (all_rows.reindex(idx) - ok_rows.reindex(idx, fill_value=0)).to_numpy(int),
            "complete": n_ok >= n_tasks,
        },
        columns=cols,
    )
    return out


def index_scores(
    df: pd.DataFrame, samples: Mapping[str, Sequence[Mapping[str, Any]]], options: Sequence[str], n_tasks: int
) -> dict[str, list[float]]:
    """Each sampled option's design scores in sample order, as far as every task of a design has a row (NaN:
    a design with a task that did not end ok): the prefix of finished designs, which is all a sequential
    decision or a race decides on. Sample order is index order, so position i of two options is a pair."""
    done = {(r.option, int(r.index)): r for r in design_scores(df, None).itertuples()} if not df.empty else {}
    out: dict[str, list[float]] = {}
    for opt in options:
        if opt not in samples:
            continue  # infeasible
        xs = []
        for s in samples[opt]:
            r = done.get((opt, int(s["index"])))
            if r is None or r.tasks_ok + r.tasks_failed < n_tasks:
                break  # not finished: the prefix ends here
            xs.append(float(r.score) if r.tasks_ok >= n_tasks else math.nan)
        out[opt] = xs
    return out


def stage_decision(stage_dir: Path, meta: Mapping[str, Any], df: pd.DataFrame) -> Decision | None:
    """The stage's decision from its rows: with the settings of its decision.json (a stage that ran
    sequentially), else one look at all N designs with the default δ* and α (a full-protocol stage).
    None for a raced stage (its options have unequal prefixes by design) or one without samples."""
    if (stage_dir / RACE_FILE).exists() or not meta.get("samples"):
        return None
    record = read_json(stage_dir / DECISION_FILE) or {}
    settings = DecisionSettings(**record["settings"]) if "settings" in record else DecisionSettings(sequential=False)
    fidelity = Fidelity(**record["fidelity"]) if record.get("fidelity") else None
    scores = index_scores(df, meta["samples"], meta["options_order"], len(meta["tasks"]))
    n_max = max(int(v) for v in meta["planned"].values())
    # a multi-fidelity stage's epoch-k scores live in its trials' records: decision.json keeps the last look's
    return decide(scores, n_max, settings, cheap=record.get("cheap_scores"), fidelity=fidelity)


def race_eliminated(race: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Options that left a race (race.json): option -> {"round": 1-based round, "why": its bound vs the leader's}."""
    return {
        e["option"]: {"round": d["round_index"] + 1, "why": e["why"]} for d in race["rounds"] for e in d["eliminated"]
    }


def race_targets(race: Mapping[str, Any]) -> dict[str, int]:
    """Designs a race gives each option: what it had when it left or the race ended, or what the next
    round needs (a survivor of an unfinished race)."""
    return {o: int(race["next_designs"].get(o, n)) for o, n in race["designs"].items()}


def scaled_min_ok(min_ok: int, planned: int | None, target: int | None) -> int:
    """min_ok of an option a race gave `target` of its `planned` designs: the same share of them (a
    race that ends early with one survivor would otherwise never reach min_ok)."""
    if target is None or not planned or target >= planned:
        return min_ok
    return max(1, math.ceil(min_ok * target / planned))


def summarize(
    df: pd.DataFrame,
    options: Sequence[str],
    tasks: Sequence[str] | None = None,
    *,
    min_ok: int = 1,
    n_boot: int = 2000,
    seed: int = 0,
    planned: Mapping[str, int] | None = None,
    infeasible: Mapping[str, str] | None = None,
    race: Mapping[str, Any] | None = None,
    decision: Decision | None = None,
) -> dict[str, Any]:
    """Per-option statistics and the winner of a stage.

    options: the stage's options in config order (ties go to the first); tasks: the task set;
    min_ok: complete designs an option needs; planned: designs sampled per option (to report pending
    trials); infeasible: option -> reason for options that could not be sampled; race: the stage's
    race.json (peftds.search.racing.race_record) when it races: options that left the race keep their
    statistics but are not ranked, only the designs the race gives an option are pending, the stage runs
    until the race is over, and min_ok scales with the designs the race gave an option. decision: the
    stage's verdict (peftds.search.decision); a sequential one acts like a race (options found worse are
    not ranked, only the designs of the looks taken or needed are pending).
    """
    import pandas as pd

    infeasible = dict(infeasible or {})
    planned = dict(planned or {})
    eliminated = race_eliminated(race) if race else {}
    targets = race_targets(race) if race else {}
    sequential = decision is not None and decision.settings.sequential
    if sequential:
        targets = dict(decision.full)  # rows are full-fidelity trials
        eliminated = {
            o: {"round": look, "why": f"{o}: worse than {decision.pick} (lower bound {decision.lower[o]:.2f} > 0)"}
            for o, look in decision.out.items()
        }
    per_design = design_scores(df, tasks)
    task_list = list(tasks) if tasks else (sorted(set(df["task"])) if not df.empty else [])
    stats: dict[str, dict[str, Any]] = {}
    for i, opt in enumerate(options):
        rows = df[df["option"] == opt] if not df.empty else df
        d = per_design[per_design["option"] == opt]
        scores = [float(s) for s in d[d["complete"]]["score"] if finite(s)]
        ok_rows = rows[(rows["status"] == "ok") & rows["score"].map(finite)] if not rows.empty else rows
        per_task = {}
        for t in task_list:
            s = ok_rows[ok_rows["task"] == t]["score"] if not ok_rows.empty else []
            per_task[t] = float(pd.Series(s, dtype=float).mean()) if len(s) else None
        wall = (
            pd.to_numeric(rows["wall_time_s"], errors="coerce").fillna(0)
            if "wall_time_s" in rows
            else pd.Series(dtype=float)
        )
        device = rows["device"].astype(str) if "device" in rows else pd.Series([""] * len(rows))
        gpu = float(wall[device.str.startswith("cuda").values].sum()) / 3600 if len(wall) else 0.0
        total_h = float(wall.sum()) / 3600 if len(wall) else 0.0
        n_planned = planned.get(opt)
        n_target = targets.get(opt, n_planned)  # designs this stage runs for the option (a race: fewer)
        expected = n_target * len(tasks) if (n_target is not None and tasks) else None
        mean = float(sum(scores) / len(scores)) if scores else float("nan")
        lo, hi = bootstrap_ci(scores, n_boot, seed + i)
        best = None
        if scores:
            top = d[d["complete"]].sort_values("score", ascending=False, kind="stable").iloc[0]
            best = {
                "index": int(top["index"]),
                "design_hash": top["design_hash"],
                "design": top["design"],
                "score": float(top["score"]),
            }
        stats[opt] = {
            "feasible": opt not in infeasible,
            "reason": infeasible.get(opt),
            "designs_planned": n_planned,
            "designs_ok": len(scores),
            "designs_incomplete": int(len(d) - len(scores)),
            "trials_ok": len(ok_rows),
            "trials_failed": int(len(rows) - len(ok_rows)),
            "trials_pending": max(0, expected - len(rows)) if expected is not None else 0,
            "per_task": per_task,
            "mean": mean,
            "ci_low": lo,
            "ci_high": hi,
            "std": float(pd.Series(scores).std()) if len(scores) > 1 else 0.0 if scores else float("nan"),
            "scores": scores,
            "edf": edf(scores),
            "hours": total_h,
            "gpu_hours": gpu,
            "best": best,
        }
    feasible = [o for o in options if stats[o]["feasible"]]
    pending = sum(stats[o]["trials_pending"] for o in feasible)
    racing = [o for o in feasible if o not in eliminated]  # every feasible option when the stage does not race
    need = {o: scaled_min_ok(min_ok, planned.get(o), targets.get(o)) for o in racing}
    short = [o for o in racing if stats[o]["designs_ok"] < need[o]]
    ranked = sorted(
        (o for o in racing if stats[o]["designs_ok"] > 0), key=lambda o: (-stats[o]["mean"], options.index(o))
    )
    if decision is not None and decision.fidelity is not None and decision.pick in ranked:
        # multi-fidelity: the decision's control-variate estimates rank the options, not the means of the
        # designs that were continued
        ranked = [decision.pick, *(o for o in ranked if o != decision.pick)]
    # options with exactly the best mean: a tie, broken by the order of the stage's options
    tied = [o for o in ranked if ranked and abs(stats[o]["mean"] - stats[ranked[0]]["mean"]) <= TIE_TOLERANCE]
    out: dict[str, Any] = {
        "options": stats,
        "order": list(options),
        "tasks": task_list,
        "min_ok": min_ok,
        "winner": None,
        "runner_up": None,
        "overlap": None,
        "leader": ranked[0] if ranked else None,
        "tie": tied if len(tied) > 1 else None,
    }
    if decision is not None:
        out["verdict"] = decision.verdict if decision.finished else None
        out["decision"] = {**decision.to_dict(), "line": decision.line()}
    if race or sequential:
        out["eliminated"] = eliminated
    if race:
        out["race"] = {
            k: race[k] for k in ("winner", "finished", "trial_epochs", "full_trial_epochs", "compute_fraction")
        }
    if not feasible:
        out.update(status="infeasible", message="every option is infeasible")
    elif pending:
        out.update(status="running", message=f"{pending} trial(s) still to run")
    elif race and not race["finished"]:
        out.update(status="running", message=f"the race goes on: round {len(race['rounds']) + 1} still to run")
    elif sequential and not decision.finished:
        out.update(status="running", message=f"the decision goes on: look {decision.looks + 1} still to run")
    elif short:
        detail = ", ".join(f"{o} ({stats[o]['designs_ok']}" + (f" < {need[o]}" if race else "") + ")" for o in short)
        out.update(
            status="insufficient", message=f"too few successful designs to pick a winner: {detail} < min_ok={min_ok}"
        )
    else:
        out.update(status="ok", message="")
    if out["status"] == "ok" and ranked:
        w = ranked[0]
        out["winner"] = w
        if len(ranked) > 1:
            r = ranked[1]
            out["runner_up"] = r
            bounds = [stats[o][k] for o in (w, r) for k in ("ci_low", "ci_high")]
            if all(finite(b) for b in bounds):  # an n/a interval overlaps nothing and separates nothing
                out["overlap"] = bool(
                    stats[w]["ci_low"] <= stats[r]["ci_high"] and stats[r]["ci_low"] <= stats[w]["ci_high"]
                )
            if out["tie"]:
                out["message"] = (
                    f"a tie: {', '.join(out['tie'])} have the same mean; broken by the order of the stage's "
                    f"options ({w} is listed first)"
                )
            elif out["overlap"]:
                out["message"] = (
                    f"the winner's 95% interval overlaps the runner-up's ({r}): the ranking of "
                    f"these two is not significant at this N"
                )
    return out


def stage_summary(stage_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """Recompute a stage's summary from its trials.csv and stage.json."""
    stage_dir = Path(stage_dir)
    meta_path = stage_dir / STAGE_FILE
    if not meta_path.exists():
        raise PeftdsError(f"{stage_dir} is not a search stage dir (no {STAGE_FILE})")
    meta = json.loads(meta_path.read_text())
    race = read_json(stage_dir / RACE_FILE) if (stage_dir / RACE_FILE).exists() else None
    df = read_table(stage_dir / TRIALS_FILE)
    decision = stage_decision(stage_dir, meta, df)
    if meta.get("samples") and not df.empty:  # only the designs this stage sampled (N may have changed) ...
        # ... and of a race or a sequential decision only the prefix it gives each option
        cap = race_targets(race) if race else dict(decision.full) if decision and decision.settings.sequential else {}
        planned = {(o, int(s["index"])) for o, lst in meta["samples"].items() for s in lst[: cap.get(o, len(lst))]}
        df = df[[(o, int(i)) in planned for o, i in zip(df["option"], df["index"])]]
    summary = summarize(
        df,
        meta["options_order"],
        meta["tasks"],
        min_ok=int(meta["min_ok"]),
        n_boot=int(meta.get("bootstrap", 2000) if n_boot is None else n_boot),
        seed=int(meta.get("seed", 0)),
        planned=meta.get("planned"),
        infeasible=meta.get("infeasible"),
        race=race,
        decision=decision,
    )
    summary["stage"] = meta["name"]
    summary["dimension"] = meta.get("dimension")
    summary["group"] = meta.get("group")
    summary["values"] = meta.get("options")
    summary["space"] = meta.get("space")
    return summary


def current_leader(rows: Sequence[Mapping[str, str]], n_tasks: int) -> tuple[str, float, int] | None:
    """(option, mean, designs) of the best option so far, over designs with every task ok."""
    per_design: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("score"):
            per_design.setdefault((r["option"], r["index"]), []).append(float(r["score"]))
    by_opt: dict[str, list[float]] = {}
    for (opt, _), scores in per_design.items():
        if len(scores) >= n_tasks:
            by_opt.setdefault(opt, []).append(sum(scores) / len(scores))
    if not by_opt:
        return None
    opt, scores = max(by_opt.items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
    return opt, sum(scores) / len(scores), len(scores)

"""Search statistics and reports (SPEC §5): per-option means with bootstrap intervals, EDFs, the
winner, and `peftds report <search dir>` (Markdown tables like the paper's stage tables + PNG plots).

Everything here reads a stage's ``trials.csv`` (one row per trial, written by peftds.search.runner) and its
``stage.json`` (options, tasks, selection settings), so a report can be made at any time, also while
a search is still running.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from peftds.errors import PeftdsError
from peftds.files import (
    BEST_DESIGN,
    EDF_PLOT,
    REPORT_FILE,
    SCORES_PLOT,
    SEARCH_STATE,
    SPACE_NEXT,
    STAGE_FILE,
    TRIALS_FILE,
)
from peftds.model.strategies import LETTERS_NOTE

CLI_COMMANDS: dict[str, Any] = {}


# ----------------------------------------------------------------------------------- statistics

def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def _finite(x: Any) -> bool:
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


def bootstrap_ci(scores: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling designs with replacement)."""
    import numpy as np

    x = np.asarray(list(scores), dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if len(x) == 1 or n_boot <= 0:
        m = float(x.mean())
        return (m, m)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(int(n_boot), len(x)))].mean(axis=1)
    alpha = (1 - level) / 2
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


def read_table(path: str | Path):
    """trials.csv as a DataFrame (empty frame with the right columns when there is no file)."""
    import pandas as pd

    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame(columns=["stage", "option", "index", "task", "design_hash", "score", "status"])
    df = pd.read_csv(path, dtype={"option": str, "design_hash": str, "trial_id": str}, keep_default_na=False,
                     na_values=[""])
    if "score" in df:
        df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df


def design_scores(df, tasks: Sequence[str] | None = None):
    """One row per (option, index) design: its score = mean over tasks, `complete` when every task of
    the task set has an ok trial (only complete designs enter an option's mean)."""
    import pandas as pd

    cols = ["option", "index", "design_hash", "design", "score", "tasks_ok", "tasks_failed", "complete"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    ok = df[(df["status"] == "ok") & df["score"].map(_finite)]
    n_tasks = len(tasks) if tasks else df["task"].nunique()
    rows = []
    for (opt, idx), g in df.groupby(["option", "index"], sort=False):
        gok = ok[(ok["option"] == opt) & (ok["index"] == idx)]
        tasks_ok = gok["task"].nunique()
        complete = tasks_ok >= n_tasks
        score = float(gok.groupby("task")["score"].mean().mean()) if tasks_ok else float("nan")
        rows.append({
            "option": opt, "index": int(idx), "design_hash": str(g["design_hash"].iloc[0]),
            "design": str(g["design"].iloc[0]) if "design" in g else "",
            "score": score, "tasks_ok": int(tasks_ok), "tasks_failed": int(len(g) - len(gok)), "complete": complete,
        })
    return pd.DataFrame(rows, columns=cols)


def summarize(df, options: Sequence[str], tasks: Sequence[str] | None = None, *, min_ok: int = 1,
              n_boot: int = 2000, seed: int = 0, planned: Mapping[str, int] | None = None,
              infeasible: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per-option statistics and the winner of a stage.

    options: the stage's options in config order (ties go to the first); tasks: the task set;
    min_ok: complete designs an option needs; planned: designs sampled per option (to report pending
    trials); infeasible: option -> reason for options that could not be sampled.
    """
    import pandas as pd

    infeasible = dict(infeasible or {})
    planned = dict(planned or {})
    per_design = design_scores(df, tasks)
    task_list = list(tasks) if tasks else (sorted(set(df["task"])) if not df.empty else [])
    stats: dict[str, dict[str, Any]] = {}
    for i, opt in enumerate(options):
        rows = df[df["option"] == opt] if not df.empty else df
        d = per_design[per_design["option"] == opt]
        scores = [float(s) for s in d[d["complete"]]["score"] if _finite(s)]
        ok_rows = rows[(rows["status"] == "ok") & rows["score"].map(_finite)] if not rows.empty else rows
        per_task = {}
        for t in task_list:
            s = ok_rows[ok_rows["task"] == t]["score"] if not ok_rows.empty else []
            per_task[t] = float(pd.Series(s, dtype=float).mean()) if len(s) else None
        wall = pd.to_numeric(rows["wall_time_s"], errors="coerce").fillna(0) if "wall_time_s" in rows else pd.Series(dtype=float)
        device = rows["device"].astype(str) if "device" in rows else pd.Series([""] * len(rows))
        gpu = float(wall[device.str.startswith("cuda").values].sum()) / 3600 if len(wall) else 0.0
        total_h = float(wall.sum()) / 3600 if len(wall) else 0.0
        n_planned = planned.get(opt)
        expected = n_planned * len(tasks) if (n_planned is not None and tasks) else None
        mean = float(sum(scores) / len(scores)) if scores else float("nan")
        lo, hi = bootstrap_ci(scores, n_boot, seed + i)
        best = None
        if scores:
            top = d[d["complete"]].sort_values("score", ascending=False, kind="stable").iloc[0]
            best = {"index": int(top["index"]), "design_hash": top["design_hash"], "design": top["design"],
                    "score": float(top["score"])}
        stats[opt] = {
            "feasible": opt not in infeasible,
            "reason": infeasible.get(opt),
            "designs_planned": n_planned,
            "designs_ok": len(scores),
            "designs_incomplete": int(len(d) - len(scores)),
            "trials_ok": int(len(ok_rows)),
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
    short = [o for o in feasible if stats[o]["designs_ok"] < min_ok]
    ranked = sorted((o for o in feasible if stats[o]["designs_ok"] > 0),
                    key=lambda o: (-stats[o]["mean"], options.index(o)))
    out: dict[str, Any] = {"options": stats, "order": list(options), "tasks": task_list, "min_ok": min_ok,
                           "winner": None, "runner_up": None, "overlap": None, "leader": ranked[0] if ranked else None}
    if not feasible:
        out.update(status="infeasible", message="every option is infeasible")
    elif pending:
        out.update(status="running", message=f"{pending} trial(s) still to run")
    elif short:
        detail = ", ".join(f"{o} ({stats[o]['designs_ok']})" for o in short)
        out.update(status="insufficient",
                   message=f"too few successful designs to pick a winner: {detail} < min_ok={min_ok}")
    else:
        out.update(status="ok", message="")
    if out["status"] == "ok" and ranked:
        w = ranked[0]
        out["winner"] = w
        if len(ranked) > 1:
            r = ranked[1]
            out["runner_up"] = r
            out["overlap"] = bool(stats[w]["ci_low"] <= stats[r]["ci_high"] and stats[r]["ci_low"] <= stats[w]["ci_high"])
            if out["overlap"]:
                out["message"] = (f"the winner's 95% interval overlaps the runner-up's ({r}): the ranking of "
                                  f"these two is not significant at this N")
    return out


# ----------------------------------------------------------------------------------- rendering
def _fmt(x: Any, nd: int = 2) -> str:
    return f"{x:.{nd}f}" if _finite(x) else "–"


def markdown_table(summary: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> str:
    """The stage table: option x task scores, mean, 95% interval, designs/trials, compute, winner."""
    tasks = list(summary.get("tasks") or [])
    if values and all(_show_value(v) == str(k) for k, v in values.items()):
        values = None  # option names already say it (grouping, allocation)
    head = ["option"] + (["constraint"] if values else []) + tasks + ["mean", "95% CI", "designs ok", "trials ok/failed",
                                                                      "GPU·h", "wall·h"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for opt in summary["order"]:
        s = summary["options"][opt]
        name = f"**{opt}** ★" if opt == summary.get("winner") else opt
        cells = [name]
        if values:
            cells.append(_show_value(values.get(opt)))
        if not s["feasible"]:
            cells += ["–"] * len(tasks) + [f"infeasible: {s['reason']}", "", "", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells += [_fmt(s["per_task"].get(t)) for t in tasks]
        cells += [_fmt(s["mean"]), f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]",
                  f"{s['designs_ok']}" + (f"/{s['designs_planned']}" if s.get("designs_planned") is not None else ""),
                  f"{s['trials_ok']}/{s['trials_failed']}", f"{s['gpu_hours']:.3g}", f"{s['hours']:.3g}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _show_value(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show_value(x) if isinstance(x, (list, tuple)) else str(x) for x in v) + "]"
    return str(v)


def verdict(summary: Mapping[str, Any]) -> str:
    st = summary.get("status")
    if st == "ok" and summary.get("winner"):
        w = summary["winner"]
        s = summary["options"][w]
        line = f"winner: {w} (mean {_fmt(s['mean'])}, 95% CI [{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}], {s['designs_ok']} designs)"
        if summary.get("runner_up"):
            r = summary["runner_up"]
            rs = summary["options"][r]
            line += (f"; runner-up: {r} (mean {_fmt(rs['mean'])}); intervals "
                     f"{'overlap' if summary['overlap'] else 'do not overlap'}")
        return line
    return f"no winner ({st}): {summary.get('message')}"


def plot_stage(summary: Mapping[str, Any], out_dir: Path, title: str) -> list[Path]:
    """edf.png (EDF per option) and scores.png (design scores by option with mean and 95% CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    opts = [o for o in summary["order"] if summary["options"][o]["scores"]]
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    every = [x for o in opts for x in summary["options"][o]["scores"]]
    pad = (max(every) - min(every)) * 0.05 + 0.5 if every else 1.0
    lo_x, hi_x = (min(every) - pad, max(every) + pad) if every else (0.0, 1.0)
    for o in opts:
        pts = summary["options"][o]["edf"]
        xs = [lo_x] + [p[0] for p in pts] + [hi_x]
        ys = [0.0] + [p[1] for p in pts] + [1.0]
        lw = 2.5 if o == summary.get("winner") else 1.4
        ax.step(xs, ys, where="post", lw=lw,
                label=f"{o} (mean {_fmt(summary['options'][o]['mean'])}, n={len(summary['options'][o]['scores'])})")
    ax.set_xlabel("design score (mean over tasks, held-out)")
    ax.set_ylabel("share of designs with score ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(lo_x, hi_x)
    ax.set_title(f"{title}: EDF of design scores")
    ax.grid(alpha=0.3)
    if opts:
        ax.legend(fontsize=7, loc="upper left")
    paths.append(_save(plt, fig, out_dir / EDF_PLOT))

    fig, ax = plt.subplots(figsize=(max(4.8, 0.55 * len(summary["order"]) + 2), 4.2))
    import random as _random

    jitter = _random.Random(0)
    for i, o in enumerate(summary["order"]):
        s = summary["options"][o]
        if not s["scores"]:
            continue
        xs = [i + jitter.uniform(-0.15, 0.15) for _ in s["scores"]]
        ax.scatter(xs, s["scores"], s=12, alpha=0.5, color="tab:blue")
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
        color = "tab:red" if o == summary.get("winner") else "black"
        ax.errorbar([i], [s["mean"]], yerr=err, fmt="D", color=color, capsize=4, ms=6)
    ax.set_xticks(range(len(summary["order"])))
    ax.set_xticklabels(summary["order"], rotation=45 if len(summary["order"]) > 6 else 0, ha="right" if len(summary["order"]) > 6 else "center")
    ax.set_ylabel("design score (mean over tasks)")
    ax.set_title(f"{title}: scores by option (mean, 95% CI)")
    ax.grid(alpha=0.3, axis="y")
    paths.append(_save(plt, fig, out_dir / SCORES_PLOT))
    return paths


# ----------------------------------------------------------------------------------- stage / search dirs
def stage_summary(stage_dir: str | Path, n_boot: int | None = None) -> dict[str, Any]:
    """Recompute a stage's summary from its trials.csv and stage.json."""
    stage_dir = Path(stage_dir)
    meta_path = stage_dir / STAGE_FILE
    if not meta_path.exists():
        raise PeftdsError(f"{stage_dir} is not a search stage dir (no {STAGE_FILE})")
    meta = json.loads(meta_path.read_text())
    df = read_table(stage_dir / TRIALS_FILE)
    if meta.get("samples") and not df.empty:  # only the designs this stage sampled (N may have changed)
        planned = {(o, int(s["index"])) for o, lst in meta["samples"].items() for s in lst}
        df = df[[(o, int(i)) in planned for o, i in zip(df["option"], df["index"])]]
    summary = summarize(
        df, meta["options_order"], meta["tasks"], min_ok=int(meta["min_ok"]),
        n_boot=int(meta.get("bootstrap", 2000) if n_boot is None else n_boot), seed=int(meta.get("seed", 0)),
        planned=meta.get("planned"), infeasible=meta.get("infeasible"),
    )
    summary["stage"] = meta["name"]
    summary["dimension"] = meta.get("dimension")
    summary["group"] = meta.get("group")
    summary["values"] = meta.get("options")
    summary["space"] = meta.get("space")
    return summary


def stage_markdown(stage_dir: Path, summary: Mapping[str, Any]) -> str:
    name = summary["stage"]
    dim = summary.get("dimension") or "none"
    if summary.get("group"):
        dim += f" (group {summary['group']})"
    lines = [f"## Stage `{name}` — {dim}", ""]
    space = summary.get("space") or {}
    if space:
        lines += [f"Input space: `{space.get('describe', '')}`", ""]
    tasks = summary.get("tasks") or []
    lines += [f"Score: mean over tasks ({', '.join(tasks)}) on the held-out slice of the training data; "
              f"an option's mean is over designs with every task ok (min {summary['min_ok']} for a winner).", ""]
    lines += [markdown_table(summary, summary.get("values")), ""]
    lines += [f"**{verdict(summary)}**", ""]
    if summary.get("message") and summary.get("status") == "ok":
        lines += [f"Note: {summary['message']}", ""]
    if dim.startswith("strategies"):
        lines += [f"Strategy letters: {LETTERS_NOTE}.", ""]
    w = summary.get("winner")
    if w and summary["options"][w].get("best"):
        b = summary["options"][w]["best"]
        lines += [f"Best design of the winning option: `{b['design']}` (hash {b['design_hash']}, score {_fmt(b['score'])})", ""]
    for extra in (SPACE_NEXT, BEST_DESIGN):
        if (stage_dir / extra).exists():
            lines.append(f"- `{extra}`")
    lines += [f"- ![EDF]({EDF_PLOT})", f"- ![scores]({SCORES_PLOT})", ""]
    return "\n".join(lines)


def write_stage_report(stage_dir: str | Path, n_boot: int | None = None) -> tuple[dict[str, Any], str]:
    stage_dir = Path(stage_dir)
    summary = stage_summary(stage_dir, n_boot)
    plot_stage(summary, stage_dir, summary["stage"])
    md = stage_markdown(stage_dir, summary)
    (stage_dir / REPORT_FILE).write_text(f"# peftds search report\n\n{md}")
    return summary, md


def stage_dirs(path: str | Path) -> list[Path]:
    """Stage dirs under a search dir (in the order the search ran them), or [path] for a stage dir."""
    path = Path(path)
    if (path / STAGE_FILE).exists():
        return [path]
    order_file = path / SEARCH_STATE
    order: list[str] = []
    if order_file.exists():
        order = list(json.loads(order_file.read_text()).get("stages_run") or [])
    found = [p.parent for p in path.glob(f"*/{STAGE_FILE}")]
    found.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), (p / STAGE_FILE).stat().st_mtime))
    return found


def write_report(path: str | Path, n_boot: int | None = None, echo=print) -> Path:
    """Reports for every stage under `path` plus a combined report.md at its top."""
    path = Path(path)
    if not path.is_dir():
        raise PeftdsError(f"search dir not found: {path}")
    dirs = stage_dirs(path)
    if not dirs:
        raise PeftdsError(f"{path} holds no search stage (no */{STAGE_FILE}); is it a `peftds search` dir?")
    parts = ["# peftds search report", "", f"Search dir: `{path}`", ""]
    for d in dirs:
        summary, md = write_stage_report(d, n_boot)
        rel = d.relative_to(path) if d != path else Path(".")
        parts.append(md.replace(f"]({EDF_PLOT})", f"]({rel / EDF_PLOT})").replace(f"]({SCORES_PLOT})", f"]({rel / SCORES_PLOT})"))
        echo(f"stage {summary['stage']} ({d}):")
        echo(markdown_table(summary, summary.get("values")))
        echo(verdict(summary))
        echo("")
    if (path / BEST_DESIGN).exists() and path not in dirs:
        parts += ["## Final design", "", "```yaml", (path / BEST_DESIGN).read_text().rstrip(), "```", ""]
    out = path / REPORT_FILE
    out.write_text("\n".join(parts))
    echo(f"report: {out}")
    return out


def cmd_report(argv: list[str]) -> int:
    """`peftds report <search dir or stage dir> [bootstrap=N]`."""
    dirs = [a for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(opts) - {"bootstrap"}
    if unknown or len(dirs) != 1:
        raise PeftdsError("usage: peftds report <search dir> [bootstrap=N]"
                          + (f" (unknown option(s) {sorted(unknown)})" if unknown else ""))
    write_report(dirs[0], int(opts["bootstrap"]) if "bootstrap" in opts else None)
    return 0


CLI_COMMANDS["report"] = cmd_report

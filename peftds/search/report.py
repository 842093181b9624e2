"""Search reports (SPEC §5): `peftds report <search dir>` writes Markdown tables like the paper's stage
tables and PNG plots (EDF per option, design scores by option) from the stage summaries (peftds.search.stats).
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from peftds.errors import PeftdsError
from peftds.files import (
    BEST_DESIGN,
    CONF_SUBDIR,
    EDF_PLOT,
    RACE_FILE,
    REPORT_FILE,
    SCORES_PLOT,
    SPACE_NEXT,
    STAGE_FILE,
    read_json,
    save_figure,
    write_text_atomic,
)
from peftds.model.strategies import LETTERS_NOTE
from peftds.plotting import legend_outside, series_style
from peftds.search.racing import race_markdown
from peftds.search.state import read_state
from peftds.search.stats import finite, stage_summary

USAGE = "usage: peftds report <search dir or stage dir> [bootstrap=N]"


def _fmt(x: Any, nd: int = 2) -> str:
    return f"{x:.{nd}f}" if finite(x) else "–"


def ci_text(s: Mapping[str, Any]) -> str:
    """An option's 95% interval, or n/a (too few designs, or no spread: peftds.search.stats.bootstrap_ci)."""
    if not (finite(s["ci_low"]) and finite(s["ci_high"])):
        return "n/a"
    return f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"


def markdown_table(summary: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> str:
    """The stage table: option x task scores, mean, 95% interval, designs/trials, compute, winner."""
    tasks = list(summary.get("tasks") or [])
    if values and all(_show_value(v) == str(k) for k, v in values.items()):
        values = None  # option names already say it (grouping, allocation)
    head = (
        ["option"]
        + (["constraint"] if values else [])
        + tasks
        + ["mean", "95% CI", "designs ok", "trials ok/failed", "GPU·h", "wall·h"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    out = summary.get("eliminated") or {}  # options that left a race
    for opt in summary["order"]:
        s = summary["options"][opt]
        name = f"**{opt}** ★" if opt == summary.get("winner") else opt
        if opt in (summary.get("tie") or []):
            name += " (tie)"
        if opt in out:
            name += f" (out, round {out[opt]['round']})"
        cells = [name]
        if values:
            cells.append(_show_value(values.get(opt)))
        if not s["feasible"]:
            cells += ["–"] * len(tasks) + [f"infeasible: {s['reason']}", "", "", "", "", ""]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells += [_fmt(s["per_task"].get(t)) for t in tasks]
        cells += [
            _fmt(s["mean"]),
            ci_text(s),
            f"{s['designs_ok']}" + (f"/{s['designs_planned']}" if s.get("designs_planned") is not None else ""),
            f"{s['trials_ok']}/{s['trials_failed']}",
            f"{s['gpu_hours']:.3g}",
            f"{s['hours']:.3g}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _show_value(v: Any) -> str:
    if v is None:
        return "(none)"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_show_value(x) if isinstance(x, (list, tuple)) else str(x) for x in v) + "]"
    return str(v)


def verdict(summary: Mapping[str, Any]) -> str:
    """One line: the winner with its interval and the runner-up, or why there is none."""
    st = summary.get("status")
    if st == "ok" and summary.get("winner"):
        w = summary["winner"]
        s = summary["options"][w]
        line = f"winner: {w} (mean {_fmt(s['mean'])}, 95% CI {ci_text(s)}, {s['designs_ok']} designs)"
        if summary.get("tie"):
            others = [o for o in summary["tie"] if o != w]
            return line + f"; a tie with {', '.join(others)} (same mean), broken by the order of the stage's options"
        if summary.get("runner_up"):
            r = summary["runner_up"]
            rs = summary["options"][r]
            overlap = summary["overlap"]
            said = "overlap" if overlap else "do not overlap"
            if overlap is None:
                said = "n/a (too few designs or no spread)"
            line += f"; runner-up: {r} (mean {_fmt(rs['mean'])}); intervals {said}"
        return line
    return f"no winner ({st}): {summary.get('message')}"


def decision_markdown(decision: Mapping[str, Any]) -> str:
    """The decision's bounds: per option the lower bound on μ_pick − μ_option at the last look."""
    s = decision["settings"]
    how = (
        f"looks at {', '.join(map(str, decision['schedule']))} designs per option"
        if s["sequential"]
        else f"one look at {decision['schedule'][-1]} designs per option"
    )
    fidelity = decision.get("fidelity")
    if fidelity:  # the option means of the summary are over the designs continued; the decision's are these
        how += (
            f"; multi-fidelity: every design to epoch {fidelity['cheap_epochs']} of {fidelity['epochs']}, "
            f"{fidelity['share']:.0%} of each look continued, control-variate estimates"
        )
    means = decision.get("means") or {}
    lines = [
        f"Stage decision (paired differences vs the pick, t bounds at α'={decision['test_alpha']:.2g} = "
        f'α/(pairs·looks), δ*={s["tolerance"]:g}; {how}; README "Stage decisions"):',
        "",
        "| option | estimated mean | designs (full fidelity) | lower bound of pick − option | found worse (look) "
        "| within δ* |",
        "|---|---|---|---|---|---|",
    ]
    for o, n in decision["designs"].items():
        low = "pick" if o == decision["pick"] else _fmt(decision["lower"].get(o))
        out = decision["out"].get(o)
        within = "–" if o == decision["pick"] else "yes" if o in decision["within"] else "no"
        full = (decision.get("full") or {}).get(o, n)
        lines.append(f"| {o} | {_fmt(means.get(o))} | {n} ({full}) | {low} | {out if out else '–'} | {within} |")
    return "\n".join(lines)


def plot_stage(summary: Mapping[str, Any], out_dir: Path, title: str) -> list[Path]:
    """edf.png (EDF per option) and scores.png (design scores by option with mean and 95% CI). Each
    option keeps one colour and line style in both plots; the winner is drawn last (on top), thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    winner = summary.get("winner")
    style = {o: series_style(i) for i, o in enumerate(summary["order"])}
    opts = [o for o in summary["order"] if summary["options"][o]["scores"]]
    paths = []
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    every = [x for o in opts for x in summary["options"][o]["scores"]]
    pad = (max(every) - min(every)) * 0.05 + 0.5 if every else 1.0
    lo_x, hi_x = (min(every) - pad, max(every) + pad) if every else (0.0, 1.0)
    for o in opts_drawn(opts, winner):  # the winner last: nothing hides it
        s = summary["options"][o]
        pts = s["edf"]
        xs = [lo_x] + [p[0] for p in pts] + [hi_x]
        ys = [0.0] + [p[1] for p in pts] + [1.0]
        won = o == winner
        ax.step(
            xs,
            ys,
            where="post",
            color=style[o]["color"],
            linestyle="-" if won else style[o]["linestyle"],
            lw=3.0 if won else 1.3,
            zorder=3 if won else 2,
            label=f"{o}{' ★' if won else ''} (mean {_fmt(s['mean'])}, n={len(s['scores'])})",
        )
    ax.set_xlabel("design score (mean over tasks, held-out)")
    ax.set_ylabel("share of designs with score ≤ x")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(lo_x, hi_x)
    ax.set_title(f"{title}: EDF of design scores")
    ax.grid(alpha=0.3)
    if opts:
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(opts)), key=lambda i: summary["order"].index(opts_drawn(opts, winner)[i]))
        legend_outside(ax, [handles[i] for i in order], [labels[i] for i in order], "option (table order)")
    paths.append(save_figure(plt, fig, out_dir / EDF_PLOT))

    fig, ax = plt.subplots(figsize=(max(4.8, 0.55 * len(summary["order"]) + 2), 4.2))
    jitter = random.Random(0)
    for i, o in enumerate(summary["order"]):
        s = summary["options"][o]
        if not s["scores"]:
            continue
        xs = [i + jitter.uniform(-0.15, 0.15) for _ in s["scores"]]
        ax.scatter(xs, s["scores"], s=12, alpha=0.5, color=style[o]["color"], marker=style[o]["marker"])
        has_ci = finite(s["ci_low"]) and finite(s["ci_high"])  # n/a: the mean alone
        err = [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]] if has_ci else None
        color = "tab:red" if o == winner else "black"
        ax.errorbar([i], [s["mean"]], yerr=err, fmt="D", color=color, capsize=4, ms=6, zorder=3)
    ax.set_xticks(range(len(summary["order"])))
    ax.set_xticklabels(
        [f"{o} ★" if o == winner else o for o in summary["order"]],
        rotation=45 if len(summary["order"]) > 6 else 0,
        ha="right" if len(summary["order"]) > 6 else "center",
    )
    ax.set_ylabel("design score (mean over tasks)")
    ax.set_title(f"{title}: scores by option (mean, 95% CI; winner red)")
    ax.grid(alpha=0.3, axis="y")
    paths.append(save_figure(plt, fig, out_dir / SCORES_PLOT))
    return paths


def opts_drawn(opts: list[str], winner: str | None) -> list[str]:
    """The options in the order plot_stage draws them (the winner last)."""
    return sorted(opts, key=lambda o: o == winner)


def stage_markdown(stage_dir: Path, summary: Mapping[str, Any]) -> str:
    """The Markdown section of one stage: table, verdict, best design, files and plots."""
    name = summary["stage"]
    dim = summary.get("dimension") or "none"
    if summary.get("group"):
        dim += f" (group {summary['group']})"
    lines = [f"## Stage `{name}` — {dim}", ""]
    space = summary.get("space") or {}
    if space:
        lines += [f"Input space: `{space.get('describe', '')}`", ""]
    tasks = summary.get("tasks") or []
    lines += [
        f"Score: mean over tasks ({', '.join(tasks)}) on the held-out slice of the training data; "
        f"an option's mean is over designs with every task ok (min {summary['min_ok']} for a winner).",
        "",
    ]
    lines += [markdown_table(summary, summary.get("values")), ""]
    lines += [f"**{verdict(summary)}**", ""]
    if summary.get("decision"):
        d = summary["decision"]
        lines += [f"**{d['line']}**", ""]
        lines += [decision_markdown(d), ""]
    race = read_json(stage_dir / RACE_FILE) if (stage_dir / RACE_FILE).exists() else None
    if race:
        lines += [race_markdown(race), ""]
    if summary.get("message") and summary.get("status") == "ok":
        lines += [f"Note: {summary['message']}", ""]
    lines += [f"Strategy letters (in option names and designs): {LETTERS_NOTE}.", ""]
    w = summary.get("winner")
    if w and summary["options"][w].get("best"):
        b = summary["options"][w]["best"]
        lines += [
            f"Best design of the winning option: `{b['design']}` (hash {b['design_hash']}, score {_fmt(b['score'])})",
            "",
        ]
    for extra in (SPACE_NEXT, BEST_DESIGN):
        if (stage_dir / extra).exists():
            lines.append(f"- `{extra}`")
    lines += [f"- ![EDF]({EDF_PLOT})", f"- ![scores]({SCORES_PLOT})", ""]
    return "\n".join(lines)


def write_stage_report(stage_dir: str | Path, n_boot: int | None = None) -> tuple[dict[str, Any], str]:
    """report.md and the plots of one stage dir; returns (summary, its Markdown section)."""
    stage_dir = Path(stage_dir)
    summary = stage_summary(stage_dir, n_boot)
    plot_stage(summary, stage_dir, summary["stage"])
    md = stage_markdown(stage_dir, summary)
    write_text_atomic(stage_dir / REPORT_FILE, f"# peftds search report\n\n{md}")
    return summary, md


def stage_dirs(path: str | Path) -> list[Path]:
    """Stage dirs under a search dir (in the order the search ran them), or [path] for a stage dir."""
    path = Path(path)
    if (path / STAGE_FILE).exists():
        return [path]
    order = list(read_state(path).get("stages_run") or [])
    found = [p.parent for p in path.glob(f"*/{STAGE_FILE}")]
    found.sort(key=lambda p: (order.index(p.name) if p.name in order else len(order), (p / STAGE_FILE).stat().st_mtime))
    return found


# The header line write_space_next puts in every space_next.yaml; a search copies the file it starts from
# into <search dir>/conf/space/, so the line still names the stage that produced its input space.
NEXT_LINE = re.compile(r"^# next: peftds search stage=.*? space=(\S+)$", re.MULTILINE)


def earlier_stages(search_dir: Path) -> list[Path]:
    """Stage dirs of earlier searches a search was chained from (`space=<stage>/space_next.yaml`),
    oldest first; [] when its input space came from no stage."""
    out: list[Path] = []
    sdir = search_dir
    while True:
        args = [a.lstrip("+") for a in read_state(sdir).get("args") or []]  # stored as +space=<name>
        space = next((a.split("=", 1)[1] for a in args if a.startswith("space=")), None)
        copied = sdir / CONF_SUBDIR / "space" / f"{space}.yaml"
        found = NEXT_LINE.search(copied.read_text()) if space and copied.is_file() else None
        stage = Path(found.group(1)).parent if found else None
        if stage is None or not (stage / STAGE_FILE).exists() or stage in out or stage.parent == search_dir:
            return out
        out.insert(0, stage)
        sdir = stage.parent


def write_report(path: str | Path, n_boot: int | None = None, echo: Callable[..., Any] = print) -> Path:
    """Reports for every stage under `path` plus a combined report.md at its top; a search chained from
    an earlier one (space=<stage>/space_next.yaml) also shows the earlier stages, first."""
    path = Path(path)
    if not path.is_dir():
        raise PeftdsError(f"search dir not found: {path}")
    dirs = stage_dirs(path)
    if not dirs:
        raise PeftdsError(f"{path} holds no search stage (no */{STAGE_FILE}); is it a `peftds search` dir?")
    parts = ["# peftds search report", "", f"Search dir: `{path}`", ""]
    for d in earlier_stages(path) if path not in dirs else []:
        summary = stage_summary(d, n_boot)  # read only: the earlier search's own files stay as they are
        rel = Path(os.path.relpath(d, path))
        md = stage_markdown(d, summary).replace("## Stage", "## Earlier stage", 1)
        parts.append(f"{md}\n(from the earlier search `{d.parent}`, whose `space_next.yaml` this search starts from)\n")
        parts[-1] = (
            parts[-1]
            .replace(f"]({EDF_PLOT})", f"]({rel / EDF_PLOT})")
            .replace(f"]({SCORES_PLOT})", f"]({rel / SCORES_PLOT})")
        )
        echo(f"earlier stage {summary['stage']} ({d}): {verdict(summary)}")
    for d in dirs:
        summary, md = write_stage_report(d, n_boot)
        rel = d.relative_to(path) if d != path else Path(".")
        parts.append(
            md.replace(f"]({EDF_PLOT})", f"]({rel / EDF_PLOT})").replace(f"]({SCORES_PLOT})", f"]({rel / SCORES_PLOT})")
        )
        echo(f"stage {summary['stage']} ({d}):")
        echo(markdown_table(summary, summary.get("values")))
        echo(verdict(summary))
        echo("")
    if (path / BEST_DESIGN).exists() and path not in dirs:
        parts += ["## Final design", "", "```yaml", (path / BEST_DESIGN).read_text().rstrip(), "```", ""]
    out = path / REPORT_FILE
    write_text_atomic(out, "\n".join(parts))
    echo(f"report: {out}")
    return out


def cmd_report(argv: list[str]) -> int:
    """`peftds report <search dir or stage dir> [bootstrap=N]`."""
    dirs = [a for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = set(opts) - {"bootstrap"}
    if unknown or len(dirs) != 1:
        raise PeftdsError(USAGE + (f" (unknown option(s) {sorted(unknown)})" if unknown else ""))
    n_boot = None
    if "bootstrap" in opts:
        if not opts["bootstrap"].isdigit() or int(opts["bootstrap"]) < 1:
            raise PeftdsError(f"bootstrap must be a whole number >= 1, got {opts['bootstrap']!r}")
        n_boot = int(opts["bootstrap"])
    write_report(dirs[0], n_boot)
    return 0

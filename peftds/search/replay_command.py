"""The `peftds replay` command: its arguments, and the replay's files (replay.json, replay.md, replay.png)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftds.errors import PeftdsError
from peftds.files import REPLAY_JSON, REPLAY_MD, REPLAY_PLOT, save_figure, write_json_atomic, write_text_atomic
from peftds.plotting import legend_outside, series_style
from peftds.search.decision import DecisionSettings
from peftds.search.racing import METHODS, RaceSettings
from peftds.search.replay import TARGET_COMPUTE, TARGET_GOOD, load_stage, run_replay

USAGE = (
    "usage: peftds replay <stage dir> [replays=400] [seed=0] [redraw_share=0.5] [tolerance=0.5] [alpha=0.05] "
    "[delta=0.05] [round_size=2] [min_designs=3] [method=t|hoeffding|bernstein]"
)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def target_line(result: Mapping[str, Any]) -> str:
    t = result["target"]
    d = next(r for r in result["policies"] if r["family"] == "decision (default)")
    goal = f"good selection in >= {pct(t['good'])} of replays with <= {pct(t['compute'])} of the trial-epochs"
    verdict = "meets" if t["default_meets"] else "does NOT meet"
    line = (
        f"default {t['default']}: good selection {pct(d['good_selection_rate'])}, same winner "
        f"{pct(d['same_winner_rate'])}, mean regret {d['regret_mean']:.2f}, compute {pct(d['compute_fraction'])}: "
        f"{verdict} the target ({goal})"
    )
    return line + (f"; cheapest policy that does: {t['best']}" if t["best"] else "; no policy does")


def num(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}"


def markdown(result: Mapping[str, Any]) -> str:
    """replay.md: one row per policy."""
    lines = [
        f"# Replay of stage `{result['stage']}`",
        "",
        f"{len(result['options'])} options x N={result['n']} {'paired ' if result['paired'] else ''}designs x "
        f"{len(result['tasks'])} task(s) x {result['epochs']} epoch(s) = {result['full_protocol_trial_epochs']} "
        f"trial-epochs (full protocol); full-N winner: **{result['full_n_winner']}**, full-protocol verdict "
        f"(one look, δ*={result['tolerance']:g}, α={result['alpha']:g}): **{result['full_verdict']}**. "
        f"{result['replays']} replays: {result['orders']} random design orders and {result['redraws']} bootstrap "
        f"redraws (seed {result['seed']}){', as pairs' if result['paired'] else ''}.",
        "",
        "Option means: " + ", ".join(f"{o} {m:.2f}" for o, m in result["option_means"].items()),
        "",
        f"**{target_line(result)}**",
        "",
        "Good selection: the pick's full-N mean within δ* of the best full-N mean; regret: best full-N mean − "
        "the pick's; cross-fitted: decided on half the designs of a shuffled order, scored on the other half.",
        "",
        "| family | policy | good selection | regret mean | regret p90 | verdict agreement | same winner | "
        "compute | cross-fitted good / regret |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["policies"]:
        cf = r.get("cross_fitted")
        cross = f"{pct(cf['good_selection_rate'])} / {num(cf['regret_mean'])}" if cf else "–"
        lines.append(
            f"| {r['family']} | {r['policy']} | {pct(r['good_selection_rate'])} | {num(r['regret_mean'])} | "
            f"{num(r['regret_p90'])} | {pct(r['verdict_agreement'])} | {pct(r['same_winner_rate'])} | "
            f"{pct(r['compute_fraction'])} | {cross} |"
        )
    return "\n".join([*lines, "", *extra_lines(result), f"![good selection vs compute]({REPLAY_PLOT})", ""])


def pairing_line(result: Mapping[str, Any]) -> str:
    p = result["pairing"]
    head = f"variance of a difference vs {p['vs']} over {p['designs']} designs: unpaired {num(p['unpaired_mean'])}"
    if p["ratio_mean"] is None:
        return head + " (an unpaired stage: no paired variance)"
    return (
        f"{head}, paired {num(p['paired_mean'])} (ratio {p['ratio_mean']:.2f}: pairing needs that share of the "
        f"designs for the same interval width)"
    )


def synthetic_line(result: Mapping[str, Any]) -> str:
    s = result["synthetic"]
    if "skipped" in s:
        return f"N={s['n']} synthetic: skipped ({s['skipped']})"
    d, base = s["default"], s["one look at N"]
    return (
        f"N={s['n']} synthetic ({s['stages']} stages from the fitted means and covariance): default decision good "
        f"selection {pct(d['good_selection_rate'])}, same winner {pct(d['same_winner_rate'])}, compute "
        f"{pct(d['compute_fraction'])} (one look at N: good {pct(base['good_selection_rate'])}); the paper's "
        f"T5-base grouping stage ~{s['paper_gpu_hours']['grouping']} and stage=all ~{s['paper_gpu_hours']['all']} "
        f"H100-hours at that compute (full protocol ~600 and ~10k)"
    )


def extra_lines(result: Mapping[str, Any]) -> list[str]:
    return [f"Pairing: {pairing_line(result)}.", "", f"{synthetic_line(result)}.", ""]


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """replay.png: same-winner rate against compute, one marker and line per policy family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    families: dict[str, list[Mapping[str, Any]]] = {}
    for r in result["policies"]:
        families.setdefault(r["family"], []).append(r)
    # the default race last and largest: it is the row the target line is about, drawn on top
    for i, (fam, rs) in sorted(enumerate(families.items()), key=lambda x: "default" in x[1][0]):
        rs = sorted(rs, key=lambda r: r["compute_fraction"])
        xs, ys = [r["compute_fraction"] for r in rs], [r["good_selection_rate"] for r in rs]
        default = "default" in fam
        ax.plot(xs, ys, **series_style(i), ms=9 if default else 4, lw=1, label=fam, zorder=3 if default else 2)
    ax.axhline(TARGET_GOOD, color="grey", ls="--", lw=0.8)
    ax.axvline(TARGET_COMPUTE, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("compute (share of the full protocol's trial-epochs)")
    ax.set_ylabel("good selection (pick within δ* of the best full-N mean)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result['stage']}: good selection vs compute")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: list(families).index(labels[i]))
    legend_outside(ax, [handles[i] for i in order], [labels[i] for i in order], "policy family")
    return save_figure(plt, fig, path)


def write_replay(stage_dir: str | Path, result: Mapping[str, Any]) -> list[Path]:
    """replay.json, replay.md and replay.png in the stage dir."""
    stage_dir = Path(stage_dir)
    out = [
        write_json_atomic(stage_dir / REPLAY_JSON, result),
        write_text_atomic(stage_dir / REPLAY_MD, markdown(result)),
    ]
    tmp = stage_dir / f".{REPLAY_PLOT}.tmp.png"  # plotted aside, then moved: a kill leaves no half PNG
    plot(result, tmp)
    tmp.replace(stage_dir / REPLAY_PLOT)
    return [*out, stage_dir / REPLAY_PLOT]


INT_KEYS = {"replays": 1, "seed": 0, "round_size": 1, "min_designs": 2}
FLOAT_KEYS = {"delta": (0.0, 1.0), "redraw_share": (0.0, 1.0), "alpha": (0.0, 1.0), "tolerance": (0.0, math.inf)}


def parse_args(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """<stage dir> and key=value settings, checked (PeftdsError naming the culprit)."""
    dirs = [a for a in argv if "=" not in a]
    if len(dirs) != 1:
        raise PeftdsError(USAGE)
    opts: dict[str, Any] = {}
    for a in argv:
        if "=" not in a:
            continue
        key, value = a.split("=", 1)
        if key in INT_KEYS:
            try:
                opts[key] = int(value)
            except ValueError:
                raise PeftdsError(f"replay {key} must be an integer, got {value!r}") from None
            if opts[key] < INT_KEYS[key]:
                raise PeftdsError(f"replay {key} must be >= {INT_KEYS[key]}, got {value}")
        elif key in FLOAT_KEYS:
            try:
                opts[key] = float(value)
            except ValueError:
                raise PeftdsError(f"replay {key} must be a number, got {value!r}") from None
            lo, hi = FLOAT_KEYS[key]
            if not lo <= opts[key] <= hi or (key in ("delta", "alpha") and opts[key] in (lo, hi)):
                raise PeftdsError(f"replay {key} must be in ({lo:g}, {hi:g}), got {value}")
        elif key == "method":
            if value not in METHODS:
                raise PeftdsError(f"replay method must be one of {', '.join(METHODS)}, got {value!r}")
            opts[key] = value
        else:
            raise PeftdsError(f"unknown replay setting {key!r} ({USAGE})")
    return Path(dirs[0]), opts


def cmd_replay(argv: list[str]) -> int:
    """`peftds replay <stage dir> [key=value ...]`: writes replay.json/.md/.png into the stage dir."""
    stage_dir, opts = parse_args(argv)
    stage = load_stage(stage_dir)
    race_keys = {k: opts[k] for k in ("delta", "round_size", "min_designs", "method") if k in opts}
    default = RaceSettings(**race_keys)
    decision = DecisionSettings(tolerance=opts.get("tolerance", 0.5), alpha=opts.get("alpha", 0.05))
    result = run_replay(
        stage,
        default,
        replays=opts.get("replays", 400),
        seed=opts.get("seed", 0),
        redraw_share=opts.get("redraw_share", 0.5),
        round_sizes=[default.round_size] if "round_size" in opts else None,
        decision=decision,
    )
    paths = write_replay(stage_dir, result)
    print(target_line(result))
    print(pairing_line(result))
    print(synthetic_line(result))
    print(f"replay: {', '.join(str(p) for p in paths)}")
    return 0

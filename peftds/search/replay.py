"""`peftds replay <stage dir>`: how often cheaper stage policies pick the winner of a full-fidelity stage.

Input: a stage run with all N designs per option trained to the end, with per-epoch held-out scores
(trials.csv column `epoch_scores`). Every replay redraws the stage: half of the replays shuffle each
option's designs (a random sampling order), the other half redraw them with replacement (bootstrap) and
shuffle; the same designs then feed every policy:

- full: all N designs, final scores (the protocol itself; its agreement under redraws is the ceiling);
- fixed N: the first n designs of each option; low fidelity: the same decided on epoch-k scores;
- racing (peftds.search.racing) over a sweep of methods, delta and round sizes, and racing at epoch k;
- racing + low fidelity: the first rounds decided on epoch-k scores, then the survivors' designs are
  trained on (continued from epoch k, no retraining) and the race goes on at full fidelity.

A design scored at epoch k is its best held-out score over epochs 1..k (the `score` column is the best
over all epochs), i.e. what a trial stopped after epoch k would report. Compute is counted in
trial-epochs: a design costs tasks x epochs trained; the full protocol is options x N x tasks x epochs.
The reference winner is the full-N winner of the stage: the option with the highest mean design score.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from peftds.errors import PeftdsError
from peftds.files import (
    RACE_FILE,
    REPLAY_JSON,
    REPLAY_MD,
    REPLAY_PLOT,
    STAGE_FILE,
    TRIALS_FILE,
    read_json,
    save_figure,
    write_json_atomic,
    write_text_atomic,
)
from peftds.search.racing import METHODS, RaceSettings, race_batch
from peftds.search.stats import design_scores, read_table

EPOCH_SCORES = "epoch_scores"  # trials.csv column: JSON list of the held-out score after each epoch
TARGET_AGREEMENT = 0.90  # "racing picks the full-N winner in >= 90% of replays ..."
TARGET_COMPUTE = 0.25  # "... using <= 25% of the full protocol's trial-epochs"
FIXED_NS = (2, 3, 4, 6, 8, 12, 16, 25, 50)
SWEEP_DELTAS = (0.01, 0.05, 0.1, 0.2)
USAGE = (
    "usage: peftds replay <stage dir> [replays=400] [seed=0] [redraw_share=0.5] [delta=0.05] [round_size=2] "
    "[min_designs=3] [method=t|hoeffding|bernstein]"
)


@dataclass
class StageScores:
    """A stage's design scores per fidelity: scores[epoch][i] is option i's designs in index order (NaN:
    a design with a task that did not end ok); epoch `epochs` is full fidelity."""

    name: str
    options: list[str]
    tasks: list[str]
    epochs: int
    n: int  # designs per option a replay draws (the smallest option's count)
    scores: dict[int, list[np.ndarray]]

    def winner(self) -> int:
        """The full-N winner: the highest mean over scored designs (ties: the first option)."""
        means = [float(np.nanmean(x)) if np.isfinite(x).any() else -math.inf for x in self.scores[self.epochs]]
        return int(np.argmax(means))

    def means(self) -> dict[str, float]:
        return {o: float(np.nanmean(x)) for o, x in zip(self.options, self.scores[self.epochs])}


def epoch_score(cell: Any, k: int, where: str) -> float:
    """Best of the first k per-epoch scores in an `epoch_scores` cell."""
    try:
        xs = [float(v) for v in json.loads(cell)]
    except (TypeError, ValueError):
        raise PeftdsError(f"{where}: epoch_scores is not a JSON list of numbers: {cell!r}") from None
    if not xs:
        raise PeftdsError(f"{where}: epoch_scores is empty")
    return max(xs[:k])


def check_complete(stage_dir: Path, meta: Mapping[str, Any], df: Any, tasks: list[str]) -> None:
    """A replay redraws every option's N designs: a raced stage (fewer designs for the options it
    eliminated) or an unfinished one would silently shrink N, so it is refused in one line."""
    if (stage_dir / RACE_FILE).exists():
        raise PeftdsError(
            f"{stage_dir} was raced ({RACE_FILE}): its options do not all have N designs; replay needs a stage "
            "run with search.racing=false (resume it so, and every option gets its N designs)"
        )
    every = design_scores(df, tasks)
    finished = every[every["tasks_ok"] + every["tasks_failed"] >= len(tasks)].groupby("option").size()
    planned = {str(o): int(n) for o, n in (meta.get("planned") or {}).items()}
    wanted = {str(o): planned.get(str(o), int(meta.get("n") or 0)) for o in meta["options_order"]}
    wanted = {o: n for o, n in wanted.items() if o not in (meta.get("infeasible") or {})}
    short = [f"{o} {int(finished.get(o, 0))}/{n}" for o, n in wanted.items() if finished.get(o, 0) < n]
    if short:
        raise PeftdsError(
            f"{stage_dir} is not finished ({', '.join(short)} designs done); replay needs every option's designs "
            "trained: finish the stage first"
        )


def load_stage(stage_dir: str | Path) -> StageScores:
    """Read a stage dir's trials.csv and stage.json into per-fidelity design scores."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        raise PeftdsError(f"stage dir not found: {stage_dir}")
    meta = read_json(stage_dir / STAGE_FILE)
    if meta is None:
        raise PeftdsError(f"{stage_dir} is not a search stage dir (no readable {STAGE_FILE})")
    missing = [k for k in ("options_order", "tasks", "epochs") if k not in meta]
    if missing:
        raise PeftdsError(f"{stage_dir / STAGE_FILE} lacks key(s) {', '.join(missing)}")
    df = read_table(stage_dir / TRIALS_FILE)
    if df.empty:
        raise PeftdsError(f"{stage_dir / TRIALS_FILE} holds no trials")
    if EPOCH_SCORES not in df:
        raise PeftdsError(f"{stage_dir / TRIALS_FILE} has no {EPOCH_SCORES} column (per-epoch scores are needed)")
    if meta.get("samples"):  # only the designs this stage sampled, as stats.stage_summary does
        planned = {(o, int(s["index"])) for o, lst in meta["samples"].items() for s in lst}
        df = df[[(o, int(i)) in planned for o, i in zip(df["option"], df["index"])]]
    tasks, epochs = [str(t) for t in meta["tasks"]], int(meta["epochs"])
    ok = df["status"] == "ok"
    per_epoch = {}
    for k in range(1, epochs):
        dk = df.copy()
        dk.loc[ok, "score"] = [
            epoch_score(c, k, f"{TRIALS_FILE} row {o}/{i}/{t}")
            for c, o, i, t in zip(
                df.loc[ok, EPOCH_SCORES], df.loc[ok, "option"], df.loc[ok, "index"], df.loc[ok, "task"]
            )
        ]
        per_epoch[k] = dk
    per_epoch[epochs] = df
    check_complete(stage_dir, meta, df, tasks)
    options = [str(o) for o in meta["options_order"] if (df["option"] == str(o)).any()]
    if len(options) < 2:
        raise PeftdsError(f"{stage_dir} has trials of {len(options)} option(s); a replay needs at least two")
    scores: dict[int, list[np.ndarray]] = {}
    for k, dk in per_epoch.items():
        scores[k] = []
        every = design_scores(dk, tasks)
        for o in options:
            d = every[every["option"] == o].sort_values("index", kind="stable")
            scores[k].append(np.where(d["complete"].to_numpy(bool), d["score"].to_numpy(float), np.nan))
    n = min(len(x) for x in scores[epochs])
    return StageScores(str(meta.get("name") or stage_dir.name), options, tasks, epochs, n, scores)


@dataclass(frozen=True)
class Policy:
    """A way to decide a stage: fixed n designs, or a race; decided on epoch `fidelity` scores (early:
    the epoch whose scores decide the first `early_rounds` rounds of a race)."""

    family: str
    label: str
    n: int | None = None
    race: RaceSettings | None = None
    fidelity: int | None = None
    early: int | None = None
    early_rounds: int = 0


def draws(stage: StageScores, replays: int, redraw_share: float, seed: int) -> tuple[np.ndarray, int]:
    """(B, K, n) indices into each option's designs: first the shuffles, then the bootstrap redraws;
    returns (indices, number of shuffles)."""
    rng = np.random.default_rng(seed)
    n_boot = round(replays * redraw_share)
    n_perm = replays - n_boot
    sizes = [len(x) for x in stage.scores[stage.epochs]]
    idx = np.empty((replays, len(sizes), stage.n), dtype=int)
    for j, m in enumerate(sizes):
        idx[:n_perm, j] = rng.permuted(np.tile(np.arange(m), (n_perm, 1)), axis=1)[:, : stage.n]
        idx[n_perm:, j] = rng.integers(0, m, size=(n_boot, stage.n))
    return idx, n_perm


def evaluate(policy: Policy, arrays: Mapping[int, np.ndarray], epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """(winner index, trial-epochs per task) of every replay under a policy."""
    if policy.race is None:
        x = arrays[policy.fidelity or epochs][..., : policy.n]
        with np.errstate(invalid="ignore"):
            ranked = np.where(np.isfinite(x).any(-1), np.nanmean(np.where(np.isfinite(x), x, np.nan), -1), -np.inf)
        winner = np.argmax(ranked, axis=-1)
        cost = np.full(len(x), x.shape[1] * x.shape[2] * (policy.fidelity or epochs), dtype=float)
        return winner, cost
    fid = policy.fidelity or epochs
    if policy.early_rounds:
        out = race_batch(arrays[epochs], policy.race, arrays[policy.early], policy.early_rounds)
        k = policy.early
        per = np.where(
            out["promoted"],
            out["designs"] * epochs,
            out["early_designs"] * k + (out["designs"] - out["early_designs"]) * epochs,
        )
        return out["winner"], per.sum(-1).astype(float)
    out = race_batch(arrays[fid], policy.race)
    return out["winner"], (out["designs"] * fid).sum(-1).astype(float)


def sweep(stage: StageScores, default: RaceSettings, round_sizes: list[int] | None = None) -> list[Policy]:
    """The policies a replay compares (the default racing setting first among the races)."""
    n, e = stage.n, stage.epochs
    ns = [m for m in FIXED_NS if m < n]
    out = [Policy("full", f"full N={n}", n=n)]
    out += [Policy("fixed N", f"N={m}", n=m) for m in ns]
    for k in range(1, e):
        out += [Policy(f"epoch {k}", f"N={m} epoch {k}", n=m, fidelity=k) for m in [*ns, n]]
    out.append(Policy("racing (default)", f"racing {default.label()}", race=default))
    sizes = round_sizes or sorted({1, 2, max(1, n // 20), max(1, n // 10)})
    for method in METHODS:
        for delta in SWEEP_DELTAS:
            for r in sizes:
                s = replace(default, method=method, delta=delta, round_size=r)
                if s != default and s.first <= n:
                    out.append(Policy(f"racing {method}", f"racing {s.label()}", race=s))
    switch = sorted({m for m in (n // 4, n // 2, n) if m >= default.first})
    for k in range(1, e):
        s = replace(default, fidelity=k)
        out.append(Policy("racing at epoch k", f"racing {s.label()}", race=s, fidelity=k))
        for m in switch:  # epoch-k decisions until the survivors have m designs, then full fidelity
            rounds = sum(default.designs_in_round(r, n) <= m for r in range(default.max_rounds(n)))
            until = "then survivors at full fidelity" if m == n else f"up to {m} designs, then full"
            out.append(
                Policy(
                    "racing + early epoch k", f"racing {s.label()} {until}", race=default, early=k, early_rounds=rounds
                )
            )
    return out


def run_replay(
    stage: StageScores, default: RaceSettings, replays: int = 400, seed: int = 0, redraw_share: float = 0.5,
    round_sizes: list[int] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Simulate every policy of `sweep` on the same replays; returns the replay.json content."""
    idx, n_perm = draws(stage, replays, redraw_share, seed)
    arrays = {
        k: np.stack([np.asarray(x)[idx[:, j]] for j, x in enumerate(xs)], axis=1) for k, xs in stage.scores.items()
    }
    full_cost = len(stage.options) * stage.n * stage.epochs
    ref = stage.winner()
    rows = []
    for p in sweep(stage, default, round_sizes):
        winner, cost = evaluate(p, arrays, stage.epochs)
        same = winner == ref
        rows.append(
            {
                "family": p.family,
                "policy": p.label,
                "n": p.n,
                "fidelity": p.fidelity or stage.epochs,
                "early": p.early,
                "early_rounds": p.early_rounds,
                "race": None if p.race is None else vars(p.race).copy(),
                "same_winner_rate": float(same.mean()),
                "same_winner_rate_orders": float(same[:n_perm].mean()) if n_perm else None,
                "same_winner_rate_redraws": float(same[n_perm:].mean()) if n_perm < len(same) else None,
                "compute_fraction": float(cost.mean() / full_cost),
                "compute_fraction_max": float(cost.max() / full_cost),
            }
        )
    return {
        "stage": stage.name,
        "options": stage.options,
        "tasks": stage.tasks,
        "n": stage.n,
        "epochs": stage.epochs,
        "full_n_winner": stage.options[ref],
        "option_means": stage.means(),
        "replays": replays,
        "orders": n_perm,
        "redraws": replays - n_perm,
        "seed": seed,
        "full_protocol_trial_epochs": full_cost * len(stage.tasks),
        "policies": rows,
        "target": best_default(rows),
    }


def best_default(
    rows: list[Mapping[str, Any]], agreement: float = TARGET_AGREEMENT, compute: float = TARGET_COMPUTE
) -> dict[str, Any]:
    """Whether the default race meets the target, and the cheapest racing setting that does."""
    races = [r for r in rows if r["race"] is not None]
    default = next((r for r in races if r["family"] == "racing (default)"), None)
    meets = [r for r in races if r["same_winner_rate"] >= agreement and r["compute_fraction"] <= compute]
    best = min(meets, key=lambda r: (r["compute_fraction"], -r["same_winner_rate"]), default=None)
    return {
        "agreement": agreement,
        "compute": compute,
        "default": default["policy"] if default else None,
        "default_meets": bool(default and default in meets),
        "best": best["policy"] if best else None,
        "meeting": [r["policy"] for r in meets],
    }


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def target_line(result: Mapping[str, Any]) -> str:
    t = result["target"]
    d = next(r for r in result["policies"] if r["family"] == "racing (default)")
    goal = f"same winner in >= {pct(t['agreement'])} of replays with <= {pct(t['compute'])} of the trial-epochs"
    verdict = "meets" if t["default_meets"] else "does NOT meet"
    line = (
        f"default {t['default']}: same winner {pct(d['same_winner_rate'])}, compute {pct(d['compute_fraction'])}: "
        f"{verdict} the target ({goal})"
    )
    return line + (f"; cheapest setting that does: {t['best']}" if t["best"] else "; no racing setting does")


def markdown(result: Mapping[str, Any]) -> str:
    """replay.md: one row per policy."""
    lines = [
        f"# Replay of stage `{result['stage']}`",
        "",
        f"{len(result['options'])} options x N={result['n']} designs x {len(result['tasks'])} task(s) x "
        f"{result['epochs']} epoch(s) = {result['full_protocol_trial_epochs']} trial-epochs (full protocol); "
        f"full-N winner: **{result['full_n_winner']}**. {result['replays']} replays: {result['orders']} random "
        f"design orders and {result['redraws']} bootstrap redraws (seed {result['seed']}).",
        "",
        "Option means: " + ", ".join(f"{o} {m:.2f}" for o, m in result["option_means"].items()),
        "",
        f"**{target_line(result)}**",
        "",
        "| family | policy | same winner | orders | redraws | compute | compute max |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["policies"]:
        lines.append(
            f"| {r['family']} | {r['policy']} | {pct(r['same_winner_rate'])} | {pct(r['same_winner_rate_orders'])} | "
            f"{pct(r['same_winner_rate_redraws'])} | {pct(r['compute_fraction'])} | {pct(r['compute_fraction_max'])} |"
        )
    return "\n".join([*lines, "", f"![agreement vs compute]({REPLAY_PLOT})", ""])


def plot(result: Mapping[str, Any], path: Path) -> Path:
    """replay.png: same-winner rate against compute, one marker and line per policy family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    families: dict[str, list[Mapping[str, Any]]] = {}
    for r in result["policies"]:
        families.setdefault(r["family"], []).append(r)
    markers = "os^vD<>Px*h"
    for i, (fam, rs) in enumerate(families.items()):
        rs = sorted(rs, key=lambda r: r["compute_fraction"])
        xs, ys = [r["compute_fraction"] for r in rs], [r["same_winner_rate"] for r in rs]
        ax.plot(xs, ys, marker=markers[i % len(markers)], ms=6 if "default" in fam else 4, lw=1, label=fam)
    ax.axhline(TARGET_AGREEMENT, color="grey", ls="--", lw=0.8)
    ax.axvline(TARGET_COMPUTE, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("compute (share of the full protocol's trial-epochs)")
    ax.set_ylabel("share of replays picking the full-N winner")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{result['stage']}: agreement vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
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
FLOAT_KEYS = {"delta": (0.0, 1.0), "redraw_share": (0.0, 1.0)}


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
            if not lo <= opts[key] <= hi or (key == "delta" and opts[key] in (lo, hi)):
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
    result = run_replay(
        stage,
        default,
        replays=opts.get("replays", 400),
        seed=opts.get("seed", 0),
        redraw_share=opts.get("redraw_share", 0.5),
        round_sizes=[default.round_size] if "round_size" in opts else None,
    )
    paths = write_replay(stage_dir, result)
    print(target_line(result))
    print(f"replay: {', '.join(str(p) for p in paths)}")
    return 0

"""Replays of a full-fidelity stage: how well cheaper stage policies select (the command: replay_command).

Input: a stage run with all N designs per option trained to the end, with per-epoch held-out scores
(trials.csv column `epoch_scores`). Every replay redraws the stage: half of the replays shuffle each
option's designs (a random sampling order), the other half redraw them with replacement (bootstrap) and
shuffle; a paired stage (stage.json `paired`) is shuffled and redrawn as pairs (one draw of design indices
for every option). The same designs then feed every policy:

- full: all N designs, final scores (the protocol itself; its rates under redraws are the baseline);
- decision (default): the sequential stage decision (peftds.search.decision) with the given δ*, α; a sweep
  of its α and look schedule; the decision taken on epoch-k scores; and multi-fidelity: every design of a
  look trained to epoch k, a random share of them continued to full fidelity, control-variate estimates;
- fixed N: the first n designs of each option; low fidelity: the same decided on epoch-k scores;
- racing (peftds.search.racing) over a sweep of methods, delta and round sizes, and racing at epoch k;
- racing + low fidelity: the first rounds decided on epoch-k scores, then the survivors' designs are
  trained on (continued from epoch k, no retraining) and the race goes on at full fidelity.

A design scored at epoch k is its best held-out score over epochs 1..k (the `score` column is the best
over all epochs), i.e. what a trial stopped after epoch k would report. Compute is counted in
trial-epochs: a design costs tasks x epochs trained; the full protocol is options x N x tasks x epochs.
The reference is the stage itself: the full-N winner (highest mean design score) and each option's full-N
mean. Per policy: same_winner_rate; good_selection_rate (the pick's full-N mean within δ* of the best
full-N mean); mean and 90th-percentile regret (best full-N mean − the pick's); verdict_agreement (the
policy's verdict equals the full protocol's one-look verdict; decision policies only); compute_fraction.
Cross-fitted (because the full-N winner is itself noisy): each shuffled replay splits the designs in two
halves, the policy decides on one and is scored on the other half's means.
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
    STAGE_FILE,
    TRIALS_FILE,
    read_json,
)
from peftds.search.decision import VERDICTS, DecisionSettings, decide_batch
from peftds.search.racing import METHODS, RaceSettings, race_batch
from peftds.search.stats import design_scores, read_table

EPOCH_SCORES = "epoch_scores"  # trials.csv column: JSON list of the held-out score after each epoch
TARGET_GOOD = 0.95  # "the default policy selects well (within δ*) in >= 95% of replays ..."
TARGET_COMPUTE = 0.25  # "... using <= 25% of the full protocol's trial-epochs"
SYNTHETIC_N = 100  # the paper's N: synthetic stages drawn from a real stage's fitted means and covariance
SYNTHETIC_STAGES = 2000
# the paper's T5-base search on H100s at the full protocol (search.mk: ~1.2 GPU-h a design, N=100)
PAPER_GPU_HOURS = {"grouping": 600.0, "all": 10000.0}
SWEEP_ALPHAS = (0.05, 0.1, 0.2)
SWEEP_GROWTH = (1.25, 1.5, 2.0)
SWEEP_FIRST = (3, 5)
SWEEP_SHARES = (0.25, 0.5)
FIXED_NS = (2, 3, 4, 6, 8, 12, 16, 25, 50)
SWEEP_DELTAS = (0.01, 0.05, 0.1, 0.2)


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
    paired: bool = False  # design i of every option is a pair (scores are aligned by design index)

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
    paired = bool(meta.get("paired"))
    if paired:  # aligned by design index: every option's first n designs are indices 0..n-1
        every = design_scores(df, tasks)
        common = set.intersection(*(set(every[every["option"] == o]["index"].astype(int)) for o in options))
        n = min(n, next((i for i in range(n + 1) if i not in common), n))
    name = str(meta.get("name") or stage_dir.name)
    return StageScores(name, options, tasks, epochs, n, scores, paired)


@dataclass(frozen=True)
class Policy:
    """A way to decide a stage: fixed n designs, or a race; decided on epoch `fidelity` scores (early:
    the epoch whose scores decide the first `early_rounds` rounds of a race)."""

    family: str
    label: str
    n: int | None = None
    race: RaceSettings | None = None
    decision: DecisionSettings | None = None
    fidelity: int | None = None
    early: int | None = None
    early_rounds: int = 0
    share: float | None = None  # multi-fidelity decision: share of each look's designs continued to full fidelity


def draws(stage: StageScores, replays: int, redraw_share: float, seed: int) -> tuple[np.ndarray, int]:
    """(B, K, n) indices into each option's designs: first the shuffles, then the bootstrap redraws;
    returns (indices, number of shuffles)."""
    rng = np.random.default_rng(seed)
    n_boot = round(replays * redraw_share)
    n_perm = replays - n_boot
    sizes = [len(x) for x in stage.scores[stage.epochs]]
    idx = np.empty((replays, len(sizes), stage.n), dtype=int)
    if stage.paired:  # one draw of design indices for every option: pairs stay pairs
        idx[:n_perm] = rng.permuted(np.tile(np.arange(stage.n), (n_perm, 1)), axis=1)[:, None, :]
        idx[n_perm:] = rng.integers(0, stage.n, size=(n_boot, 1, stage.n))
        return idx, n_perm
    for j, m in enumerate(sizes):
        idx[:n_perm, j] = rng.permuted(np.tile(np.arange(m), (n_perm, 1)), axis=1)[:, : stage.n]
        idx[n_perm:, j] = rng.integers(0, m, size=(n_boot, stage.n))
    return idx, n_perm


def evaluate(policy: Policy, arrays: Mapping[int, np.ndarray], epochs: int) -> tuple[Any, Any, Any]:
    """(pick, trial-epochs per task, verdict index or -1) of every replay under a policy."""
    fid = policy.fidelity or epochs
    if policy.decision is not None and policy.share is not None:
        # every design of a look trained to epoch k, a random share of them continued to the last epoch
        # (design order is random: the first ones are a random subset) and control-variate estimates
        out = decide_batch(arrays[epochs], policy.decision, cheap=arrays[policy.early], share=policy.share)
        cost = out["designs"] * policy.early + out["full"] * (epochs - policy.early)
        return out["pick"], cost.sum(-1).astype(float), out["verdict"]
    if policy.decision is not None:
        x = arrays[fid][..., : policy.n] if policy.n else arrays[fid]
        out = decide_batch(x, policy.decision)
        return out["pick"], (out["designs"] * fid).sum(-1).astype(float), out["verdict"]
    none = np.full(len(arrays[epochs]), -1)
    if policy.race is None:
        x = arrays[fid][..., : policy.n]
        with np.errstate(invalid="ignore"):
            ranked = np.where(np.isfinite(x).any(-1), np.nanmean(np.where(np.isfinite(x), x, np.nan), -1), -np.inf)
        winner = np.argmax(ranked, axis=-1)
        cost = np.full(len(x), x.shape[1] * x.shape[2] * fid, dtype=float)
        return winner, cost, none
    if policy.early_rounds:
        out = race_batch(arrays[epochs], policy.race, arrays[policy.early], policy.early_rounds)
        k = policy.early
        per = np.where(
            out["promoted"],
            out["designs"] * epochs,
            out["early_designs"] * k + (out["designs"] - out["early_designs"]) * epochs,
        )
        return out["winner"], per.sum(-1).astype(float), none
    out = race_batch(arrays[fid], policy.race)
    return out["winner"], (out["designs"] * fid).sum(-1).astype(float), none


def sweep(
    stage: StageScores,
    default: RaceSettings,
    round_sizes: list[int] | None = None,
    decision: DecisionSettings | None = None,
) -> list[Policy]:
    """The policies a replay compares: the full protocol first, the default decision second."""
    n, e = stage.n, stage.epochs
    ns = [m for m in FIXED_NS if m < n]
    dec = decision or DecisionSettings()
    one = replace(dec, sequential=False)
    out = [Policy("full", f"full N={n}", n=n, decision=one)]
    out.append(Policy("decision (default)", f"decision {dec.label()}", n=n, decision=dec))
    for a in SWEEP_ALPHAS:
        for g in SWEEP_GROWTH:
            for f in SWEEP_FIRST:
                s = replace(dec, alpha=a, growth=g, first=f, sequential=True)
                if s != dec and f < n:
                    out.append(Policy("decision", f"decision {s.label()}", n=n, decision=s))
    for k in range(1, e):
        out.append(Policy("decision at epoch k", f"decision {dec.label()} epoch {k}", n=n, decision=dec, fidelity=k))
        for share in SWEEP_SHARES:
            out.append(
                Policy(
                    "decision, epoch k + control variate",
                    f"decision {dec.label()} epoch {k}, {share:.0%} continued",
                    n=n,
                    decision=dec,
                    early=k,
                    share=share,
                )
            )
    out += [Policy("fixed N", f"N={m}", n=m, decision=one) for m in ns]
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


def selection(pick: np.ndarray, means: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(good, regret) of picks against option means ((K,) for every replay, or (B, K) one row each)."""
    means = np.broadcast_to(means, (len(pick), means.shape[-1]))
    best = np.nanmax(means, axis=-1)
    chosen = np.take_along_axis(means, np.maximum(pick, 0)[:, None], -1)[:, 0]
    regret = np.where(pick >= 0, best - chosen, np.inf)
    return regret <= tolerance + 1e-9, regret


def run_replay(
    stage: StageScores, default: RaceSettings, replays: int = 400, seed: int = 0, redraw_share: float = 0.5,
    round_sizes: list[int] | None = None, decision: DecisionSettings | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Simulate every policy of `sweep` on the same replays; returns the replay.json content."""
    dec = decision or DecisionSettings()
    idx, n_perm = draws(stage, replays, redraw_share, seed)
    arrays = {
        k: np.stack([np.asarray(x)[idx[:, j]] for j, x in enumerate(xs)], axis=1) for k, xs in stage.scores.items()
    }
    full_cost = len(stage.options) * stage.n * stage.epochs
    ref = stage.winner()
    means = np.array([stage.means()[o] for o in stage.options])
    actual = np.stack([np.asarray(x)[: stage.n] for x in stage.scores[stage.epochs]])[None]
    ref_verdict = int(decide_batch(actual, replace(dec, sequential=False))["verdict"][0])
    half = stage.n // 2
    held_means = np.nanmean(arrays[stage.epochs][:n_perm, :, half:], axis=-1) if n_perm and half >= 2 else None
    rows = []
    for p in sweep(stage, default, round_sizes, dec):
        pick, cost, verdict = evaluate(p, arrays, stage.epochs)
        same = pick == ref
        good, regret = selection(pick, means, dec.tolerance)
        row = {
            "family": p.family,
            "policy": p.label,
            "n": p.n,
            "fidelity": p.fidelity or stage.epochs,
            "early": p.early,
            "early_rounds": p.early_rounds,
            "race": None if p.race is None else vars(p.race).copy(),
            "decision": None if p.decision is None else vars(p.decision).copy(),
            "good_selection_rate": float(good.mean()),
            "regret_mean": float(regret.mean()),
            "regret_p90": float(np.quantile(regret, 0.9)),
            "verdict_agreement": float((verdict == ref_verdict).mean()) if p.decision is not None else None,
            "verdicts": {v: float((verdict == i).mean()) for i, v in enumerate(VERDICTS)} if p.decision else None,
            "same_winner_rate": float(same.mean()),
            "same_winner_rate_orders": float(same[:n_perm].mean()) if n_perm else None,
            "same_winner_rate_redraws": float(same[n_perm:].mean()) if n_perm < len(same) else None,
            "compute_fraction": float(cost.mean() / full_cost),
            "compute_fraction_max": float(cost.max() / full_cost),
            "cross_fitted": None,
        }
        if held_means is not None and p.race is None and (p.n or stage.n) >= 2:
            # decide on the first half of each shuffled order, score on the other half's means
            first = {k: a[:n_perm, :, :half] for k, a in arrays.items()}
            cp, _, _ = evaluate(replace(p, n=min(p.n or stage.n, half)), first, stage.epochs)
            cgood, cregret = selection(cp, held_means, dec.tolerance)
            row["cross_fitted"] = {
                "good_selection_rate": float(cgood.mean()),
                "regret_mean": float(cregret.mean()),
                "regret_p90": float(np.quantile(cregret, 0.9)),
                "designs_decided_on": min(p.n or stage.n, half),
            }
        rows.append(row)
    return {
        "stage": stage.name,
        "options": stage.options,
        "tasks": stage.tasks,
        "n": stage.n,
        "epochs": stage.epochs,
        "paired": stage.paired,
        "tolerance": dec.tolerance,
        "alpha": dec.alpha,
        "full_n_winner": stage.options[ref],
        "full_verdict": VERDICTS[ref_verdict],
        "option_means": stage.means(),
        "replays": replays,
        "orders": n_perm,
        "redraws": replays - n_perm,
        "seed": seed,
        "full_protocol_trial_epochs": full_cost * len(stage.tasks),
        "policies": rows,
        "target": best_default(rows),
        "pairing": pairing(stage),
        "synthetic": synthetic(stage, dec, seed=seed),
    }


def best_default(
    rows: list[Mapping[str, Any]], good: float = TARGET_GOOD, compute: float = TARGET_COMPUTE
) -> dict[str, Any]:
    """Whether the default decision meets the target (good selection >= `good` at compute <= `compute`),
    and the cheapest policy that does (any family but the full protocol)."""
    default = next((r for r in rows if r["family"] == "decision (default)"), None)
    cheaper = [r for r in rows if r["family"] != "full"]
    meets = [r for r in cheaper if r["good_selection_rate"] >= good and r["compute_fraction"] <= compute]
    best = min(meets, key=lambda r: (r["compute_fraction"], -r["good_selection_rate"]), default=None)
    return {
        "good": good,
        "compute": compute,
        "default": default["policy"] if default else None,
        "default_meets": bool(default and default in meets),
        "best": best["policy"] if best else None,
        "meeting": [r["policy"] for r in meets],
    }


def complete_pairs(stage: StageScores) -> np.ndarray:
    """(K, M) full-fidelity scores of the design indices every option completed (a paired stage), or of
    each option's first M complete designs side by side (an unpaired one: columns are not pairs)."""
    xs = [np.asarray(x[: stage.n], dtype=float) for x in stage.scores[stage.epochs]]
    if stage.paired:
        x = np.stack(xs)
        return x[:, np.isfinite(x).all(0)]
    ok = [x[np.isfinite(x)] for x in xs]
    m = min(len(x) for x in ok)
    return np.stack([x[:m] for x in ok])


def pairing(stage: StageScores) -> dict[str, Any]:
    """Variance of a difference of two options' design scores: paired (design by design) and unpaired
    (var a + var b, what independent draws give), for each option against the full-N winner; their ratio
    is the share of designs pairing needs for the same interval width."""
    x = complete_pairs(stage)
    ref = stage.winner()
    out: dict[str, Any] = {"designs": int(x.shape[1]), "paired_stage": stage.paired, "vs": stage.options[ref]}
    per = {}
    for j, o in enumerate(stage.options):
        if j == ref or x.shape[1] < 2:
            continue
        unpaired = float(x[ref].var(ddof=1) + x[j].var(ddof=1))
        paired = float((x[ref] - x[j]).var(ddof=1)) if stage.paired else None
        per[o] = {"paired": paired, "unpaired": unpaired, "ratio": None if paired is None else paired / unpaired}
    out["options"] = per
    ratios = [v["ratio"] for v in per.values() if v["ratio"] is not None]
    out["unpaired_mean"] = float(np.mean([v["unpaired"] for v in per.values()])) if per else None
    out["paired_mean"] = float(np.mean([v["paired"] for v in per.values()])) if ratios else None
    out["ratio_mean"] = float(np.mean(ratios)) if ratios else None
    return out


def synthetic(
    stage: StageScores, dec: DecisionSettings, n: int = SYNTHETIC_N, stages: int = SYNTHETIC_STAGES, seed: int = 0
) -> dict[str, Any]:
    """The default decision on synthetic stages of N=`n` designs per option drawn from this stage's fitted
    option means and covariance of design scores (paired: the full covariance of pairs; unpaired:
    diagonal): good selection against the fitted means, same winner, compute; and the one-look protocol
    at N=`n` as the baseline."""
    x = complete_pairs(stage)
    if x.shape[1] < 3:
        return {"n": n, "stages": stages, "skipped": f"{x.shape[1]} complete design(s): too few to fit"}
    mu = x.mean(1)
    cov = np.cov(x) if stage.paired else np.diag(x.var(1, ddof=1))
    rng = np.random.default_rng(seed)
    draws_ = rng.multivariate_normal(mu, cov, size=(stages, n)).transpose(0, 2, 1)
    out: dict[str, Any] = {"n": n, "stages": stages, "fitted_means": dict(zip(stage.options, mu.round(4).tolist()))}
    for name, settings in (("default", dec), ("one look at N", replace(dec, sequential=False))):
        res = decide_batch(draws_, settings)
        good, regret = selection(res["pick"], mu, dec.tolerance)
        out[name] = {
            "good_selection_rate": float(good.mean()),
            "same_winner_rate": float((res["pick"] == int(np.argmax(mu))).mean()),
            "regret_mean": float(regret.mean()),
            "compute_fraction": float(res["designs"].sum(-1).mean() / (len(mu) * n)),
            "verdicts": {v: float((res["verdict"] == i).mean()) for i, v in enumerate(VERDICTS)},
        }
    frac = out["default"]["compute_fraction"]
    out["paper_gpu_hours"] = {k: round(v * frac) for k, v in PAPER_GPU_HOURS.items()}
    return out

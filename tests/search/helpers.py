"""Shared helpers of the search tests: reading trials.csv, a hand-made trials table."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def quiet(*a) -> None:
    pass


def table(rows):
    """rows: (option, index, task, score or None for a failed trial)."""
    out = []
    for opt, idx, task, score in rows:
        out.append(
            {
                "stage": "st",
                "option": opt,
                "index": idx,
                "task": task,
                "design_hash": f"{opt}{idx}",
                "design": f"design {opt}{idx}",
                "score": float("nan") if score is None else score,
                "status": "failed" if score is None else "ok",
                "wall_time_s": 36.0,
                "device": "cpu",
                "error": "boom" if score is None else "",
            }
        )
    return pd.DataFrame(out)


HAND = table([
    # option a: designs 0..3, two tasks; design scores 70, 80, 90, 60 -> mean 75
    ("a", 0, "t1", 60), ("a", 0, "t2", 80),
    ("a", 1, "t1", 80), ("a", 1, "t2", 80),
    ("a", 2, "t1", 100), ("a", 2, "t2", 80),
    ("a", 3, "t1", 50), ("a", 3, "t2", 70),
    # option b: design 2 has a failed task -> incomplete, left out; designs 50, 60, 58 -> mean 56
    ("b", 0, "t1", 40), ("b", 0, "t2", 60),
    ("b", 1, "t1", 60), ("b", 1, "t2", 60),
    ("b", 2, "t1", 99), ("b", 2, "t2", None),
    ("b", 3, "t1", 56), ("b", 3, "t2", 60),
])  # fmt: skip

S4 = [["adapter", "lora"], ["adapter", "prefix"], ["adapter", "prefix", "bitfit"], ["prefix", "bitfit", "lora"]]


def fake_score(design) -> float:
    """Deterministic scores with a known stage-by-stage optimum: spindle > uniform allocation > all
    groups tuned > the S4 strategy of G1 > G2 > G3 > G4 (each bonus beats all later ones combined)."""
    from peftds.design.grouping import satisfies

    sizes = tuple(design["grouping"]["sizes"])
    score = 64.0 * satisfies(sizes, "spindle") + 32.0 * (design["allocation"] == "uniform")
    score += 16.0 * (list(design["tuned"]) == [1, 2, 3, 4])
    score += sum(w for w, got, want in zip((8, 4, 2, 1), design["strategies"], S4) if list(got) == want)
    return score

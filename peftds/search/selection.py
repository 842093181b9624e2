"""The outcome of a stage: the refined space (input space + the winning option) and summary.json."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from peftds.design.space import Space
from peftds.files import SPACE_NEXT, SUMMARY_FILE, write_text_atomic
from peftds.search.stages import StageSpec
from peftds.search.state import override_key, read_state
from peftds.search.stats import finite


def next_space(spec: StageSpec, space: Space, summary: Mapping[str, Any], on_tie: str = "leader") -> Space:
    """The input space constrained to the winner of an `ok` summary, with the stage added to its history.

    on_tie (search.on_tie) says what an `equivalent` or `unresolved` verdict passes on: `leader` constrains
    the dimension to the leader all the same (the paper's rule), `open` leaves the dimension free (every
    option stays possible: a space holds one value per dimension, so the options found worse do too)."""
    w = summary["winner"]
    ws = summary["options"][w]
    out = space
    verdict = summary.get("verdict")
    keep_open = on_tie == "open" and verdict in ("equivalent", "unresolved")
    if spec.dimension is not None and not keep_open:
        group = spec.group if spec.dimension == "strategies" else None
        out = space.constrain(spec.dimension, spec.options[w], group=group)
    hist = {
        "stage": spec.name,
        "option": w,
        "value": spec.options[w],
        "mean": round(ws["mean"], 4),
        "ci": [round(ws["ci_low"], 4), round(ws["ci_high"], 4)] if finite(ws["ci_low"]) else None,  # None: n/a
        "designs": ws["designs_ok"],
        "overlap_runner_up": summary["overlap"],
        "verdict": verdict,
        "within_tolerance": list((summary.get("decision") or {}).get("within") or []),
        "dimension_left_open": keep_open,
    }
    return replace(out, name=f"after_{spec.name}", history=(*space.history, hist))


def write_space_next(
    stage_dir: Path, spec: StageSpec, space: Space, winner: str, search_dir: Path, verdict: str | None = None
) -> Path:
    """space_next.yaml: the space the next stage samples from, with the command that continues the same
    search (its dir holds every other setting: model, tasks, N, seed, ...) and the stage's verdict."""
    path = stage_dir / SPACE_NEXT
    stored = [a for a in read_state(search_dir).get("args") or [] if override_key(a) not in ("stage", "space")]
    left_open = bool(space.history and space.history[-1].get("dimension_left_open"))
    what = f"dimension {spec.dimension} left open (leader {winner})" if left_open else f"winner {winner}"
    header = (
        f"# space after stage {spec.name}: input space + {what}; verdict: {verdict or 'n/a'}\n"
        f"# next: peftds search search.dir={search_dir} stage=<next stage> space={path}\n"
        f"# (the search dir's search.json keeps this search's settings: {' '.join(stored)})\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(space.to_config(), sort_keys=False, default_flow_style=None))


def write_summary(stage_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json: per-option statistics and the winner."""
    return write_text_atomic(stage_dir / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))

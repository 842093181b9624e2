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


def next_space(spec: StageSpec, space: Space, summary: Mapping[str, Any]) -> Space:
    """The input space constrained to the winner of an `ok` summary, with the stage added to its history."""
    w = summary["winner"]
    ws = summary["options"][w]
    out = space
    if spec.dimension is not None:
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
    }
    return replace(out, name=f"after_{spec.name}", history=(*space.history, hist))


def write_space_next(stage_dir: Path, spec: StageSpec, space: Space, winner: str, search_dir: Path) -> Path:
    """space_next.yaml: the space the next stage samples from, with the command that continues the same
    search (its dir holds every other setting: model, tasks, N, seed, ...)."""
    path = stage_dir / SPACE_NEXT
    stored = [a for a in read_state(search_dir).get("args") or [] if override_key(a) not in ("stage", "space")]
    header = (
        f"# space after stage {spec.name}: input space + winner {winner}\n"
        f"# next: peftds search search.dir={search_dir} stage=<next stage> space={path}\n"
        f"# (the search dir's search.json keeps this search's settings: {' '.join(stored)})\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(space.to_config(), sort_keys=False, default_flow_style=None))


def write_summary(stage_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json: per-option statistics and the winner."""
    return write_text_atomic(stage_dir / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))

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


def write_space_next(stage_dir: Path, spec: StageSpec, space: Space, winner: str) -> Path:
    """space_next.yaml: the space the next stage samples from."""
    path = stage_dir / SPACE_NEXT
    header = (
        f"# space after stage {spec.name}: input space + winner {winner}\n"
        f"# next: peftds search stage=<next stage> space={path}\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(space.to_config(), sort_keys=False, default_flow_style=None))


def write_summary(stage_dir: Path, summary: Mapping[str, Any]) -> Path:
    """summary.json: per-option statistics and the winner."""
    return write_text_atomic(stage_dir / SUMMARY_FILE, json.dumps(summary, indent=1, default=str))

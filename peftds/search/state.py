"""search.json of a search dir: the arguments to resume with and the stages run (the report's order)."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peftds.files import SEARCH_STATE, read_json, write_text_atomic


def override_key(arg: str) -> str:
    """The key of a Hydra override (`+a.b=1` -> `a.b`, `hydra/launcher=joblib` -> `hydra/launcher`)."""
    m = re.match(r"^[+~]*([^=]+)", arg)
    return m.group(1) if m else arg


def read_state(sdir: Path) -> dict[str, Any]:
    """search.json of a search dir ({} when there is none)."""
    return read_json(Path(sdir) / SEARCH_STATE) or {}


def write_state(sdir: Path, state: dict[str, Any]) -> None:
    write_text_atomic(Path(sdir) / SEARCH_STATE, json.dumps(state, indent=1))


def record_args(sdir: Path, args: Sequence[str]) -> None:
    """Store the arguments a later `peftds search search.dir=<dir>` resumes with."""
    state = read_state(sdir) or {"created": datetime.datetime.now().isoformat()}
    state["args"] = list(args)
    write_state(sdir, state)


def record_stages_run(sdir: Path, names: Sequence[str]) -> None:
    """Add stage names (in run order) to `stages_run`."""
    state = read_state(sdir)
    runs = list(state.get("stages_run") or [])
    runs += [s for s in names if s not in runs]
    state["stages_run"] = runs
    write_state(sdir, state)

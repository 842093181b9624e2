"""`peftds export <run dir> format=peft|merged out=<dir> [overwrite=true]`.

Everything is checked before anything is written, and the folder is written beside `out` and moved into
place at the end: a refused or failed export leaves `out` as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from peftds.config.schema import convert
from peftds.config.sections import ExportConfig
from peftds.errors import PeftdsError
from peftds.export.card import CARD_FILE, hub_base_model, model_card
from peftds.export.merged import write_merged
from peftds.export.peft import write_peft
from peftds.export.source import TrainedRun, load_run
from peftds.files import write_text_atomic
from peftds.train.setup import quiet_libraries

USAGE = "usage: peftds export <run dir> format=peft|merged out=<dir> [overwrite=true]"
TEXT_KEYS = ("format", "out")  # taken as written (out=123 is a folder name, not a number)


def parse_args(argv: list[str]) -> tuple[Path, ExportConfig]:
    dirs = [a for a in argv if "=" not in a]
    if len(dirs) != 1:
        raise PeftdsError(f"name one run dir ({USAGE})")
    opts: dict[str, Any] = {}
    for arg in argv:
        if "=" in arg:
            key, value = arg.split("=", 1)
            key = key.removeprefix("export.")
            opts[key] = value if key in TEXT_KEYS else yaml.safe_load(value)
    return Path(dirs[0]), convert(ExportConfig, opts, "export")


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def export(run: TrainedRun, settings: ExportConfig) -> dict[str, Any]:
    """Write the export into settings.out (see the module doc); returns a summary."""
    out = Path(str(settings.out)).expanduser()
    if out.exists() and not out.is_dir():
        raise PeftdsError(f"out={out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not settings.overwrite:
        raise PeftdsError(f"out={out} is not empty (overwrite=true replaces it)")
    if out.resolve() in (run.run_dir.resolve(), *run.run_dir.resolve().parents):
        raise PeftdsError(f"out={out} would replace the run it exports")
    card = model_card(run, settings.format)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would become out's mode
    try:
        if settings.format == "peft":
            summary = write_peft(run, staging, hub_base_model(run.built.plan.model))
        else:
            summary = write_merged(run, staging)
        write_text_atomic(staging / CARD_FILE, card)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {
        **summary,
        "format": settings.format,
        "out": str(out),
        "bytes": size_of(out),
        "run_bytes": size_of(run.run_dir),
    }


def cmd_export(argv: list[str]) -> int:
    run_dir, settings = parse_args(argv)
    quiet_libraries(load_bars=False)
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notes a user cannot act on
    run = load_run(run_dir)
    summary = export(run, settings)
    print(
        f"peftds export: {run.built.plan.design} -> {summary['out']} (format={summary['format']}, "
        f"{summary['bytes'] / 1024:.0f} KiB; run dir {summary['run_bytes'] / 1024:.0f} KiB)"
    )
    return 0

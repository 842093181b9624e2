"""The bench commands: ``peftds bench``, ``peftds bench-data``, ``peftds bench-eval``.

Only these commands compose the ``bench`` config group (``+bench=default``, or ``+bench=<name>`` for a
user's ``bench=<name>``); each reads its composed config once (:meth:`BenchSettings.from_config`) and
writes its JSON record to ``bench.out`` when given, else into ``hydra.run.dir`` when given, else to
``outputs/<command>/<time>/``.

``python -m peftds.bench.cli <bench|bench-data|bench-eval> key=value ...`` runs a command without
loading the other command modules (scripts/gpu_bench.sh).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from peftds.bench.data import data_table, run_bench_data
from peftds.bench.device import cpu_threads
from peftds.bench.eval import eval_table, run_bench_eval
from peftds.bench.settings import BenchSettings
from peftds.bench.step import run_bench, table
from peftds.bench.tables import merge_tables
from peftds.config.compose import compose_for, plain
from peftds.design.plan import Design
from peftds.errors import PeftdsError
from peftds.files import write_json_atomic

RUN_DIR_KEY = "hydra.run.dir"
GROUPS = ("bench",)  # the optional config group the bench commands compose


def parse_overrides(argv: Sequence[str]) -> list[Any]:
    """Hydra's own parse of the overrides (bad syntax: one line naming it)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(argv))
    except HydraException as e:
        raise PeftdsError(" ".join(str(e).split())) from None


def with_default_model(argv: Sequence[str], model: str) -> list[str]:
    """``model=<model>`` first when the overrides choose no model (bench-eval needs a text-to-text one)."""
    chosen = any(ov.key_or_group == "model" and ov.package is None for ov in parse_overrides(argv))
    return list(argv) if chosen else [f"model={model}", *argv]


def read_config(argv: Sequence[str]) -> BenchSettings:
    """The composed config of a bench command (``+bench=default``, or ``+bench=<name>`` for ``bench=<name>``),
    read once."""
    return BenchSettings.from_config(compose_for(GROUPS, argv))


def run_dir_of(argv: Sequence[str]) -> Path | None:
    """The ``hydra.run.dir`` a user gave (``${now:...}`` resolved), or None."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    given = [ov for ov in parse_overrides(argv) if ov.key_or_group == RUN_DIR_KEY and not ov.is_delete()]
    if not given:
        return None
    value = given[-1].value()
    try:
        return Path(str(OmegaConf.create({"dir": value}).dir))
    except OmegaConfBaseException as e:
        raise PeftdsError(
            f"{RUN_DIR_KEY}={value}: cannot resolve it ({e}); set bench.out=<file.json> instead"
        ) from None


def out_path(out: str | None, run_dir: Path | None, stem: str) -> Path:
    """``bench.out`` when given, else ``<hydra.run.dir>/<stem>.json``, else ``outputs/<stem>/<time>/<stem>.json``."""
    if out:
        return Path(out)
    if run_dir is not None:
        return run_dir / f"{stem}.json"
    return Path("outputs") / stem / time.strftime("%Y-%m-%d_%H-%M-%S") / f"{stem}.json"


def extra_designs(overrides: Sequence[str], designs: Sequence[str]) -> dict[str, Mapping[str, Any] | str]:
    """``bench.designs``: each design composed with the run's other overrides (``design:<stem>`` -> its
    config). An unknown or malformed design stops the bench before any model loads; one the model cannot
    afford is reported in the record while the others are still timed."""
    keep = [a for a, ov in zip(overrides, parse_overrides(overrides)) if ov.key_or_group.split(".")[0] != "design"]
    out: dict[str, Mapping[str, Any] | str] = {}
    for extra in designs:
        design = dict(plain(compose_for(GROUPS, [*keep, f"design={extra}"]).design))
        Design.from_config(design)
        out[f"design:{Path(extra).stem}"] = design
    return out


def finish(rec: dict[str, Any], path: Path, text: str) -> int:
    """Write the record (with its own path) and print its table and where it went."""
    rec["out"] = str(path)
    write_json_atomic(path, rec)
    print(text)
    print(f"-> {path}")
    return 0


def cmd_bench(argv: list[str]) -> int:
    """``peftds bench``: time the variants' training steps (``bench.epoch=true``: also the bench-data report)."""
    bc = read_config(argv)
    rec = run_bench(bc.run, bc.bench, extra_designs(argv, bc.bench.designs))
    text = table(rec)
    if bc.bench.epoch:
        rec["epoch"] = run_bench_data(bc.run, bc.bench)
        text += "\n\n" + data_table(rec["epoch"])
    return finish(rec, out_path(bc.bench.out, run_dir_of(argv), "bench"), text)


def cmd_bench_data(argv: list[str]) -> int:
    """``peftds bench-data``: padded tokens and epoch time of the batching schemes on real task data."""
    bc = read_config(argv)
    rec = run_bench_data(bc.run, bc.bench)
    return finish(rec, out_path(bc.bench.out, run_dir_of(argv), "bench_data"), data_table(rec))


def cmd_bench_eval(argv: list[str]) -> int:
    """``peftds bench-eval``: label-word ranking vs greedy generation (default model: tiny_t5)."""
    bc = read_config(with_default_model(argv, "tiny_t5"))
    with cpu_threads(bc.bench.threads):  # bench-eval runs on the CPU
        rec = run_bench_eval(bc.run, bc.bench.eval)
    return finish(rec, out_path(bc.bench.out, run_dir_of(argv), "bench_eval"), eval_table(rec))


CLI_COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "bench": cmd_bench,
    "bench-data": cmd_bench_data,
    "bench-eval": cmd_bench_eval,
}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peftds.bench.cli <bench|bench-data|bench-eval> key=value ...`` (or ``--table A.json ...``,
    the same as ``python -m peftds.bench.tables``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--table":
        print(merge_tables(argv[1:]))
        return 0
    if not argv or argv[0] not in CLI_COMMANDS:
        print(
            f"usage: python -m peftds.bench.cli {{{'|'.join(CLI_COMMANDS)}}} key=value ... | --table BENCH.json ...",
            file=sys.stderr,
        )
        return 2
    try:
        return CLI_COMMANDS[argv[0]](argv[1:])
    except PeftdsError as e:
        print(f"peftds: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

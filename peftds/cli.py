"""The `peftds` command: `peftds <command> [key=value ...]` (Hydra overrides)."""
from __future__ import annotations

import sys
from typing import Callable

from peftds.errors import PeftdsError

USAGE = """usage: peftds <command> [key=value ...]

commands:
  inspect   per-layer plan of a design on a model (model=, design=, budget=, format=table|json)
  train     fine-tune a design on a task (Hydra run dir gets result.json + trained params)
  search    design-space search, stage by stage (stage=grouping|allocation|tunable|strategy|all)
  report    Markdown + PNG report of a search dir: `peftds report <dir>`
  bench     time a design's training step against peft LoRA, the frozen floor, full FT, forward only
  bench-data  padded-token fraction and epoch time: length-grouped vs fixed/random padding
  bench-eval  label-word ranking vs free generation speed (text-to-text classification)

Any Hydra override works, e.g. `peftds inspect model=tiny_t5 design=spindle_t5base format=json`.
`design=` also takes a YAML file path (e.g. the design a search wrote).
"""


def _model_name(argv: list[str]) -> str | None:
    for a in argv:
        if a.startswith("model="):
            return a.split("=", 1)[1]
    return None


def cmd_inspect(argv: list[str]) -> int:
    from peftds.design import inspect
    from peftds.config.compose import compose

    cfg = compose(argv)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model_name = _model_name(argv) or "minilm_l6"
    print(inspect.run(cfg))
    return 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"inspect": cmd_inspect}


def register(name: str, fn: Callable[[list[str]], int]) -> None:
    COMMANDS[name] = fn


def _load_commands() -> None:
    """Commands living in their own modules register themselves on import (if present)."""
    import importlib

    for mod in ("train.job", "search.runner", "search.report", "bench.step"):
        try:
            m = importlib.import_module(f"peftds.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"peftds.{mod}":
                raise
            continue
        for name, fn in getattr(m, "CLI_COMMANDS", {}).items():
            register(name, fn)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    _load_commands()
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"peftds: error: unknown command '{command}' (known: {', '.join(sorted(COMMANDS))})", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest) or 0
    except PeftdsError as e:
        print(f"peftds: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftds: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `peftds inspect ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())

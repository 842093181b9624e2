"""The `peftds` command: `peftds <command> [key=value ...]` (Hydra overrides), `--help`, `--cfg`."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftds.config.compose import (
    DEFAULT_DATA_DIR,
    FILE_GROUPS,
    compose_for,
    did_you_mean,
    group_options,
    use_default_data_dir,
)
from peftds.config.schema import describe
from peftds.config.sections import SECTIONS
from peftds.errors import PeftdsError


@dataclass(frozen=True)
class Command:
    """A subcommand: where it lives, what it does, which config groups and keys it reads."""

    target: str  # "module:function", imported only when the command runs
    summary: str
    groups: tuple[str, ...] = ()  # config groups it composes (what --help lists)
    sections: tuple[str, ...] = ()  # typed sections whose keys --help describes ("design": a design's keys)
    keys: tuple[str, ...] = ()  # top-level keys it reads besides its groups (TOP_KEY_HELP)
    usage_from: str | None = None  # "module:USAGE" of a command that parses its own arguments
    output: str | None = "hydra.run.dir"  # the key that says where it writes (None: it writes no run dir)

    def function(self) -> Callable[[list[str]], int]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


# Top-level keys some commands read, with their help (conf/config.yaml holds their defaults).
TOP_KEY_HELP = {"format": "table|json", "seed": "training seed (head and strategy initialisation, data order)"}


TRAIN_GROUPS = ("model", "budget", "design", "task", "data", "train")
COMMANDS: dict[str, Command] = {
    "inspect": Command(
        "peftds.design.inspect:cmd_inspect",
        "per-layer plan of a design on a model (built on the meta device: no weights needed)",
        ("model", "budget", "design"),
        ("model", "budget", "design"),
        ("format",),
        output=None,
    ),
    "train": Command(
        "peftds.train.job:cmd_train",
        "fine-tune one design on one task; result.json + trained params in the run dir (hydra.run.dir)",
        TRAIN_GROUPS,
        ("model", "budget", "design", "data", "train"),
        ("seed",),
    ),
    "search": Command(
        "peftds.search.launch:cmd_search",
        "design-space search, stage by stage: sample N designs per option, train, score, keep the winner",
        ("search", "stage", "space", "model", "budget", "data", "train"),
        ("search", "data", "train"),
        output="search.dir",
    ),
    "report": Command(
        "peftds.search.report:cmd_report",
        "Markdown tables + PNG plots of a search dir (per stage and overall)",
        usage_from="peftds.search.report:USAGE",
        output=None,
    ),
    "replay": Command(
        "peftds.search.replay_command:cmd_replay",
        "replay a full-fidelity stage: how often racing, a smaller N or fewer epochs pick its winner, at what compute",
        usage_from="peftds.search.replay_command:USAGE",
        output=None,
    ),
    "compare": Command(
        "peftds.compare.runner:cmd_compare",
        "designs x tasks x seeds in the final regime (train, score on dev), resumable; tables with significance",
        ("compare", "model", "budget", "data", "train"),
        ("compare", "data", "train"),
        output="compare.dir",
    ),
    "export": Command(
        "peftds.export.cli:cmd_export",
        "a trained run as a peft LoRA adapter or a merged transformers checkpoint, with a model card",
        sections=("export",),
        usage_from="peftds.export.cli:USAGE",
        output="out",
    ),
    "bench": Command(
        "peftds.bench.cli:cmd_bench",
        "median training step of a design vs peft LoRA, the frozen floor, full FT and forward only",
        ("model", "budget", "design", "bench"),
        ("bench",),
    ),
    "bench-data": Command(
        "peftds.bench.cli:cmd_bench_data",
        "padded tokens and epoch time: length-grouped vs fixed / random padding",
        ("model", "budget", "design", "bench"),
        ("bench",),
    ),
    "bench-eval": Command(
        "peftds.bench.cli:cmd_bench_eval",
        "label-word ranking vs free generation speed (text-to-text classification)",
        ("model", "budget", "task", "bench"),
        ("bench",),
    ),
}
HELP_FLAGS = ("-h", "--help", "help")
CFG_FLAG = "--cfg"
CFG_WHAT = ("job", "all")  # Hydra's `--cfg job|all`: the same composed config here


def data_line() -> str:
    """Where task data is read from, as the commands resolve it."""
    state = "found" if DEFAULT_DATA_DIR.is_dir() else "absent"
    now = f"now {os.environ['PEFTDS_DATA']}" if os.environ.get("PEFTDS_DATA") else "now unset"
    return (
        f"data folder: data.dir, else env PEFTDS_DATA ({now}), else {DEFAULT_DATA_DIR} ({state}), "
        "the folder the Makefile uses"
    )


def command_usage(name: str) -> str:
    """The usage line: from the command's own parser, or built from its groups and keys."""
    cmd = COMMANDS[name]
    if cmd.usage_from:
        module, attr = cmd.usage_from.split(":")
        return str(getattr(importlib.import_module(module), attr))
    parts = [f"peftds {name}"]
    parts += [f"[{g}=<option{'|file.yaml' if g in FILE_GROUPS else ''}>]" for g in cmd.groups]
    parts += [f"[{key}=<{TOP_KEY_HELP[key]}>]" if key == "format" else f"[{key}=<value>]" for key in cmd.keys]
    if cmd.sections:
        parts.append(f"[<{'|'.join(cmd.sections)}>.<key>=<value> ...]")
    if cmd.output:
        parts.append(f"[{cmd.output}=<dir>]")
    glue = "\0"  # keeps each bracketed item on one line when wrapping
    text = "usage: " + " ".join(p.replace(" ", glue) for p in parts)
    indent = " " * len(f"usage: peftds {name} ")
    return textwrap.fill(text, width=110, subsequent_indent=indent, break_on_hyphens=False).replace(glue, " ")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: peftds <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "`peftds <command> --help` lists the command's config groups and keys; `peftds <command> --cfg",
        "[key=value ...]` prints the composed config without running. Arguments are Hydra overrides (key=value,",
        "no --flags); `design=` also takes a YAML path.",
        data_line(),
        f"run it as {Path(sys.executable).parent / 'peftds'} or activate that venv (source <venv>/bin/activate)",
    ]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """What a command does, its config groups with their options, and its keys with their help."""

    cmd = COMMANDS[name]
    lines = [f"peftds {name}: {cmd.summary}", "", command_usage(name)]
    if cmd.groups:
        lines += ["", "config groups (group=option; options are conf/<group>/*.yaml):"]
        lines += [f"  {g:<8} {' '.join(group_options(g)) or '-'}" for g in cmd.groups]
    if cmd.keys:
        lines += ["", "other keys:"] + [f"  {key:<8} {TOP_KEY_HELP[key]}" for key in cmd.keys]
    for section in cmd.sections:
        rows = section_rows(section)
        width = max(len(key) for key, *_ in rows)
        lines += ["", f"{section} keys:"]
        lines += [f"  {key:<{width}}  {help_} [{tp}, default {default!r}]" for key, tp, default, help_ in rows]
    if "data" in cmd.sections:
        lines += ["", data_line()]
    if cmd.groups:
        lines += ["", f"print the composed config without running: peftds {name} --cfg [key=value ...]"]
    return "\n".join(lines)


def section_rows(section: str) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) of a typed section, or of a design's keys."""
    if section == "design":
        from peftds.design.plan import design_key_help

        return design_key_help()
    return describe(SECTIONS[section])


def known_command(name: str) -> Command:
    if name not in COMMANDS:
        raise PeftdsError(
            f"unknown command '{name}'{did_you_mean(name, list(COMMANDS))} (known: {', '.join(COMMANDS)})"
        )
    return COMMANDS[name]


def reject_flags(name: str, argv: Sequence[str]) -> None:
    """Arguments are `key=value` overrides: a `--key value` habit gets one line saying so."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-") or arg in HELP_FLAGS or arg == CFG_FLAG:
            continue
        if i and argv[i - 1] == CFG_FLAG and arg in CFG_WHAT:
            continue
        key = arg.lstrip("-").split("=", 1)[0]
        value = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "<value>")
        raise PeftdsError(
            f"'{arg}' is not an option of peftds {name}: settings are key=value overrides (e.g. {key}={value})"
        )


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler stopping the job) stops a command like Ctrl-C (a run training at that moment first
    saves a checkpoint and records `preempted`: peftds.train.checkpoint.PreemptionGuard)."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_output_dir(name: str, argv: Sequence[str]) -> None:
    """`hydra.run.dir` / `hydra.sweep.dir` only where the command writes there; elsewhere one line naming
    the key the command uses instead (or saying it writes no run dir)."""
    cmd = COMMANDS[name]
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key not in ("hydra.run.dir", "hydra.sweep.dir") or key == cmd.output:
            continue
        where = f"set its dir with {cmd.output}=<dir>" if cmd.output else "it writes no run dir"
        raise PeftdsError(f"peftds {name} does not take {key}: {where}")


def print_config(name: str, argv: Sequence[str]) -> int:
    from omegaconf import OmegaConf

    cfg = compose_for(COMMANDS[name].groups, list(argv))
    print(OmegaConf.to_yaml(cfg, resolve=False).rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in HELP_FLAGS:
            print(usage())
            return 0 if argv else 2
        name, rest = argv[0], argv[1:]
        known_command(name)
        if any(a in HELP_FLAGS for a in rest):
            print(command_help(name))
            return 0
        reject_flags(name, rest)
        check_output_dir(name, rest)
        use_default_data_dir()
        if CFG_FLAG in rest:
            if not COMMANDS[name].groups:
                raise PeftdsError(f"`peftds {name}` composes no config (nothing to print with --cfg)")
            at = rest.index(CFG_FLAG)
            skip = {at, at + 1} if rest[at + 1 : at + 2] and rest[at + 1] in CFG_WHAT else {at}
            return print_config(name, [a for i, a in enumerate(rest) if i not in skip])
        with sigterm_as_interrupt():
            return COMMANDS[name].function()(rest) or 0
    except PeftdsError as e:
        print(f"peftds: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("peftds: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `peftds inspect ... | head`
        return 0
    except OSError as e:  # the machine, not the input: a full disk, a dir that cannot be written
        where = f": {e.filename}" if e.filename else ""
        print(f"peftds: error: {e.strerror or e}{where} (finished runs are kept; rerun to resume)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

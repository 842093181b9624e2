"""The `peftds` command: `peftds <command> [key=value ...]` (Hydra overrides), `--help`, `--cfg`."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from peftds.config.compose import compose_for, group_options
from peftds.config.schema import describe
from peftds.config.sections import SECTIONS
from peftds.errors import PeftdsError


@dataclass(frozen=True)
class Command:
    """A subcommand: where it lives, what it does, which config groups and keys it reads."""

    target: str  # "module:function", imported only when the command runs
    summary: str
    groups: tuple[str, ...] = ()  # config groups it composes (what --help lists)
    sections: tuple[str, ...] = ()  # typed sections whose keys --help describes
    usage: str = ""
    output: str | None = "hydra.run.dir"  # the key that says where it writes (None: it writes no run dir)

    def function(self) -> Callable[[list[str]], int]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


TRAIN_GROUPS = ("model", "budget", "design", "task", "data", "train")
COMMANDS: dict[str, Command] = {
    "inspect": Command(
        "peftds.design.inspect:cmd_inspect",
        "per-layer plan of a design on a model (built on the meta device: no weights needed)",
        ("model", "budget", "design"),
        ("model", "budget"),
        "peftds inspect model=t5_base design=spindle_t5base [format=table|json]",
        output=None,
    ),
    "train": Command(
        "peftds.train.job:cmd_train",
        "fine-tune one design on one task; result.json + trained params in the run dir (hydra.run.dir)",
        TRAIN_GROUPS,
        ("model", "budget", "data", "train"),
        "peftds train [model=...] [design=<name|file.yaml>] [task=...] [train.epochs=...] [hydra.run.dir=...]",
    ),
    "search": Command(
        "peftds.search.launch:cmd_search",
        "design-space search, stage by stage: sample N designs per option, train, score, keep the winner",
        ("search", "stage", "space", "model", "budget", "data", "train"),
        ("search", "data", "train"),
        "peftds search stage=<grouping|allocation|tunable|strategy|all> search=<default|demo|tiny> [search.dir=...]",
        output="search.dir",
    ),
    "report": Command(
        "peftds.search.report:cmd_report",
        "Markdown tables + PNG plots of a search dir (per stage and overall)",
        usage="peftds report <search dir>",
        output=None,
    ),
    "replay": Command(
        "peftds.search.replay:cmd_replay",
        "replay a full-fidelity stage: how often racing, a smaller N or fewer epochs pick its winner, at what compute",
        usage="peftds replay <stage dir> [replays=200] [seed=0] [delta=0.05] [round_size=2]",
        output=None,
    ),
    "compare": Command(
        "peftds.compare.runner:cmd_compare",
        "designs x tasks x seeds in the final regime (train, score on dev), resumable; tables with significance",
        ("compare", "model", "budget", "data", "train"),
        ("compare", "data", "train"),
        "peftds compare compare=<default|cpu|glue_t5base|glue_t5_3b|glue_roberta_base|glue_roberta_large|gen_bart>"
        " [compare.dry=true] [compare.dir=...]",
        output="compare.dir",
    ),
    "bench": Command(
        "peftds.bench.cli:cmd_bench",
        "median training step of a design vs peft LoRA, the frozen floor, full FT and forward only",
        ("model", "budget", "design", "bench"),
        ("bench",),
        "peftds bench model=... design=... [bench=gpu] [hydra.run.dir=...]",
    ),
    "bench-data": Command(
        "peftds.bench.cli:cmd_bench_data",
        "padded tokens and epoch time: length-grouped vs fixed / random padding",
        ("model", "budget", "design", "bench"),
        ("bench",),
        "peftds bench-data [bench.data.tasks=[sst2,rte]]",
    ),
    "bench-eval": Command(
        "peftds.bench.cli:cmd_bench_eval",
        "label-word ranking vs free generation speed (text-to-text classification)",
        ("model", "budget", "task", "bench"),
        ("bench",),
        "peftds bench-eval model=tiny_t5 task=sst2",
    ),
}
HELP_FLAGS = ("-h", "--help", "help")


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: peftds <command> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "`peftds <command> --help` lists the command's config groups and keys; `peftds <command> --cfg",
        "[key=value ...]` prints the composed config without running. Any Hydra override works; `design=` also",
        "takes a YAML path.",
    ]
    return "\n".join(lines)


def command_help(name: str) -> str:
    """What a command does, its config groups with their options, and its keys with their help."""

    cmd = COMMANDS[name]
    lines = [f"peftds {name}: {cmd.summary}", "", f"usage: {cmd.usage or f'peftds {name} [key=value ...]'}"]
    if cmd.groups:
        lines += ["", "config groups (group=option):"]
        lines += [f"  {g:<8} {' '.join(group_options(g)) or '-'}" for g in cmd.groups]
    for section in cmd.sections:
        rows = describe(SECTIONS[section])
        width = max(len(key) for key, *_ in rows)
        lines += ["", f"{section} keys:"]
        lines += [f"  {key:<{width}}  {help_} [{tp}, default {default!r}]" for key, tp, default, help_ in rows]
    if cmd.groups:
        lines += ["", f"print the composed config without running: peftds {name} --cfg [key=value ...]"]
    return "\n".join(lines)


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
        if name not in COMMANDS:
            raise PeftdsError(f"unknown command '{name}' (known: {', '.join(COMMANDS)})")
        if any(a in HELP_FLAGS for a in rest):
            print(command_help(name))
            return 0
        check_output_dir(name, rest)
        if "--cfg" in rest:
            if not COMMANDS[name].groups:
                raise PeftdsError(f"`peftds {name}` composes no config (nothing to print with --cfg)")
            return print_config(name, [a for a in rest if a != "--cfg"])
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

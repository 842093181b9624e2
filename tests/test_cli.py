"""The `peftds` command (peftds.cli): usage, per-command --help and --cfg, one-line errors, the
design naming its model, the installed console script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peftds.cli import COMMANDS
from tests.helpers import run_main


@pytest.mark.parametrize(
    "argv,culprit",
    [
        (["inspect", "model=gpt9"], "gpt9"),
        (["inspect", "design=nonesuch"], "nonesuch"),
        (["inspect", "model.colour=red"], "colour"),
        (["inspect", "design.hparams.lora.rank=4"], "rank"),
        (["inspect", "model=tiny_t5", "design=spindle", "design.grouping.groups=24"], "spindle"),
        (["inspect", "model=tiny_t5", "design=spindle_t5base", "budget=p0_1"], "cannot afford"),
        (["inspect", "design=/no/such/design.yaml"], "/no/such/design.yaml"),
        (["frobnicate"], "frobnicate"),
        (["trian"], "did you mean train?"),
        (["train", "train.epoch=1"], "unknown key train.epoch (did you mean train.epochs?)"),
        (["inspect", "design=lroa"], "unknown design option 'lroa' (did you mean lora?"),
        (["inspect", "desgn=lora"], "unknown key desgn (did you mean design?)"),
        (["search", "stage=grouing"], "did you mean grouping?"),
        (["inspect", "design.hparams.adapter.scal=2"], "did you mean design.hparams.adapter.scale?"),
        (["train", "--model", "tiny_t5"], "settings are key=value overrides (e.g. model=tiny_t5)"),
        (["train", "tiny_t5"], "'tiny_t5' is not an override"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, argv, culprit):
    code, _out, err = run_main(capsys, *argv)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in err


def test_console_script_runs_offline():
    """The installed entry point, in a real subprocess (what a user types)."""
    exe = os.path.join(os.path.dirname(sys.executable), "peftds")
    proc = subprocess.run(
        [exe, "inspect", "model=minilm_l6", "design=lora", "format=json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backbone_params"] == 22_565_376


# ------------------------------------------------------------------------------- usage, --help, --cfg
def test_usage_lists_every_command(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0 and all(f"  {name} " in out for name in COMMANDS)
    code, out, _ = run_main(capsys)
    assert code == 2 and "usage: peftds" in out


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_help_lists_groups_options_and_keys(capsys, command):
    """`peftds <command> --help`: every config group with its options, every key with its help line."""
    from peftds.cli import section_rows
    from peftds.config.compose import group_options

    cmd = COMMANDS[command]
    code, out, err = run_main(capsys, command, "--help")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == f"peftds {command}: {cmd.summary}"
    for group in cmd.groups:
        row = next(line for line in lines if line.split()[:1] == [group])
        assert set(group_options(group)) <= set(row.split()[1:]), group
    for section in cmd.sections:
        for key, _, _, help_ in section_rows(section):
            assert any(line.split()[:1] == [key] and help_ in line for line in lines), key
    if not cmd.groups:
        assert "config groups" not in out


def test_cfg_prints_the_composed_config_without_running(capsys, monkeypatch, tmp_path):
    import yaml

    import peftds.train.job

    def refuse(argv):
        raise AssertionError("--cfg ran the command")

    monkeypatch.setattr(peftds.train.job, "cmd_train", refuse)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train", "--cfg", "model=tiny_t5")
    assert code == 0 and not err
    assert "model:" in out and "name: tiny_t5" in out
    cfg = yaml.safe_load(out)
    assert cfg["model"]["name"] == "tiny_t5" and cfg["task"]["name"] == "sst2"
    assert not list(tmp_path.iterdir())  # no run dir


# ----------------------------------------------------------------------------- a design names its model
def test_design_selects_its_model_for_inspect(capsys):
    code, out, err = run_main(capsys, "inspect", "design=spindle_t5base", "format=json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["model"] == "t5_base" and len(rep["layers"]) == 24 and rep["groups"] == [4, 8, 8, 4]


def test_design_model_offline_is_one_line_for_train(capsys, tmp_path, monkeypatch):
    """t5_base is not available offline: train stops before the run, in one line naming the model."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train", "design=spindle_t5base", "task=sst2")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "t5_base" in lines[0] and "Traceback" not in out + err
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("order", ["model-first", "design-first"])
def test_an_explicit_model_wins_over_the_design_model(capsys, order):
    argv = ["model=tiny_t5", "design=spindle_t5base"]
    if order == "design-first":
        argv.reverse()
    code, out, _ = run_main(capsys, "inspect", *argv, "format=json")
    assert code == 0 and json.loads(out)["model"] == "tiny_t5"
    code, out, _ = run_main(capsys, "train", "--cfg", *argv)
    assert code == 0 and "name: tiny_t5" in out and "name: t5_base" not in out


def test_unknown_option_lists_designs_not_fragments(capsys):
    """A shared fragment (base_hparams) is no design: the error's list and --help leave it out."""
    _code, _out, err = run_main(capsys, "inspect", "design=nope")
    assert "known: adapter" in err and "base_hparams" not in err and "Config search path" not in err


def test_usage_lines_come_from_the_commands_own_parsers(capsys):
    """report/replay print their parser's usage; the Hydra commands' usage names every group they compose."""
    from peftds.cli import command_usage
    from peftds.search import replay_command, report

    assert command_usage("replay") == replay_command.USAGE and command_usage("report") == report.USAGE
    for name, cmd in COMMANDS.items():
        if not cmd.usage_from:
            text = command_usage(name)
            assert all(f"[{g}=<option" in text for g in cmd.groups), name


README = Path(__file__).resolve().parents[1] / "README.md"


def readme_text() -> str:
    """The README without the paragraphs that show mistakes and their "did you mean" answers."""
    paragraphs = README.read_text().split("\n\n")
    return "\n\n".join(p for p in paragraphs if "did you mean" not in p)


def readme_command_lines() -> list[tuple[str, list[str]]]:
    """(command, its key=value arguments) of every `peftds <command> ...` the README shows."""
    import re

    found = []
    text = re.sub(r"\\\n\s*", " ", readme_text())  # shell line continuations
    for m in re.finditer(r"peftds ([a-z][a-z-]*)((?:[ \t]+[^\s`|#]+)*)", text):
        if m.group(1) not in COMMANDS:
            continue
        args = [a.strip("[]\\") for a in m.group(2).split()]
        found.append((m.group(1), [a for a in args if "=" in a]))
    return found


def test_every_key_and_option_the_readme_names_is_known():
    """Each `key=value` in a README command line is a key (or group option) its command knows."""
    import re

    from peftds.cli import TOP_KEY_HELP, command_usage, section_rows
    from peftds.config.compose import group_options

    lines = readme_command_lines()
    assert len(lines) > 20
    checked = 0
    for name, args in lines:
        cmd = COMMANDS[name]
        own = set(re.findall(r"(\w+)=", command_usage(name))) if cmd.usage_from else set()
        known = {row[0] for section in cmd.sections for row in section_rows(section)}
        for arg in args:
            key, value = arg.strip("'\"").lstrip("+~").split("=", 1)
            where = f"README: peftds {name} {arg}"
            if cmd.usage_from:
                assert key in own, where
            elif key in cmd.groups:
                placeholder = any(c in value for c in "<…/") or value.endswith((".yaml", ".yml"))
                assert placeholder or value in group_options(key), where
            elif key.startswith(("hydra.", "hydra/")):
                continue  # Hydra's own settings (launcher plugins)
            else:
                parents = {".".join(key.split(".")[:i]) for i in range(1, key.count(".") + 2)}
                assert (key in TOP_KEY_HELP and key in cmd.keys) or parents & known, where
            checked += 1
    assert checked > 40


FILE_SUFFIXES = ("mk", "yaml", "yml", "py", "json", "jsonl", "md", "csv", "png", "tex", "safetensors")


def test_every_dotted_key_the_readme_names_is_known():
    """Each `section.key` the README names in backticks is a key some command's --help describes."""
    import re

    from peftds.cli import section_rows

    sections = {section for cmd in COMMANDS.values() for section in cmd.sections}
    known = {row[0] for section in sections for row in section_rows(section)}
    named = set()
    for m in re.finditer(r"`([a-z_]+(?:\.[a-z_0-9{},]+)+)(?:=[^`]*)?`", readme_text()):
        key = m.group(1)
        if key.split(".")[0] not in sections or key.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        for expanded in expand_braces(key):
            parents = {".".join(expanded.split(".")[:i]) for i in range(1, expanded.count(".") + 2)}
            assert parents & known - sections, f"README names unknown key {expanded}"
            named.add(expanded)
    assert "design.hparams.adapter.scale" in named and len(named) > 20


def expand_braces(key: str) -> list[str]:
    """`a.{b,c}.d` -> [a.b.d, a.c.d]."""
    import re

    m = re.search(r"\{([^}]*)\}", key)
    if not m:
        return [key]
    return [x for part in m.group(1).split(",") for x in expand_braces(key[: m.start()] + part + key[m.end() :])]

"""The `peftds` command (peftds.cli): usage, per-command --help and --cfg, one-line errors, the
design naming its model, the installed console script."""

import json
import os
import subprocess
import sys

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
    from peftds.config.compose import group_options
    from peftds.config.schema import describe
    from peftds.config.sections import SECTIONS

    cmd = COMMANDS[command]
    code, out, err = run_main(capsys, command, "--help")
    assert code == 0 and not err
    lines = out.splitlines()
    assert lines[0] == f"peftds {command}: {cmd.summary}"
    for group in cmd.groups:
        row = next(line for line in lines if line.split()[:1] == [group])
        assert set(group_options(group)) <= set(row.split()[1:]), group
    for section in cmd.sections:
        for key, _, _, help_ in describe(SECTIONS[section]):
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

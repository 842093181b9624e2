"""The `peftds` command (peftds.cli): usage, per-command --help and --cfg, one-line errors, the
design naming its model, the installed console script."""
import json
import os
import subprocess
import sys

import pytest

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
    code, out, err = run_main(capsys, *argv)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and culprit in lines[0] and "Traceback" not in err


def test_console_script_runs_offline():
    """The installed entry point, in a real subprocess (what a user types)."""
    exe = os.path.join(os.path.dirname(sys.executable), "peftds")
    proc = subprocess.run([exe, "inspect", "model=minilm_l6", "design=lora", "format=json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["backbone_params"] == 22_565_376

"""Helpers shared by test folders (imported as ``tests.helpers``): the tiny models, in-process CLI runs."""

from __future__ import annotations

from peftds.cli import main

# The random-init models of conf/model/ (no download): one per family.
TINY_MODELS = ("tiny_t5", "tiny_bart", "tiny_roberta", "tiny_bert")


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    """`peftds <argv>` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    """The non-empty lines of a command's stderr."""
    return [line for line in err.splitlines() if line.strip()]


def built_from(cfg):
    """(model, design, budget fraction) of a composed config, typed as a command's entry makes them."""
    from peftds.run_config import RunConfig

    run = RunConfig.from_composed(cfg)
    return run.model, run.design_config, run.budget.fraction

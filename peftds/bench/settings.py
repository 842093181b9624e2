"""The bench commands' settings: the composed config read once, into typed sections.

:meth:`BenchSettings.from_config` is the only place a bench command reads its composed config: the
model, budget, design, task and data as a :class:`peftds.run_config.RunConfig`, and ``bench`` (with
``bench.data`` and ``bench.eval``) as :class:`peftds.config.sections.BenchConfig`. Everything below it
takes these typed objects or plain values, never an OmegaConf tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftds.config.schema import convert
from peftds.config.sections import BENCH_VARIANTS, BenchConfig
from peftds.run_config import RunConfig

VARIANTS = BENCH_VARIANTS


@dataclass(frozen=True)
class BenchSettings:
    """What a bench command reads: the run's subject (model, budget, design, task, data, seed) and bench.*."""

    run: RunConfig
    bench: BenchConfig

    @classmethod
    def from_config(cls, cfg: Any) -> BenchSettings:
        """Check and convert a composed config (OmegaConf or plain mapping) with a ``bench`` section."""
        run = RunConfig.from_composed(cfg)
        return cls(run, convert(BenchConfig, run.config.get("bench")))


def model_name(run: RunConfig) -> str:
    """The model's name in records and tables (conf/model/<name>.yaml's ``name``)."""
    return run.model.name


def tokenizer_name(run: RunConfig) -> str | None:
    """The tokenizer the model uses (its own when none is set)."""
    return run.model.tokenizer or run.model.name_or_path

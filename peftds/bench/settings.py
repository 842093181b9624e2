"""The bench commands' settings: the composed config read once, as plain values.

:meth:`BenchConfig.from_config` is the only place a bench command reads its composed config
(``conf/bench/default.yaml`` plus model, design, budget, task, data); everything below it takes these
frozen dataclasses or plain values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from peftds.config.compose import plain
from peftds.errors import PeftdsError

VARIANTS = ("design", "peft_lora", "floor", "full", "forward")


@dataclass(frozen=True)
class Subject:
    """What is benchmarked: the model and design configs (plain dicts), the budget, the task and data."""

    model: dict[str, Any]
    model_name: str
    design: dict[str, Any]
    design_name: str | None
    budget_fraction: float
    seed: int  # the design's seed (cfg.seed)
    task: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer_name(self) -> str | None:
        return self.model.get("tokenizer") or self.model.get("name_or_path")


@dataclass(frozen=True)
class StepSettings:
    """``peftds bench``: the timed step (the top level of conf/bench/default.yaml)."""

    batch_size: int = 8
    source_len: int = 64
    target_len: int = 8
    steps: int = 10
    warmup: int = 3
    seed: int = 0
    lr: float = 1e-4
    device: str | None = "auto"
    bf16: Any = "auto"
    threads: int | None = 1
    variants: tuple[str, ...] = VARIANTS
    designs: tuple[str, ...] = ()
    lora_alpha: int = 16
    compile: bool = False
    compile_mode: str | None = None
    compile_variants: tuple[str, ...] = ("design",)
    check_outputs: bool = True
    memory: bool = True
    epoch: bool = False
    out: str | None = None

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise PeftdsError(f"bench.variants: unknown {bad} (known: {', '.join(VARIANTS)})")
        if self.steps < 1 or self.warmup < 0:
            raise PeftdsError(f"bench.steps must be >= 1 and bench.warmup >= 0 (got {self.steps}, {self.warmup})")


@dataclass(frozen=True)
class DataSettings:
    """``peftds bench-data`` (bench.data)."""

    tasks: tuple[str, ...] = ("sst2", "cola", "rte")
    batch_size: int = 32
    max_len: int | None = None
    mega_batches: int | None = None
    seed: int = 0
    time_tasks: tuple[str, ...] = ("sst2", "rte")
    time_samples: int = 256


@dataclass(frozen=True)
class EvalSettings:
    """``peftds bench-eval`` (bench.eval)."""

    samples: int | None = 256
    batch_size: int = 64
    run: str | None = None
    train_steps: int = 400
    train_batch_size: int = 16
    train_lr: float = 3e-3


@dataclass(frozen=True)
class BenchConfig:
    """Everything a bench command reads from its composed config."""

    subject: Subject
    bench: StepSettings
    data: DataSettings
    eval: EvalSettings

    @classmethod
    def from_config(cls, cfg: Any) -> BenchConfig:
        """Read the composed config (an OmegaConf tree or a mapping) into plain values."""
        # Section by section: resolving the whole tree would also resolve sections bench never reads.
        b = dict(plain(cfg["bench"]))
        model = dict(plain(cfg["model"]))
        design = dict(plain(cfg["design"]))
        subject = Subject(
            model=model,
            model_name=model_name(model),
            design=design,
            design_name=design.get("name"),
            budget_fraction=float(cfg["budget"]["fraction"]),
            seed=int(cfg["seed"]),
            task=dict(plain(cfg.get("task")) or {}),
            data=dict(plain(cfg.get("data")) or {}),
        )
        return cls(subject, step_settings(b), data_settings(b.get("data") or {}), eval_settings(b.get("eval") or {}))


def model_name(model: Mapping[str, Any]) -> str:
    """The model's name in records and tables: its config's ``name``, else its path or architecture."""
    return str(model.get("name") or model.get("name_or_path") or model.get("arch") or "?")


def opt_int(x: Any) -> int | None:
    return None if x is None else int(x)


def names(x: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in (x or ()))


def step_settings(b: Mapping[str, Any]) -> StepSettings:
    """bench.* (plain) -> StepSettings."""
    return StepSettings(
        batch_size=int(b["batch_size"]),
        source_len=int(b["source_len"]),
        target_len=int(b["target_len"]),
        steps=int(b["steps"]),
        warmup=int(b["warmup"]),
        seed=int(b["seed"]),
        lr=float(b["lr"]),
        device=b.get("device"),
        bf16=b.get("bf16"),
        threads=opt_int(b.get("threads")),
        variants=names(b.get("variants")) or VARIANTS,
        designs=names(b.get("designs")),
        lora_alpha=int(b["lora_alpha"]),
        compile=bool(b.get("compile")),
        compile_mode=b.get("compile_mode"),
        compile_variants=names(b.get("compile_variants")) or ("design",),
        check_outputs=bool(b.get("check_outputs", True)),
        memory=bool(b.get("memory", True)),
        epoch=bool(b.get("epoch")),
        out=None if b.get("out") in (None, "") else str(b["out"]),
    )


def data_settings(d: Mapping[str, Any]) -> DataSettings:
    """bench.data.* (plain) -> DataSettings."""
    return DataSettings(
        tasks=names(d.get("tasks")),
        batch_size=int(d["batch_size"]),
        max_len=opt_int(d.get("max_len")) or None,
        mega_batches=opt_int(d.get("mega_batches")),
        seed=int(d.get("seed", 0)),
        time_tasks=names(d.get("time_tasks")),
        time_samples=int(d.get("time_samples") or 0),
    )


def eval_settings(e: Mapping[str, Any]) -> EvalSettings:
    """bench.eval.* (plain) -> EvalSettings."""
    return EvalSettings(
        samples=opt_int(e.get("samples")) or None,
        batch_size=int(e["batch_size"]),
        run=None if not e.get("run") else str(e["run"]),
        train_steps=int(e.get("train_steps") or 0),
        train_batch_size=int(e["train_batch_size"]),
        train_lr=float(e["train_lr"]),
    )

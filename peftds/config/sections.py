"""The typed sections of the config tree (conf/<group>/*.yaml): types, ranges and help per key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftds.config.schema import Section, setting
from peftds.errors import PeftdsError

# The transformers model types peftds.model.backbones knows (a test keeps the two lists equal; the
# config cannot import the model package, which imports it).
MODEL_TYPES = (
    "t5",
    "mt5",
    "bart",
    "bert",
    "roberta",
    "xlm-roberta",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
)


@dataclass(frozen=True)
class BudgetConfig(Section):
    section = "budget"
    fraction: float = setting(0.005, "trainable-parameter budget as a fraction of the backbone", gt=0.0, lt=1.0)


@dataclass(frozen=True)
class ModelConfig(Section):
    section = "model"
    name: str = setting("model", "the model's short name (conf/model/<name>.yaml), shown in records and tables")
    name_or_path: str | None = setting(None, "hub id, local folder or pkg:<module> of the pretrained model")
    pretrained: bool = setting(True, "load pretrained weights (false: random init from arch + shape)")
    tokenizer: str | None = setting(None, "tokenizer hub id/folder/pkg:<module> (null: the model's own)")
    arch: str | None = setting(None, "transformers model type", choices=MODEL_TYPES)
    shape: dict[str, Any] = setting({}, "config kwargs of a random-init build (d_model, num_layers, ...)")
    init_seed: int = setting(0, "seed of a random-init build")
    batch_size: int = setting(32, "default training batch size for this model (train.batch_size)", ge=1)
    attn_implementation: str = setting("sdpa", "attention kernel", choices=("sdpa", "eager", "flash_attention_2"))

    def check(self, where: str) -> None:
        if not self.name_or_path and not self.arch:
            raise PeftdsError(f"{where}: needs name_or_path (pretrained) or arch + shape (random init)")


@dataclass(frozen=True)
class DataConfig(Section):
    section = "data"
    dir: str | None = setting(
        None, "local data folder (glue/<task>/train.jsonl, ...); default $PEFTDS_DATA, else ../shared/data"
    )
    source: str = setting("auto", "auto: local files when present, else the hub", choices=("auto", "local", "hub"))
    max_train_samples: int | None = setting(None, "seeded subsample of the training rows (null: all)", ge=1)
    max_eval_samples: int | None = setting(None, "seeded subsample of each dev split (null: all)", ge=1)
    heldout: float | None = setting(
        0.1, "held-out slice of train for search scoring: a fraction < 1 or a row count", ge=0
    )
    heldout_max: int | None = setting(1000, "cap on the held-out rows", ge=0)
    seed: int = setting(0, "seed of the held-out carve-out and the subsamples")

    def check(self, where: str) -> None:
        if self.heldout is not None and self.heldout >= 1 and self.heldout != int(self.heldout):
            raise PeftdsError(f"{where}.heldout must be a fraction < 1 or a whole row count, got {self.heldout}")


COSMETIC_MODEL_KEYS = {"name"}  # the config's own name; the model itself is name_or_path / arch / shape
COSMETIC_DATA_KEYS = {"dir", "source"}  # where the data is read from, not what it is
# train.* keys that do not change what a run computes (left out of trial and run identities and out of the
# check that a checkpoint belongs to the run continuing it); divergence only decides when a failing run stops
COSMETIC_TRAIN_KEYS = {
    "progress",
    "logging_steps",
    "report_to",
    "output_dir",
    "save_params",
    "catch_errors",
    "divergence",
    "save_predictions",
    # how a run keeps its resumable state, and how far along its schedule it goes this time (the fidelity)
    "checkpoint_steps",
    "keep_checkpoint",
    "resume",
    "stop_epoch",
}

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


@dataclass(frozen=True)
class TrainConfig(Section):
    section = "train"
    epochs: int = setting(3, "training epochs", ge=1)
    max_steps: int = setting(-1, "> 0: stop after this many optimizer steps (then evaluate once); -1: off", ge=-1)
    lr: float = setting(1e-3, "peak learning rate", gt=0.0)
    batch_size: int = setting(32, "training batch size (default: model.batch_size)", ge=1)
    eval_batch_size: int = setting(64, "evaluation batch size", ge=1)
    grad_accum: int = setting(1, "gradient accumulation steps", ge=1)
    scheduler: str = setting("linear", "learning-rate schedule", choices=SCHEDULERS)
    warmup_ratio: float = setting(0.06, "share of the steps spent warming up", ge=0.0, lt=1.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0.0)
    bf16: bool | str = setting("auto", "bf16 autocast: auto (on a GPU that supports it) | true | false")
    eval_split: str = setting("validation", "scored split: validation (dev) or heldout (a slice of train)")
    max_source_len: int | None = setting(None, "input token limit (null: the task's own)", ge=1)
    max_target_len: int | None = setting(None, "target token limit (null: the task's own)", ge=1)
    length_grouped: bool = setting(True, "length-sorted batches in shuffled order with dynamic padding")
    length_buckets: list[int] | None = setting(None, "pad each batch up to one of these lengths (bounded recompiles)")
    compile: bool = setting(False, "torch.compile the training forward")
    logging_steps: int = setting(10, "log the training loss every this many steps", ge=1)
    report_to: str | list[str] = setting("none", "HF integrations to report to (none, tensorboard, wandb, ...)")
    progress: bool = setting(True, "progress bar with steps and ETA")
    save_params: bool = setting(True, "save the trained strategy params + plan into <run dir>/design")
    save_predictions: bool = setting(True, "write the scored split's predictions (best epoch) to predictions.jsonl")
    catch_errors: bool = setting(True, "record a crash as status failed instead of raising")
    output_dir: str | None = setting(None, "run dir when not run through Hydra")
    divergence: float = setting(
        1000.0, "stop as diverged when a logged loss exceeds this many times the first logged loss", gt=1.0
    )
    stop_epoch: int | None = setting(
        None, "stop after this epoch of the train.epochs schedule, resumable (null: train.epochs)", ge=1
    )
    checkpoint_steps: int = setting(0, "also keep a resumable checkpoint every this many steps (0: epochs only)", ge=0)
    keep_checkpoint: bool = setting(False, "keep the checkpoint once the whole schedule is trained")
    resume: bool = setting(True, "continue from the run dir's checkpoint (false: start over)")

    def check(self, where: str) -> None:
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise PeftdsError(f"{where}.bf16 must be auto, true or false, got {self.bf16!r}")
        if self.eval_split not in ("validation", "heldout"):
            raise PeftdsError(f"{where}.eval_split must be validation or heldout, got {self.eval_split!r}")
        if self.max_steps == 0:
            raise PeftdsError(f"{where}.max_steps must be -1 (off) or >= 1, got 0")
        if self.stop_epoch is not None and self.stop_epoch > self.epochs:
            raise PeftdsError(f"{where}.stop_epoch ({self.stop_epoch}) is past train.epochs ({self.epochs})")
        if self.stop_epoch is not None and self.max_steps > 0:
            raise PeftdsError(f"{where}.stop_epoch needs an epoch schedule: set train.max_steps=-1")
        if self.length_buckets is not None and (not self.length_buckets or min(self.length_buckets) < 1):
            raise PeftdsError(f"{where}.length_buckets must be positive lengths, got {self.length_buckets}")


@dataclass(frozen=True)
class SearchConfig(Section):
    section = "search"
    n: int = setting(100, "designs sampled per option", ge=1)
    epochs: int = setting(3, "training epochs per trial", ge=1)
    task_set: str = setting("glue", "conf/task_set/<name>.yaml: the tasks a design is scored on")
    tasks: list[str] | None = setting(None, "explicit task list (overrides task_set)")
    seed: int = setting(0, "sampling seed: every draw is reproducible from (seed, stage, option, index)")
    paired: bool = setting(True, "design i of every option shares every draw the option does not fix")
    min_ok: float = setting(0.5, "designs with every task ok an option needs: a count, or a share of n if < 1", gt=0)
    bootstrap: int = setting(2000, "bootstrap resamples for an option's 95% interval", ge=1)
    max_draws: int = setting(200, "redraws per sample index before an option counts as exhausted", ge=1)
    batch_size: int | None = setting(None, "trials handed to the launcher at once (null: launcher's default)", ge=1)
    retry_failed: bool = setting(False, "on resume, re-run trials recorded as failed")
    trial_threads: int | None = setting(None, "torch threads per trial (null: torch's default)", ge=1)
    gpu_slots: int | None = setting(
        None,
        "GPUs for trials: hydra/launcher=joblib one per worker; submitit_slurm one per job, this many at once",
        ge=1,
    )
    save_params: bool = setting(False, "keep each trial's trained parameters")
    report: bool = setting(True, "write report.md + plots into every stage dir when it ends")
    dir: str | None = setting(None, "search dir (null: outputs/search/<stage>/run-<hash>); an existing one resumes")
    # the stage decision (peftds.search.decision): search keys only, so trial ids stay those of a full stage
    tolerance: float = setting(0.5, "δ*: a difference of option means (score points) too small to matter", ge=0.0)
    alpha: float = setting(0.05, "error rate of a stage's verdict (over all option pairs and looks)", gt=0.0, lt=1.0)
    sequential: bool = setting(True, "decide a stage in looks and stop at a decided/equivalent verdict")
    first_designs: int = setting(3, "designs per option at a stage's first look", ge=2)
    round_growth: float = setting(1.5, "designs per option grow by this factor from one look to the next", gt=1.0)
    on_tie: str = setting(
        "leader",
        "an equivalent/unresolved stage: the next space keeps the leader, or leaves the dimension open",
        choices=("leader", "open"),
    )
    cheap_epochs: int | None = setting(
        None,
        "multi-fidelity looks: every design trained this many epochs, a random share continued to search.epochs",
        ge=1,
    )
    continue_share: float = setting(0.5, "share of each look's designs continued to full fidelity", gt=0.0, le=1.0)
    # racing (peftds.search.racing): search keys only, so trial ids stay those of a full-fidelity stage
    racing: bool = setting(False, "race a stage's options: stop sampling options clearly behind the leader")
    racing_delta: float = setting(0.05, "error rate of a whole race (split over options and rounds)", gt=0.0, lt=1.0)
    racing_method: str = setting("t", "interval of an option's mean in a race", choices=("t", "hoeffding", "bernstein"))
    racing_round_size: int = setting(2, "designs each surviving option gets per round", ge=1)
    racing_min_designs: int = setting(3, "designs every option gets in the first round", ge=2)


@dataclass(frozen=True)
class BenchDataConfig(Section):
    section = "bench.data"
    tasks: list[str] = setting(["sst2", "cola", "rte"], "tasks whose full training sets are measured")
    batch_size: int = setting(32, "batch size of the batching schemes", ge=1)
    max_len: int | None = setting(None, "fixed-padding length (null: the task's max_source_len)", ge=1)
    mega_batches: int | None = setting(None, "length-grouping mega-batch factor (null: the sampler's default)", ge=1)
    seed: int = setting(0, "shuffling seed")
    time_tasks: list[str] = setting(["sst2", "rte"], "tasks whose epoch time is measured per scheme")
    time_samples: int = setting(256, "training examples of a timed epoch", ge=1)


@dataclass(frozen=True)
class BenchEvalConfig(Section):
    section = "bench.eval"
    samples: int = setting(256, "dev examples of the task", ge=1)
    batch_size: int = setting(64, "evaluation batch size", ge=1)
    run: str | None = setting(None, "a trained run dir to load (null: the backbone, fine-tuned briefly)")
    train_steps: int = setting(400, "full fine-tuning steps before timing (so a random model emits label words)", ge=0)
    train_batch_size: int = setting(16, "batch size of those steps", ge=1)
    train_lr: float = setting(3e-3, "learning rate of those steps", gt=0.0)


BENCH_VARIANTS = ("design", "peft_lora", "floor", "full", "forward")


@dataclass(frozen=True)
class BenchConfig(Section):
    section = "bench"
    batch_size: int = setting(8, "batch of the timed steps", ge=1)
    source_len: int = setting(64, "source length of the random batch", ge=1)
    target_len: int = setting(8, "target length (text-to-text models)", ge=1)
    steps: int = setting(10, "timed rounds (the median is reported)", ge=1)
    warmup: int = setting(3, "untimed rounds first", ge=0)
    seed: int = setting(0, "seed of the random batch")
    lr: float = setting(1e-4, "AdamW learning rate of the timed steps", gt=0.0)
    device: str = setting("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    bf16: bool | str = setting("auto", "bf16 autocast: auto | true | false")
    threads: int | None = setting(1, "CPU torch threads while timing (null: torch's default)", ge=1)
    variants: list[str] = setting(list(BENCH_VARIANTS), "variants timed side by side")
    designs: list[str] = setting([], "more designs timed in the same run (names or YAML paths)")
    lora_alpha: float = setting(16, "alpha of the peft LoRA comparison", gt=0.0)
    compile: bool = setting(False, "also time the torch.compile'd step of compile_variants")
    compile_mode: str | None = setting(None, "torch.compile mode (null: default)")
    compile_variants: list[str] = setting(["design"], "variants compiled when compile=true")
    check_outputs: bool = setting(True, "compare compiled and eager outputs on the bench batch")
    memory: bool = setting(True, "one more step per variant measures its peak memory")
    epoch: bool = setting(False, "`peftds bench` also runs the bench-data report")
    out: str | None = setting(None, "JSON path (null: <run dir>/<command>.json)")
    data: BenchDataConfig = setting(BenchDataConfig(), "`peftds bench-data` settings")
    eval: BenchEvalConfig = setting(BenchEvalConfig(), "`peftds bench-eval` settings")

    def check(self, where: str) -> None:
        for key, names in (("variants", self.variants), ("compile_variants", self.compile_variants)):
            bad = [v for v in names if v not in BENCH_VARIANTS]
            if bad:
                raise PeftdsError(f"{where}.{key}: unknown variant(s) {bad} (known: {', '.join(BENCH_VARIANTS)})")
        if isinstance(self.bf16, str) and self.bf16 != "auto":
            raise PeftdsError(f"{where}.bf16 must be auto, true or false, got {self.bf16!r}")


SECTIONS: dict[str, type[Section]] = {
    cls.section: cls for cls in (BudgetConfig, ModelConfig, DataConfig, TrainConfig, SearchConfig, BenchConfig)
}


@dataclass(frozen=True)
class CompareConfig(Section):
    section = "compare"
    name: str = setting("default", "the comparison's name: its default dir is outputs/compare/<name>")
    dir: str | None = setting(None, "comparison dir (null: outputs/compare/<name>); an existing one resumes")
    designs: list[str] = setting(
        ["full", "adapter", "prefix", "lora", "bitfit@p0_1", "pa", "mam", "unipelt", "spindle"],
        "table rows: design names or YAML paths, each optionally @<budget option> or @<fraction> (bitfit@p0_1)",
    )
    tasks: list[str] | None = setting(None, "table columns: explicit task list (overrides task_set)")
    task_set: str = setting("glue", "conf/task_set/<name>.yaml: the tasks when compare.tasks is null")
    seeds: list[int] = setting([1, 2, 3], "training seeds of every (design, task); the table pairs runs by seed")
    lr: dict[str, float] = setting({}, "learning rate of some designs (design -> lr, e.g. {full: 1e-4}), else train.lr")
    columns: str = setting("score", "one column per task score, or per task metric", choices=("score", "metrics"))
    average: bool = setting(True, "an average column (over the tasks some design learns)")
    digits: int = setting(1, "decimals of the table's numbers", ge=0, le=4)
    alpha: float = setting(0.05, "significance level of the best-vs-second marks", gt=0.0, lt=1.0)
    bootstrap: int = setting(1000, "paired bootstrap resamples over dev examples (0: off)", ge=0)
    published: bool = setting(True, "paper rows (peftds/compare/published.yaml) where the setting matches")
    dry: bool = setting(False, "list the runs, their count and estimated GPU-hours; train nothing")
    batch_size: int | None = setting(None, "runs handed to the launcher at once (null: by launcher)", ge=1)
    threads: int | None = setting(None, "torch threads per run (null: torch's default)", ge=1)
    gpu_slots: int | None = setting(
        None,
        "GPUs for trials: hydra/launcher=joblib one per worker; submitit_slurm one per job, this many at once",
        ge=1,
    )
    save_params: bool = setting(False, "keep each run's trained parameters (full fine-tuning: the whole model)")
    retry_failed: bool = setting(False, "on resume, run again the runs recorded as failed")


SECTIONS[CompareConfig.section] = CompareConfig


EXPORT_FORMATS = ("peft", "merged")


@dataclass(frozen=True)
class ExportConfig(Section):
    section = "export"
    format: str = setting(
        "peft",
        "peft: a LoRA adapter for peft.PeftModel; merged: a plain transformers checkpoint",
        choices=EXPORT_FORMATS,
    )
    out: str | None = setting(None, "the folder to write (required)")
    overwrite: bool = setting(False, "replace a non-empty out folder")

    def check(self, where: str) -> None:
        if not self.out:
            raise PeftdsError(f"{where}.out is required: the folder to write (out=<dir>)")


SECTIONS[ExportConfig.section] = ExportConfig

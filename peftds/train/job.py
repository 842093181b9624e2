"""`peftds train`: fine-tune one design on one task with the HF Trainer and record the run.

Every run writes ``result.json`` into its Hydra run dir as it goes (status running -> ok / failed /
interrupted, per-epoch metrics) and the trained strategy parameters (peftds.design.apply save format).
The same job function serves search trials (peftds.search.runner), which read its returned record.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftds.config.compose import compose, conf_dir, expand_file_overrides, with_design_model
from peftds.data.batching import Collator, default_buckets
from peftds.data.loading import choose_source, encode, load_splits, references
from peftds.data.metrics import compute_metrics
from peftds.design.apply import build, save_trained
from peftds.errors import PeftdsError
from peftds.files import DESIGN_DIR, PREDICTIONS_FILE, git_commit, versions
from peftds.model.backbones import hf_config, is_seq2seq
from peftds.run_config import RunConfig
from peftds.train.evaluation import predict
from peftds.train.record import RunRecord, peak_memory_mb, summary_line, write_predictions
from peftds.train.setup import load_tokenizer, quiet_libraries
from peftds.train.trainer import Diverged, trainer_classes

CLI_COMMANDS: dict[str, Any] = {}


def hydra_run_dir() -> Path | None:
    """The run dir of the Hydra job this process runs (None outside a Hydra job)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:
        return None


def check_task_fits_model(run: RunConfig) -> None:
    """A generation task (XSum, WMT) needs a text-to-text model."""
    if run.task is not None and run.task.kind == "generation" and not is_seq2seq(run.model):
        raise PeftdsError(
            f"task '{run.task.name}' needs a text-to-text model; model {run.model.name} ({run.model.arch}) "
            "is encoder-only"
        )


def check_design_fits(run: RunConfig) -> None:
    """The design can be realised on the model (group sizes, budget), checked on the meta device as
    `peftds inspect` does: an infeasible design is one line before any weights or data load."""
    build(run.model, run.design_config, run.budget.fraction, num_labels=2, seed=run.seed, device="meta")


def train_job(run: RunConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Train run.design on run.task; returns the result record (also written to result.json)."""
    start = time.time()
    run_dir = Path(run_dir or hydra_run_dir() or run.train.output_dir or "outputs/train/manual")
    rec = RunRecord(
        run_dir,
        task=run.task.name if run.task else None,
        design=run.design.name,
        seed=run.seed,
        config=run.config,
        versions=versions(),
        git_commit=git_commit(),
        trial=run.trial,
    )
    try:
        _train(run, run_dir, rec, start)
    except KeyboardInterrupt:
        rec.update(status="interrupted", error="interrupted by the user", wall_time_s=time.time() - start)
        raise
    except Diverged as e:
        rec.update(status="diverged", error=str(e), wall_time_s=time.time() - start)
    except PeftdsError as e:
        rec.update(status="failed", error=str(e), wall_time_s=time.time() - start)
    except Exception as e:  # a crashed trial must not lose its record (the search goes on)
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", wall_time_s=time.time() - start)
        if not run.train.catch_errors:
            raise
    return rec.data


def _train(run: RunConfig, run_dir: Path, rec: RunRecord, start: float) -> None:
    from transformers import TrainingArguments, set_seed

    quiet_libraries()
    tc = run.train
    seed = run.seed
    set_seed(seed)
    task = run.task
    if task is None:
        raise PeftdsError("no task selected (task=<name>)")
    check_task_fits_model(run)
    seq2seq = is_seq2seq(run.model)
    tokenizer = load_tokenizer(run.model, seq2seq)
    splits = load_splits(task, run.data)
    eval_split = tc.eval_split
    if eval_split not in splits:
        raise PeftdsError(f"train.eval_split '{eval_split}' is not a split of task '{task.name}' ({list(splits)})")
    kind = "seq2seq" if seq2seq else "encoder"
    src_len = int(tc.max_source_len or task.max_source_len)
    tgt_len = int(tc.max_target_len or task.max_target_len)
    train_ds = encode(task, tokenizer, splits["train"], kind, src_len, tgt_len)
    # The scored split, plus the task's other dev splits when reporting on dev (MNLI mismatched).
    extra = [sp for sp in task.eval_splits[1:] if sp in splits] if eval_split == "validation" else []
    evals = {}
    for name in [eval_split, *extra]:
        raw = splits[name]  # dev splits are already subsampled by data.max_eval_samples
        evals[name] = (encode(task, tokenizer, raw, kind, src_len, tgt_len), references(task, raw))
    eval_ds, _refs = evals[eval_split]

    num_labels = None if seq2seq else task.num_labels
    built = build(run.model, run.design_config, run.budget.fraction, num_labels=num_labels, seed=seed)
    model, plan = built.model, built.plan
    if seq2seq and model.config.vocab_size < len(tokenizer):
        raise PeftdsError(f"model vocab ({model.config.vocab_size}) is smaller than the tokenizer ({len(tokenizer)})")
    rec.update(
        model=run.model.name,
        plan={
            "compact": plan.compact(),
            "digest": plan.digest(),
            "groups": plan.groups,
            "tuned": plan.tuned,
            "allocation": plan.allocation,
            "strategies": plan.strategies,
            "layers": [{"group": lp.group, **lp.modules} for lp in plan.layers],
        },
        backbone_params=plan.backbone_params,
        budget_params=plan.budget_params,
        trainable_params=built.trainable_params,
        head_params=built.head_params,
        trainable_pct=100.0 * built.trainable_params / plan.backbone_params,
        train_examples=len(train_ds),
        eval_split=eval_split,
        eval_examples=len(eval_ds),
        epochs=[],
    )

    epochs: list[dict[str, Any]] = []

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        metrics, scored = {}, []
        for name, (ds, ys) in evals.items():
            preds = predict(m, task, ds, tokenizer, seq2seq, int(tc.eval_batch_size))
            got = compute_metrics(task, preds, ys)
            metrics.update(got if name == eval_split else {f"{name}_{k}": v for k, v in got.items()})
            if name == eval_split:
                scored = preds
        epochs.append({"epoch": len(epochs) + 1, **metrics})
        best = max(epochs, key=lambda e: e["score"])
        if tc.save_predictions and best is epochs[-1]:  # the predictions behind the reported (best) score
            write_predictions(run_dir / PREDICTIONS_FILE, scored, evals[eval_split][1], best["epoch"])
        rec.update(epochs=epochs, best=best, last=epochs[-1], score=best["score"])
        return metrics

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported() if tc.bf16 == "auto" else bool(tc.bf16)
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=int(tc.batch_size),
        per_device_eval_batch_size=int(tc.eval_batch_size),
        gradient_accumulation_steps=int(tc.grad_accum),
        learning_rate=float(tc.lr),
        lr_scheduler_type=str(tc.scheduler),
        warmup_steps=float(tc.warmup_ratio),  # a float in [0, 1) is a ratio of total steps
        weight_decay=float(tc.weight_decay),
        num_train_epochs=float(tc.epochs),
        max_steps=int(tc.max_steps),
        eval_strategy="epoch" if int(tc.max_steps) <= 0 else "no",
        save_strategy="no",
        logging_steps=int(tc.logging_steps),
        logging_first_step=True,  # the divergence rule compares against the loss before any update
        logging_nan_inf_filter=False,
        report_to=list(tc.report_to) if not isinstance(tc.report_to, str) else tc.report_to,
        seed=seed,
        bf16=bf16,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=not tc.progress,
        torch_compile=False,  # train.compile: PeftdsTrainer compiles the training forward itself
    )
    trainer_cls, guard = trainer_classes()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=Collator(
            tokenizer.pad_token_id,
            seq2seq,
            tc.get("length_buckets") or (default_buckets(src_len) if tc.get("compile") else None),
        ),
        lengths=train_ds["length"],
        eval_fn=eval_fn,
        length_grouped=bool(tc.length_grouped),
        compile=bool(tc.get("compile", False)),
        callbacks=[guard(tc.divergence, tc.lr)],
    )
    t0 = time.time()
    out = trainer.train()
    train_time = time.time() - t0
    if trainer.compiled is not None:  # compilations over the run: one per batch shape used
        rec.update(compile=trainer.compiled.stats())
    if int(tc.max_steps) > 0 or not epochs:  # step-limited runs evaluate once at the end
        trainer.evaluate()
    real_tokens = sum(train_ds["length"])
    epochs_done = float(trainer.state.epoch or 0)
    if tc.save_params:
        save_trained(built, run_dir / DESIGN_DIR, extra={"task": task.name})
    rec.update(
        status="ok",
        train_loss=out.training_loss,
        loss_history=[[h["step"], h["loss"]] for h in trainer.state.log_history if "loss" in h],
        train_runtime_s=train_time,
        steps=trainer.state.global_step,
        train_tokens_per_s=real_tokens * epochs_done / max(train_time, 1e-9),
        peak_memory_mb=peak_memory_mb(),
        wall_time_s=time.time() - start,
    )


def run_hydra(task_fn: Callable[[Any], Any], argv: list[str], job_name: str) -> Any:
    """Run `task_fn(cfg)` as a Hydra app (run dir, logging, launchers) with these overrides."""
    import hydra

    argv = with_design_model(argv)
    run = RunConfig.from_composed(compose(argv))  # check first: a bad value is one line, before any Hydra output
    if run.model.pretrained and run.model.name_or_path:
        hf_config(run.model, allow_fallback=False)  # an unreachable model (e.g. offline) fails here, in one line
    if run.task is not None:
        check_task_fits_model(run)
    check_design_fits(run)
    if run.task is not None:
        choose_source(run.task, run.data)  # so do missing data files
    result: dict[str, Any] = {}

    @hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")
    def _app(cfg: Any) -> Any:
        result["value"] = task_fn(cfg)
        return result["value"]

    old = sys.argv
    sys.argv = [f"peftds-{job_name}", *expand_file_overrides(argv), f"hydra.job.name={job_name}"]
    try:
        _app()
    finally:
        sys.argv = old
    return result.get("value")


def cmd_train(argv: list[str]) -> int:
    rec = run_hydra(lambda cfg: train_job(RunConfig.from_composed(cfg)), argv, "train")
    if rec is None:
        return 1
    print(summary_line(rec))
    return 0 if rec.get("status") == "ok" else 1


CLI_COMMANDS["train"] = cmd_train

"""The HF Trainer as peftds uses it: length-grouped batches, task evaluation, a loss guard, resumable
checkpoints of the trainable parameters only (peftds.train.checkpoint)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftds.data.batching import LengthGroupedBatchSampler
from peftds.train.checkpoint import (
    PreemptionGuard,
    load_trainable,
    save_trainable,
    write_checkpoint_state,
    writing_checkpoint,
)
from peftds.train.compile import CompiledModel

if TYPE_CHECKING:
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class Diverged(RuntimeError):
    """The training loss diverged: non-finite, or far above its first logged value."""


def divergence(loss: float, first: float | None, factor: float) -> str | None:
    """Why a logged training loss counts as diverged (None when it does not).

    The rule: a non-finite loss, or a loss above `factor` times the first logged loss (the loss of
    step 1, logged before any update moved the model) and above 1, so that a tiny first loss does not
    make ordinary noise look like divergence.
    """
    if not math.isfinite(loss):
        return f"non-finite training loss ({loss})"
    if first is not None and math.isfinite(first) and loss > factor * max(first, 1e-12) and loss > 1.0:
        return f"training loss {loss:.3g} is over {factor:g}x the first logged loss {first:.3g}"
    return None


def epoch_complete(epoch: float | None) -> bool:
    """Whether HF's fractional epoch counter (epoch + batches done / batches per epoch) sits on an epoch end."""
    return epoch is not None and epoch > 0 and abs(epoch - round(epoch)) < 1e-9


def trainer_classes() -> tuple[type[Trainer], type[TrainerCallback], type[TrainerCallback]]:
    """(PeftdsTrainer, LossGuard, CheckpointTrigger), made on first use so that importing peftds stays light."""
    from transformers import Trainer, TrainerCallback

    class PeftdsTrainer(Trainer):
        """HF Trainer with length-grouped batches and task-specific evaluation."""

        def __init__(
            self,
            *args: Any,
            lengths: Sequence[int] | None = None,
            eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
            length_grouped: bool = True,
            compile: bool = False,
            checkpoint_dir: Path | None = None,
            bookkeeping: Callable[[], dict[str, Any]] | None = None,
            **kw: Any,
        ):
            super().__init__(*args, **kw)
            self._lengths, self._eval_fn, self._length_grouped = lengths, eval_fn, length_grouped
            # resumable checkpoints go to <checkpoint_dir>/checkpoints (None: none), with the run's bookkeeping
            self.checkpoint_dir, self.bookkeeping = checkpoint_dir, bookkeeping
            self.checkpoints_saved, self.checkpoint_seconds = 0, 0.0  # what checkpoints cost this run
            # train.compile: training forwards go through torch.compile (static shapes: one compilation per
            # batch shape, counted; peftds.train.compile.CompiledModel); evaluation stays eager.
            self.compiled = None
            if compile:
                self.compiled = CompiledModel(self.model)

        def compute_loss(
            self, model: nn.Module, inputs: dict[str, torch.Tensor | Any], *args: Any, **kwargs: Any
        ) -> torch.Tensor | tuple[torch.Tensor, Any]:
            if self.compiled is not None and model is self.model and model.training:
                model = self.compiled
            return super().compute_loss(model, inputs, *args, **kwargs)

        def get_train_dataloader(self) -> torch.utils.data.DataLoader:
            if not self._length_grouped:
                return super().get_train_dataloader()
            sampler = LengthGroupedBatchSampler(
                self._lengths, self.args.per_device_train_batch_size, seed=self.args.seed
            )
            loader = torch.utils.data.DataLoader(
                self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=0
            )
            return self.accelerator.prepare(loader)

        def evaluate(
            self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
        ) -> dict[str, float]:
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in self._eval_fn(self.model).items()}
            metrics["epoch"] = self.state.epoch
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            self.model.train()
            return metrics

        def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
            """A resumable checkpoint in HF's own layout (so HF's resume restores optimizer, scheduler, RNG
            states and the data position), but with the trainable parameters only."""
            if self.checkpoint_dir is None:
                return
            t0 = time.perf_counter()
            with writing_checkpoint(self.checkpoint_dir) as tmp:
                save_trainable(self.model, tmp)
                self._save_optimizer_and_scheduler(str(tmp))
                self._save_scaler(str(tmp))
                self._save_rng_state(str(tmp))
                self.state.save_to_json(str(tmp / "trainer_state.json"))
                loader = self.callback_handler.train_dataloader
                steps_per_epoch = max(math.ceil(len(loader) / self.args.gradient_accumulation_steps), 1)
                book = {"global_step": self.state.global_step, "epoch": self.state.epoch}
                book.update(steps_per_epoch=steps_per_epoch, **(self.bookkeeping() if self.bookkeeping else {}))
                write_checkpoint_state(tmp, book)
            self.checkpoints_saved += 1
            self.checkpoint_seconds += time.perf_counter() - t0

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
            load_trainable(model or self.model, Path(resume_from_checkpoint))

    class LossGuard(TrainerCallback):
        """Stop at the first logged loss that diverges (HF would otherwise train on NaNs or explode)."""

        def __init__(self, factor: float, lr: float) -> None:
            self.factor, self.lr, self.first = factor, lr, None

        def on_log(
            self,
            args: TrainingArguments,
            state: TrainerState,
            control: TrainerControl,
            logs: dict[str, float] | None = None,
            **kw: Any,
        ) -> None:
            loss = (logs or {}).get("loss")
            if loss is None:
                return
            why = divergence(loss, self.first, self.factor)
            if why:
                raise Diverged(f"{why} at step {state.global_step}: lower the learning rate (train.lr={self.lr:g})")
            if self.first is None:
                self.first = loss

    class CheckpointTrigger(TrainerCallback):
        """When to save a resumable checkpoint and stop: after every epoch (after its evaluation), every
        `every_steps` optimizer steps (0: never), at the end of a step-limited run, and at the end of the
        step during which `guard` received a preemption signal (then the run stops without evaluating the
        partial epoch). Training stops after epoch `stop_epoch` (None: the whole schedule). The end of the
        whole schedule is saved only with `keep_final` (else nothing is left to continue)."""

        def __init__(
            self, guard: PreemptionGuard, every_steps: int = 0, stop_epoch: int | None = None, keep_final: bool = False
        ) -> None:
            self.guard, self.every_steps, self.stop_epoch = guard, int(every_steps), stop_epoch
            self.keep_final = keep_final

        def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            if self.guard.received is not None and not epoch_complete(state.epoch):
                control.should_save = control.should_training_stop = True
            elif self.every_steps and state.global_step % self.every_steps == 0:
                control.should_save = True
            elif args.max_steps > 0 and state.global_step >= state.max_steps:
                control.should_save = self.keep_final

        def on_epoch_end(
            self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
        ) -> None:
            if not epoch_complete(state.epoch):  # stopped mid-epoch (saved at the end of its last step)
                control.should_evaluate = control.should_save = False
                return
            control.should_save = self.keep_final or state.global_step < state.max_steps  # after its evaluation
            stop = self.stop_epoch is not None and round(state.epoch or 0) >= self.stop_epoch
            if stop or self.guard.received is not None:
                control.should_training_stop = True

    return PeftdsTrainer, LossGuard, CheckpointTrigger

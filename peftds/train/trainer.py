"""The HF Trainer as peftds uses it: length-grouped batches, task evaluation, a loss guard."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from peftds.data.batching import LengthGroupedBatchSampler
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


def trainer_classes() -> tuple[type[Trainer], type[TrainerCallback]]:
    """(PeftdsTrainer, LossGuard), made on first use so that importing peftds stays light."""
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
            **kw: Any,
        ):
            super().__init__(*args, **kw)
            self._lengths, self._eval_fn, self._length_grouped = lengths, eval_fn, length_grouped
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

    return PeftdsTrainer, LossGuard

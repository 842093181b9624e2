"""The one way peftds compiles a model: ``torch.compile`` with static shapes, compilations counted.

:func:`compile_model` compiles with ``dynamic=False``, so each batch shape compiles once; with length
buckets (:class:`peftds.data.batching.Collator`) the number of compilations is the number of shapes used,
counted by :class:`CompileCounter` from dynamo's own counters. :class:`CompiledModel` (used by
``train.compile=true`` and ``peftds bench bench.compile=true``) wraps it, counts compilations per batch
shape, and falls back to eager (saying why) when a shape it already compiled compiles again, instead of
recompiling on every step.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class CompileCounter:
    """Dynamo's compilation counters between :meth:`start` (or construction) and now."""

    def __init__(self) -> None:
        self.start()

    @staticmethod
    def now() -> dict[str, int]:
        """Dynamo's counters since the process started (zeros where dynamo is missing)."""
        try:
            from torch._dynamo.utils import counters
        except ImportError:  # pragma: no cover
            return {"frames": 0, "graphs": 0, "graph_breaks": 0}
        return {
            "frames": int(counters["frames"]["total"]),
            "graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
        }

    def start(self) -> None:
        """Count from now on."""
        self.base = self.now()

    def delta(self) -> dict[str, int]:
        """Compilations since :meth:`start`."""
        now = self.now()
        return {k: now[k] - self.base[k] for k in now}


def compile_model(model: nn.Module, mode: str | None = None, recompile_limit: int = 64) -> nn.Module:
    """``torch.compile`` with static shapes: every new batch shape compiles once (bounded by the length
    buckets in use), never a dynamic-shape graph. Raises dynamo's recompile limit to ``recompile_limit``
    so bucketed shapes never silently fall back to eager. Returns the compiled module (it shares the
    model's parameters)."""
    import torch._dynamo

    conf = torch._dynamo.config
    # The limits' names changed across torch versions: raise whichever this torch has.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(conf, name):
            setattr(conf, name, max(int(getattr(conf, name)), recompile_limit))
    if hasattr(conf, "accumulated_recompile_limit"):
        conf.accumulated_recompile_limit = max(int(conf.accumulated_recompile_limit), 4 * recompile_limit)
    elif hasattr(conf, "accumulated_cache_size_limit"):
        conf.accumulated_cache_size_limit = max(int(conf.accumulated_cache_size_limit), 4 * recompile_limit)
    kwargs: dict[str, Any] = {"dynamic": False}
    if mode:
        kwargs["mode"] = mode
    return torch.compile(model, **kwargs)


class CompiledModel:
    """A model's forward through :func:`compile_model`, with its compilations counted per batch shape.

    Call it like the model. Each new (shape signature, train/eval, grad mode) compiles once; if a
    signature it has already compiled compiles again (a guard that fails on every call, e.g. on Python
    state that changes between forwards), the recompilation is counted and, past
    ``max_recompiles``, the wrapper falls back to the eager model for good and says why in
    :meth:`stats` (``fallback``) instead of recompiling on every step.
    """

    def __init__(self, model: nn.Module, mode: str | None = None, max_recompiles: int = 0) -> None:
        self.model = model
        self.compiled = compile_model(model, mode=mode)
        self.counter = CompileCounter()
        self.max_recompiles = int(max_recompiles)
        self.signatures: dict[tuple, int] = {}
        self.recompiles = 0
        self.fallback: str | None = None

    @staticmethod
    def signature(model: nn.Module, kwargs: Mapping[str, Any]) -> tuple:
        """What one compilation is specialised on: tensor shapes and dtypes, train mode, grad mode."""
        shapes = tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in kwargs.items() if torch.is_tensor(v)))
        return shapes, model.training, torch.is_grad_enabled()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fallback:
            return self.model(*args, **kwargs)
        key = self.signature(self.model, kwargs)
        before = self.counter.delta()["frames"]
        out = self.compiled(*args, **kwargs)
        grew = self.counter.delta()["frames"] - before
        if key in self.signatures and grew:
            self.recompiles += grew
            if self.recompiles > self.max_recompiles:
                self.fallback = (
                    f"recompiled {self.recompiles}x for batch shapes it had already compiled (a guard fails "
                    f"on every call; run with TORCH_LOGS=recompiles for the reason): running eager"
                )
                warnings.warn(f"peftds compile: {self.fallback}", RuntimeWarning, stacklevel=2)
        self.signatures[key] = self.signatures.get(key, 0) + grew
        return out

    def stats(self) -> dict[str, Any]:
        """Compilation counts, batch shapes and source lengths seen, recompiles, the fallback reason."""
        src = sorted({dict((k, shp) for k, shp, _ in sig[0]).get("input_ids", (0, 0))[-1] for sig in self.signatures})
        return {
            **self.counter.delta(),
            "batch_shapes": len(self.signatures),
            "source_lengths": src,
            "recompiles": self.recompiles,
            "fallback": self.fallback,
        }

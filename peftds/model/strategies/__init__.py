"""The four PEFT strategies (SPEC §4), one module each, behind one registry."""

from __future__ import annotations

from collections.abc import Collection

from peftds.errors import PeftdsError
from peftds.model.strategies.adapter import Adapter
from peftds.model.strategies.base import AttnShape, LayerShape, Strategy
from peftds.model.strategies.bitfit import BitFit
from peftds.model.strategies.lora import LoRA
from peftds.model.strategies.prefix import Prefix

STRATEGIES: dict[str, Strategy] = {s.name: s for s in (Adapter(), Prefix(), BitFit(), LoRA())}
# Order in which strategies are applied inside a layer: BitFit first (it touches the raw Linears),
# then LoRA (wraps q/v), then adapters and prefixes (hooks around sublayers / attention).
APPLY_ORDER = ("bitfit", "lora", "adapter", "prefix")
NAMES = ("adapter", "prefix", "bitfit", "lora")  # canonical order in designs and labels
LETTERS = {name: STRATEGIES[name].letter for name in NAMES}
LETTERS_NOTE = ", ".join(f"{STRATEGIES[n].letter} = {type(STRATEGIES[n]).__name__}" for n in NAMES)


def strategy_label(subset: Collection[str]) -> str:
    """A subset of strategies as letters in canonical order, e.g. ('lora', 'adapter') -> 'A+L'; '-' if empty."""
    return "+".join(LETTERS[s] for s in NAMES if s in subset) or "-"


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise PeftdsError(f"unknown strategy '{name}' (known: {', '.join(NAMES)})") from None


__all__ = [
    "APPLY_ORDER",
    "LETTERS",
    "LETTERS_NOTE",
    "NAMES",
    "STRATEGIES",
    "AttnShape",
    "LayerShape",
    "Strategy",
    "get_strategy",
    "strategy_label",
]

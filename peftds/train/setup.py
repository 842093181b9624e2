"""Library set-up a training job shares with the benchmarks: quiet logging, the tokenizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peftds.data.loading import prepare_tokenizer
from peftds.errors import PeftdsError
from peftds.model.backbones import resolve_path

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def quiet_libraries(load_bars: bool = True) -> None:
    """Silence expected library chatter: datasets' map bars, transformers' load reports (e.g.
    "classifier MISSING"), rouge-score's "Using default tokenizer."; optionally the weight-loading bars."""
    import logging

    import datasets
    import transformers

    datasets.disable_progress_bar()
    logging.getLogger("absl").setLevel(logging.WARNING)
    transformers.logging.set_verbosity_error()
    if not load_bars:
        transformers.utils.logging.disable_progress_bar()


def load_tokenizer(model_cfg: Mapping[str, Any], seq2seq: bool) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    name = model_cfg.get("tokenizer") or model_cfg.get("name_or_path")
    if not name:
        raise PeftdsError("model config has neither model.tokenizer nor model.name_or_path for the tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(resolve_path(name))
    except OSError as e:
        raise PeftdsError(f"cannot load tokenizer '{name}': {str(e).splitlines()[0]}") from e
    return prepare_tokenizer(tok, "seq2seq" if seq2seq else "encoder")

"""Task definitions (SPEC §6): what a task's rows look like, how it is phrased and how it is scored.

A task is a plain YAML mapping in ``conf/task/<name>.yaml`` (Hydra config group ``task``). Keys:

``name``            task name (equals the file name)
``kind``            ``classification`` | ``regression`` | ``generation``
``input_columns``   source columns; encoder models get them as (text, text_pair)
``label_column``    class index (classification), float (regression) or target text (generation)
``num_labels``      classes (classification), 1 (regression), 0 (generation)
``label_words``     text-to-text target word of each class index (classification only)
``template``        text-to-text source, ``str.format`` over the row's columns ("rte sentence1: {sentence1} ...")
``metrics``         every metric reported (names known to :mod:`peftds.data.metrics`)
``score``           the metric(s) whose mean is the task's score (the value that enters a GLUE average)
``hub``             ``{path, name, splits: {our_split: hub_split}}``
``local``           local files relative to the data folder: ``{train: ..., validation: ..., [validation_mismatched]}``,
                    or ``{file: ..., validation_size: N, split_seed: S}`` (one file split deterministically)
``generation``      ``{num_beams, max_source_len, max_target_len}``
optional: ``regression_range`` / ``regression_step`` (text-to-text regression targets, STS-B: [0, 5], 0.2),
``flatten`` (a dict-valued column whose keys become columns, WMT ``translation``),
``normalize_diacritics`` (columns whose Romanian cedilla letters become comma-below letters).

Also here: :func:`rank_labels`, the exact label-word ranking that scores text-to-text classification.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftds.config.compose import conf_dir as config_root
from peftds.config.compose import reject_unknown_keys
from peftds.config.schema import Section, convert, setting
from peftds.data.metrics import METRICS
from peftds.errors import PeftdsError

KINDS = ("classification", "regression", "generation")


@dataclass(frozen=True)
class GenerationConfig(Section):
    """A task's `generation:` settings (token limits apply to every task; beams to generation tasks)."""

    num_beams: int = setting(1, "beams of generation (XSum, WMT)", ge=1)
    max_source_len: int = setting(128, "input token limit", ge=1)
    max_target_len: int = setting(8, "target token limit", ge=1)


@dataclass
class Task:
    name: str
    kind: str
    input_columns: list[str]
    label_column: str
    num_labels: int
    template: str
    metrics: list[str]
    score: list[str]
    label_words: list[str] | None = None
    hub: dict[str, Any] = field(default_factory=dict)
    local: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    regression_range: tuple[float, float] = (0.0, 5.0)
    regression_step: float = 0.2
    flatten: str | None = None
    normalize_diacritics: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Any) -> Task:
        """Build from a plain task config; checks the fields and names the culprit."""
        if cfg is None:
            raise PeftdsError("task config is empty")
        cfg = dict(cfg)
        name = cfg.get("name") or "<unnamed>"
        known = {f for f in cls.__dataclass_fields__}
        reject_unknown_keys(cfg, known, f"task '{name}'")
        missing = [
            k
            for k in ("name", "kind", "input_columns", "label_column", "num_labels", "template", "metrics", "score")
            if cfg.get(k) is None
        ]
        if missing:
            raise PeftdsError(f"task '{name}': missing key(s) {missing}")
        for key in ("input_columns", "metrics", "score", "normalize_diacritics"):
            if isinstance(cfg.get(key), str):
                cfg[key] = [cfg[key]]
        if cfg.get("regression_range") is not None:
            cfg["regression_range"] = tuple(float(x) for x in cfg["regression_range"])
        for key in ("hub", "local"):
            cfg[key] = dict(cfg.get(key) or {})
        cfg["generation"] = convert(GenerationConfig, cfg.get("generation"), "task.generation").to_dict()
        if cfg.get("normalize_diacritics") is None:
            cfg["normalize_diacritics"] = []
        task = cls(**cfg)
        task._check()
        return task

    def _check(self) -> None:

        n = self.name
        if self.kind not in KINDS:
            raise PeftdsError(f"task '{n}': kind '{self.kind}' is not one of {', '.join(KINDS)}")
        for m in list(self.metrics) + list(self.score):
            if m not in METRICS:
                raise PeftdsError(f"task '{n}': unknown metric '{m}' (known: {', '.join(METRICS)})")
        if not set(self.score) <= set(self.metrics):
            raise PeftdsError(f"task '{n}': score metrics {self.score} must be among metrics {self.metrics}")
        if self.kind == "classification":
            if self.num_labels < 2:
                raise PeftdsError(f"task '{n}': classification needs num_labels >= 2, got {self.num_labels}")
            if not self.label_words or len(self.label_words) != self.num_labels:
                raise PeftdsError(f"task '{n}': label_words must list one word per class ({self.num_labels})")
            if len(set(self.label_words)) != len(self.label_words):
                raise PeftdsError(f"task '{n}': label_words must be distinct: {self.label_words}")
        elif self.kind == "regression":
            if self.num_labels != 1:
                raise PeftdsError(f"task '{n}': regression needs num_labels 1, got {self.num_labels}")
            if self.regression_step <= 0:
                raise PeftdsError(f"task '{n}': regression_step must be > 0")
        if not self.input_columns:
            raise PeftdsError(f"task '{n}': input_columns is empty")
        for col in self.input_columns:
            if "{" + col + "}" not in self.template:
                raise PeftdsError(f"task '{n}': template '{self.template}' does not use input column '{col}'")

    # ------------------------------------------------------------------ conveniences
    @property
    def num_beams(self) -> int:
        return int(self.generation.get("num_beams", 1))

    @property
    def max_source_len(self) -> int:
        return int(self.generation.get("max_source_len", 128))

    @property
    def max_target_len(self) -> int:
        return int(self.generation.get("max_target_len", 8))

    @property
    def eval_splits(self) -> list[str]:
        """Dev splits that :func:`peftds.data.loading.load_splits` returns: ``validation`` first (the scored one)."""
        hub_splits = (self.hub.get("splits") or {}).keys()
        return ["validation", *sorted(s for s in hub_splits if s.startswith("validation_"))]

    def source_text(self, row: dict[str, Any]) -> str:
        """Text-to-text source of one row (the template filled with the row's columns)."""
        return self.template.format(**row)

    def format_regression(self, value: float) -> str:
        """Text-to-text regression target: ``value`` rounded to ``regression_step`` ("3.4")."""
        lo, hi = self.regression_range
        step = self.regression_step
        v = min(max(float(value), lo), hi)
        v = round(math.floor((v - lo) / step + 0.5 + 1e-9) * step + lo, 6)  # half-up, robust to float error
        decimals = max(0, len(f"{step:.6f}".rstrip("0").split(".")[1]))
        return f"{v:.{decimals}f}"

    def target_text(self, row: dict[str, Any]) -> str:
        """Text-to-text target of one row: label word, rounded score, or the target text."""
        y = row[self.label_column]
        if self.kind == "classification":
            return self.label_words[int(y)]
        if self.kind == "regression":
            return self.format_regression(y)
        return str(y)

    def candidates(self) -> list[str]:
        """Targets to rank for text-to-text scoring: the label words, or (regression) every grid value
        of ``regression_range`` in ``regression_step`` ("0.0", "0.2", ..., "5.0")."""
        if self.kind == "classification":
            return list(self.label_words)
        if self.kind == "regression":
            lo, hi = self.regression_range
            n = round((hi - lo) / self.regression_step)
            return [self.format_regression(lo + i * self.regression_step) for i in range(n + 1)]
        raise PeftdsError(f"task '{self.name}' is a generation task: it has no label candidates to rank")

    def candidate_to_prediction(self, index: int) -> int | float:
        """Map a ranked candidate index to a prediction: class index, or the regression grid value."""
        if self.kind == "classification":
            return int(index)
        return float(self.candidates()[int(index)])

    def decode(self, text: str) -> int | float | str:
        """Map generated text back to a prediction.

        classification: the class whose label word equals the stripped text (case-insensitive,
        spaces around '_' ignored), else -1 (counted wrong); regression: the first number in the
        text clipped to ``regression_range`` (unparsable -> range midpoint); generation: the text.
        """
        import re

        t = text.strip()
        if self.kind == "classification":
            norm = re.sub(r"\s*_\s*", "_", t.lower())
            for i, w in enumerate(self.label_words):
                if norm == w.lower():
                    return i
            return -1
        if self.kind == "regression":
            lo, hi = self.regression_range
            m = re.search(r"-?\d+(?:\s*\.\s*\d+)?", t)
            if not m:
                return (lo + hi) / 2
            return min(max(float(m.group(0).replace(" ", "")), lo), hi)
        return t


# ---------------------------------------------------------------------- loading configs
def _read_yaml(path: Path) -> Any:
    with open(path) as fh:
        return yaml.safe_load(fh)


def known_tasks(conf_dir: str | Path | None = None) -> list[str]:
    d = Path(conf_dir or config_root()) / "task"
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_task(name: str, conf_dir: str | Path | None = None) -> Task:
    """Read ``<conf_dir>/task/<name>.yaml`` (conf_dir defaults to the repository's ``conf/``)."""
    conf_dir = Path(conf_dir or config_root())
    path = conf_dir / "task" / f"{name}.yaml"
    if not path.is_file():
        known = known_tasks(conf_dir)
        raise PeftdsError(f"unknown task '{name}' (known tasks: {', '.join(known) or 'none'}; looked in {path.parent})")
    cfg = _read_yaml(path)
    task = Task.from_config(cfg)
    if task.name != name:
        raise PeftdsError(f"task file {path} declares name '{task.name}', expected '{name}'")
    return task


def task_set(name: str, conf_dir: str | Path | None = None) -> list[str]:
    """Task names of ``<conf_dir>/task_set/<name>.yaml`` (``tasks: [...]``); every name is checked."""
    conf_dir = Path(conf_dir or config_root())
    path = conf_dir / "task_set" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (conf_dir / "task_set").glob("*.yaml"))
        raise PeftdsError(f"unknown task set '{name}' (known task sets: {', '.join(known) or 'none'})")
    cfg = _read_yaml(path)
    tasks = list(cfg.get("tasks") or [])
    if not tasks:
        raise PeftdsError(f"task set {path} has no `tasks:` list")
    known = known_tasks(conf_dir)
    bad = [t for t in tasks if t not in known]
    if bad:
        raise PeftdsError(f"task set '{name}' names unknown task(s) {bad} (known tasks: {', '.join(known)})")
    return [str(t) for t in tasks]


# ---------------------------------------------------------------------- label-word ranking
def rank_labels(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    label_word_ids: Sequence[Sequence[int]],
    length_normalize: bool = False,
    return_scores: bool = False,
) -> Any:
    """Text-to-text classification by ranking label words (SPEC §6).

    For an HF encoder-decoder ``model`` (T5, BART), score every candidate target sequence
    ``label_word_ids[c]`` (eos-terminated token ids, see :func:`peftds.data.loading.label_word_ids`) by its
    teacher-forced log-likelihood ``sum_t log p(y_t | y_<t, x)`` and return the argmax class index per
    example (LongTensor ``[batch]``; ties -> lowest index). ``length_normalize=True`` divides by the
    candidate's token count. The encoder runs ONCE; the decoder runs once per candidate on the whole
    batch. Runs under ``torch.no_grad``; the caller sets ``model.eval()``.
    ``return_scores=True`` also returns the float ``[batch, n_candidates]`` score matrix.
    """
    import torch

    if not label_word_ids:
        raise PeftdsError("rank_labels: no label word sequences given")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    bsz = input_ids.shape[0]
    device = input_ids.device
    with torch.no_grad():
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        scores = torch.empty(bsz, len(label_word_ids), dtype=torch.float32, device=device)
        for c, ids in enumerate(label_word_ids):
            if len(ids) == 0:
                raise PeftdsError(f"rank_labels: label word sequence {c} is empty")
            labels = torch.tensor(list(ids), dtype=torch.long, device=device).unsqueeze(0).expand(bsz, -1)
            decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
            out = model(
                encoder_outputs=encoder_outputs,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
                return_dict=True,
            )
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            tok = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1).sum(-1)
            scores[:, c] = tok / len(ids) if length_normalize else tok
    pred = scores.argmax(dim=-1)
    return (pred, scores) if return_scores else pred

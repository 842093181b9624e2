"""The model tests run tiny random models: one intra-op thread for each of them."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def tiny_model_threads(one_thread):
    """Every test module of this folder runs with the root `one_thread` fixture."""
    yield

"""The divergence rule of the training loop (peftds.train.trainer)."""

from peftds.train.trainer import divergence


def test_divergence_rule():
    assert divergence(float("nan"), 0.7, 1000) and divergence(float("inf"), None, 1000)
    assert divergence(701.0, 0.7, 1000) and not divergence(699.0, 0.7, 1000)
    assert not divergence(5.0, 0.7, 1000) and not divergence(0.9, 1e-6, 1000)  # a loss <= 1 never diverges
    assert not divergence(1e9, None, 1000)  # no reference yet: only non-finite counts

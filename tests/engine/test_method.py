"""The regulariser's schedules (section 2.4's α, decayed), as `engine.method.l2_weight` gives them."""

from __future__ import annotations

import pytest

from engine.method import l2_weight


def test_linear_decay_falls_from_alpha_towards_zero_over_the_run() -> None:
    assert [l2_weight(0.8, "linear", i, 4) for i in range(4)] == pytest.approx([0.8, 0.6, 0.4, 0.2])


def test_step_decay_is_the_notebooks_staircase_gone_from_iteration_250() -> None:
    """The MSE notebook takes α/5 off every 50 iterations, whatever the run's length."""
    weights = {i: l2_weight(1.0, "step", i, 400) for i in (0, 49, 50, 199, 200, 249, 250, 399)}
    assert weights == pytest.approx({0: 1.0, 49: 1.0, 50: 0.8, 199: 0.4, 200: 0.2, 249: 0.2, 250: 0.0, 399: 0.0})


def test_inverse_decay_is_alpha_over_2i_plus_1() -> None:
    assert [l2_weight(0.9, "inverse", i, 400) for i in range(3)] == pytest.approx([0.9, 0.3, 0.18])


def test_unknown_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="linear, step, inverse"):
        l2_weight(1.0, "cosine", 0, 10)  # type: ignore[arg-type]

"""engine/limits.py: the numbers and the advice that CLI, engine and bot share."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine.errors import EngineError
from engine.limits import MAX_SEED, check_seed, out_of_memory_advice, smaller_size


@pytest.mark.parametrize(("size", "factor", "smaller"), [
    ((1024, 1024), 16, (640, 640)),
    ((768, 512), 16, (480, 320)),
    ((1000, 600), 8, (632, 376)),
    ((16, 32), 16, (16, 16)),
])
def test_smaller_size_has_about_40_percent_of_the_pixels_in_whole_tokens(size, factor, smaller):
    assert smaller_size(size, factor) == smaller


def test_out_of_memory_advice_names_the_size_tried_and_one_to_try():
    assert out_of_memory_advice((1024, 768), 16, "host") == (
        "out of host memory at 1024x768; try 640x480 or smaller, or fewer cutouts")


@pytest.mark.parametrize("seed", [0, MAX_SEED])
def test_seeds_at_the_ends_of_the_range_are_accepted(seed):
    assert check_seed(seed) == seed


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1])
def test_seeds_outside_the_range_are_refused_naming_it(seed):
    with pytest.raises(EngineError, match="from 0 to 9,007,199,254,740,992"):
        check_seed(seed)


def test_importing_the_limits_imports_nothing_heavy():
    code = "import sys, engine.limits; print(sorted(m for m in ('torch', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

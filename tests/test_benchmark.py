"""bench/benchmark.py runs, on the tiny models: its rows, ratios and out-of-memory handling.
It asserts nothing about speed (that is what the script prints, not what a test checks)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "benchmark.py"
QUICK = ["--tiny", "--device", "cpu", "--size", "32", "--cutn", "2", "--iterations", "1", "--rounds", "1",
         "--warmup", "1", "--compile", "off", "--json"]


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(benchmark, capsys, *extra: str) -> dict:
    assert benchmark.main([*QUICK, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_each_batch_is_a_row_with_its_throughput_and_the_first_job_s_image_against_it_alone(
        benchmark, capsys) -> None:
    report = run(benchmark, capsys, "--batches", "1,2")
    one, two = report["rows"]
    assert (one["batch"], two["batch"]) == (1, 2) and not one["out_of_memory"]
    assert one["psnr_vs_alone_db"] == math.inf  # the reference itself
    assert two["psnr_vs_alone_db"] >= 40
    for row in (one, two):
        assert row["seconds_per_image"] == pytest.approx(row["seconds_per_iteration"] * 400 / row["batch"])
        assert row["images_per_hour"] == pytest.approx(3600 / row["seconds_per_image"])
        assert row["warmup_seconds"] > 0 and row["peak_memory_mib"] > 0
    table = benchmark._table(report["rows"])
    assert table.splitlines()[1].split()[:2] == ["off", "1"] and "1.00x" in table.splitlines()[1]


def test_a_batch_that_runs_out_of_memory_is_reported_and_no_larger_one_is_tried(
        benchmark, capsys, monkeypatch) -> None:
    from engine.generate import Generator

    step = Generator.step

    def step_or_run_out(self, jobs):
        if len(jobs) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        step(self, jobs)

    monkeypatch.setattr(Generator, "step", step_or_run_out)
    report = run(benchmark, capsys, "--batches", "1,4,8")
    assert [(row["batch"], row["out_of_memory"]) for row in report["rows"]] == [(1, False), (4, True)]
    assert "out of memory" in benchmark._table(report["rows"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for real")
def test_the_gpu_check_says_there_is_no_gpu_and_runs_nothing(tmp_path) -> None:
    import os
    import subprocess
    import sys

    check = SCRIPT.parent / "gpu_check.sh"
    done = subprocess.run(["bash", str(check), str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU here: nothing to check" in done.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["device.txt"]

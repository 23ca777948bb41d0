"""What the loop's tests share: image distance, running jobs through a `Batch`, and a
fresh torch.compile per test."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from engine.batching import Batch, BatchJob
from engine.generate import GenerationRequest, GenerationResult, Generator, Progress


def psnr(a: Image.Image, b: Image.Image) -> float:
    """PSNR of two 8-bit RGB images in dB (inf: the same pixels)."""
    x, y = (np.asarray(image, dtype=np.float64) for image in (a, b))
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def run_batch(generator: Generator, requests: list[GenerationRequest],
              on_progress: Callable[[Progress], None] | None = None) -> list[GenerationResult]:
    """All `requests` joined to one batch and stepped to their ends; fails unless each
    ended with a result."""
    ended: list[list[Any]] = [[] for _ in requests]
    batch = Batch(generator, capacity=len(requests))
    for request, sink in zip(requests, ended):
        batch.join(BatchJob(request, sink.append, on_progress))
    while batch.busy:
        batch.step()
    results = [sink[0] for sink in ended]
    assert all(isinstance(result, GenerationResult) for result in results), results
    return results


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """Each test compiles from scratch: dynamo's caches (and its recompile limit) are per
    code object, shared by every Generator. A module that compiles imports it and names it
    in `pytest.mark.usefixtures`."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

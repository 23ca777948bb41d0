"""A runner that pretends to generate, for fast tests of the bot (`vqgan-clip worker --fake`).

No torch, no models: each step sleeps `seconds_per_iteration` once, however many jobs it
advances (as a batched step costs about one iteration on a GPU), and each job ends with a
solid-colour PNG of its size, the colour taken from its seed. It serves up to `capacity`
jobs at once (`--fake --batch N`) with the real runner's semantics: each job has its own
progress and result, a cancelled job leaves at the next step and the others go on. Never
for users.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine import protocol as p
from engine.errors import Cancelled, PromptError
from engine.serving import JobEvents, ProgressCallback, run_alone

__all__ = ["FakeJobRunner"]


@dataclass(eq=False)
class _FakeJob:
    submit: p.Submit
    events: JobEvents
    seed: int
    started: float
    iteration: int = 0

    @property
    def colour(self) -> tuple[int, int, int]:
        return self.seed % 256, (self.seed // 256) % 256, (self.seed // 65536) % 256


def _image(size: tuple[int, int], colour: tuple[int, int, int], kind: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, kind, **({"quality": 70} if kind == "JPEG" else {}))
    return buffer.getvalue()


class FakeJobRunner:
    """A `BatchRunner` of `capacity` that sleeps instead of computing."""

    def __init__(self, seconds_per_iteration: float = 0.01, capacity: int = 1) -> None:
        if not 1 <= capacity <= p.MAX_CAPACITY:
            raise ValueError(f"capacity must be 1..{p.MAX_CAPACITY}, not {capacity}")
        self.seconds_per_iteration = seconds_per_iteration
        self.capacity = capacity
        self.device = "fake"
        self.vqgan = "fake"
        self.clip = "fake"
        self._jobs: list[_FakeJob] = []

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def can_start(self, job: p.Submit) -> bool:
        return len(self._jobs) < self.capacity

    def start(self, job: p.Submit, events: JobEvents) -> None:
        if not job.prompts and not job.image_prompts:
            events.end(PromptError("give at least one prompt"))
            return
        seed = job.seed if job.seed is not None else int.from_bytes(os.urandom(4), "big")
        self._jobs.append(_FakeJob(job, events, seed, time.monotonic()))

    def step(self) -> None:
        for job in [job for job in self._jobs if job.events.should_cancel()]:
            self._jobs.remove(job)
            job.events.end(Cancelled())
        if not self._jobs:
            return
        time.sleep(self.seconds_per_iteration)
        for job in list(self._jobs):
            job.iteration += 1
            self._after_iteration(job)

    def _after_iteration(self, job: _FakeJob) -> None:
        submit = job.submit
        if submit.progress_every and (job.iteration % submit.progress_every == 0
                                      or job.iteration == submit.iterations):
            side = max(1, min(submit.preview_size, 64))
            job.events.progress(p.Progress(submit.job, job.iteration, submit.iterations,
                                           1.0 / job.iteration, time.monotonic() - job.started,
                                           _image((side, side), job.colour, "JPEG")))
        if job.iteration < submit.iterations:
            return
        self._jobs.remove(job)
        job.events.end(p.Done(submit.job, _image((submit.width, submit.height), job.colour, "PNG"),
                              job.seed, time.monotonic() - job.started, submit.iterations,
                              submit.width, submit.height))

    def run(self, job: p.Submit, on_progress: ProgressCallback,
            should_cancel: Callable[[], bool]) -> p.Done:
        """One job alone (the runner must be idle)."""
        return run_alone(self, job, on_progress, should_cancel)

    def free_memory(self) -> None:
        pass

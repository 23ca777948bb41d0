"""Continuous batching: several jobs of one size optimised as one batch (issue 13).

`Generator.step(jobs)` runs one iteration for any list of jobs of one size: one decode of
their latents, one CLIP forward of all their cutouts, and each job's own loss and Adam step.
`Batch` decides, iteration by iteration, which jobs are in that list:

- Joining: a job joins at an iteration boundary, when nothing runs, or when it has the
  running jobs' size (width and height rounded to the VQGAN's factor), the batch has room
  (`capacity`, `ENGINE_BATCH`) and the memory guard says it fits. The caller (the worker)
  offers jobs in the order they came, and stops at the first that cannot join, so no job
  is overtaken: a job of another size waits until the batch drains, and meanwhile nothing
  new joins (no starvation).
- Leaving: a job leaves after its last iteration, or at the boundary after it was
  cancelled; the others go on with a smaller batch.
- Memory (`MemoryGuard`, CUDA only): each step is measured from the caching allocator's
  counters (host-side: no sync): what the process held from the GPU at the step's peak
  (reserved), and each job's share (what the step allocated above what was allocated before
  it). A job joins a running batch only if the last step's peak held plus one job's share
  fits in `MEMORY_SHARE` of the GPU; until one step of its size was measured, it waits. A
  job whose size nothing runs at starts alone. Held, not allocated, is the base because
  replayed CUDA graphs allocate nothing: their activations live in the graphs' private
  pool, which the allocated counters stop counting once recording ends.
- Running out of memory in a step: the step is undone (nothing of it was applied: the jobs'
  random generators are put back and their gradients dropped), the newest job is set
  aside, keeping its state, and the step is tried again with the others; the batch size
  that failed is not tried again at that size. Set-aside jobs go back first when there is
  room. Only a job that does not fit alone fails ("out of GPU memory at ...; try ...").
- Any other error in a step of several jobs: each job is stepped alone; those that fail
  alone fail, the others go on.
- Compiled steps (engine/compiling.py): an error other than out of memory turns compiling
  off and the same step is run again eagerly, from the same random state.

Each job's events go to its `BatchJob`: `on_progress` at its progress points, `on_end`
exactly once with the result or the exception that ended it (`Cancelled`, an
`EngineError`, or a bug). Everything runs on the caller's thread; `should_cancel` may be
set from another.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from engine.errors import Cancelled, OutOfMemoryError
from engine.generate import GenerationRequest, GenerationResult, Generator, JobState, Progress
from engine.limits import (
    AUTO_BATCH_CPU,
    AUTO_BATCH_CUDA,
    BATCH_AUTO,
    MAX_BATCH,
    BatchSetting,
    out_of_memory_advice,
)

__all__ = ["MEMORY_SHARE", "Batch", "BatchJob", "MemoryGuard", "capacity_for", "is_out_of_memory"]

log = logging.getLogger(__name__)

#: The share of the GPU's memory the batch may plan to fill. The rest is for what the
#: counters do not see (the CUDA context, other processes) and for fragmentation.
MEMORY_SHARE = 0.9

Size = tuple[int, int]


def capacity_for(setting: BatchSetting, device: torch.device | str) -> int:
    """`ENGINE_BATCH` on `device`: a number as it is, `auto` the device's measured default
    (`engine.limits.AUTO_BATCH_CPU`, `AUTO_BATCH_CUDA`)."""
    if setting == BATCH_AUTO:
        return AUTO_BATCH_CUDA if torch.device(device).type == "cuda" else AUTO_BATCH_CPU
    if isinstance(setting, bool) or not isinstance(setting, int) or not 1 <= setting <= MAX_BATCH:
        raise ValueError(f"the batch must be {BATCH_AUTO} or 1..{MAX_BATCH}, not {setting!r}")
    return setting


def _never() -> bool:
    return False


@dataclass(eq=False)
class BatchJob:
    """A job handed to the batch, and where its events go."""

    request: GenerationRequest
    on_end: Callable[[GenerationResult | BaseException], None]  # once: the result, or why not
    on_progress: Callable[[Progress], None] | None = None
    should_cancel: Callable[[], bool] = field(default=_never)
    state: JobState | None = None  # once it joined
    order: int = 0  # when it joined: set-aside jobs come back oldest first


def is_out_of_memory(error: BaseException) -> bool:
    """The GPU's (torch.OutOfMemoryError) or the host's memory ran out. torch raises a plain
    RuntimeError when the CPU allocator fails, recognisable only by its message."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        type(error) is RuntimeError and "DefaultCPUAllocator: can't allocate memory" in str(error))


def _memory_kind(error: BaseException) -> str:
    return "GPU" if isinstance(error, torch.OutOfMemoryError) else "host"


class MemoryGuard:
    """Whether one more job of a size fits beside the running ones, from what steps at that
    size were seen to take. `budget` None (the CPU) never refuses.

    The counters: `allocated` now and its `peak`, and the peak `held` (reserved: what the
    process took from the GPU, its caching allocator's free blocks and CUDA graphs' pools
    included; the allocated peak where not given), all since `reset_peak`."""

    def __init__(self, budget: int | None, allocated: Callable[[], int] = lambda: 0,
                 peak: Callable[[], int] = lambda: 0, reset_peak: Callable[[], None] = lambda: None,
                 held: Callable[[], int] | None = None) -> None:
        self.budget = budget
        self._allocated, self._peak, self._reset_peak = allocated, peak, reset_peak
        self._held = held if held is not None else peak
        self._last_peak: dict[Size, int] = {}  # the last step's peak held, at each size
        self._per_job: dict[Size, tuple[float, float]] = {}  # (bytes, cutouts) per job: the most seen

    @classmethod
    def for_device(cls, device: torch.device) -> MemoryGuard:
        if device.type != "cuda":
            return cls(None)
        total = torch.cuda.get_device_properties(device).total_memory
        return cls(int(total * MEMORY_SHARE), lambda: torch.cuda.memory_allocated(device),
                   lambda: torch.cuda.max_memory_allocated(device),
                   lambda: torch.cuda.reset_peak_memory_stats(device),
                   lambda: torch.cuda.max_memory_reserved(device))

    def fits(self, size: Size, cutn: int, running: int) -> bool:
        """Would a job at `size` with `cutn` cutouts fit beside `running` jobs of that size?
        A job's share is scaled up by its cutouts where it has more than those measured."""
        if self.budget is None or running == 0:
            return True
        seen = self._per_job.get(size)
        if seen is None:
            return False  # no step at this size measured yet: wait for one
        per_job, cutouts = seen
        return self._last_peak[size] + per_job * max(1.0, cutn / cutouts) <= self.budget

    @contextlib.contextmanager
    def measure(self, size: Size, cutns: list[int]) -> Iterator[None]:
        """Around one step of jobs at `size` with these cutouts: records its peak."""
        if self.budget is None:
            yield
            return
        self._reset_peak()
        before = self._allocated()
        yield
        peak = self._peak()
        self._last_peak[size] = max(peak, self._held())
        per_job = (peak - before) / len(cutns)
        seen = self._per_job.get(size)
        if seen is None or per_job > seen[0]:
            self._per_job[size] = (per_job, sum(cutns) / len(cutns))


class Batch:
    """The jobs being optimised together, all of one size: `join` them, `step` them."""

    def __init__(self, generator: Generator, capacity: int = 1, memory: MemoryGuard | None = None) -> None:
        if capacity < 1:
            raise ValueError("the batch capacity must be at least 1")
        self.generator = generator
        self.capacity = capacity
        self.memory = memory if memory is not None else MemoryGuard.for_device(generator.device)
        self.running: list[BatchJob] = []  # in the order they joined
        self.aside: list[BatchJob] = []  # started, set aside after running out of memory
        self.limits: dict[Size, int] = {}  # per size: the batch size that ran out of memory, less one
        self._order = itertools.count()

    # -- joining ---------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.running or self.aside)

    @property
    def size(self) -> Size | None:
        """The size every running job has (None when none runs)."""
        jobs = self.running or self.aside
        return jobs[0].state.size if jobs and jobs[0].state is not None else None

    def room(self, size: Size) -> int:
        """The most jobs of `size` a step may take."""
        return min(self.capacity, self.limits.get(size, self.capacity))

    def can_join(self, size: Size, cutn: int) -> bool:
        """Whether a job of `size` (rounded) with `cutn` cutouts can join at the next step."""
        if not self.busy:
            return True
        return (not self.aside and size == self.size and len(self.running) < self.room(size)
                and self.memory.fits(size, cutn, len(self.running)))

    def join(self, job: BatchJob) -> None:
        """Start `job`: its targets, mask and starting latent (which may take a while, and may
        fail: then it ends at once). It takes part from the next step."""
        try:
            job.state = self.generator.start(job.request)
        except Exception as error:  # a bad request, out of memory, a bug: this job only
            self._fail(job, error)
            return
        job.order = next(self._order)
        self.running.append(job)

    # -- one iteration ---------------------------------------------------------------------

    def step(self) -> None:
        """One iteration boundary: cancelled jobs leave, set-aside jobs come back where there
        is room, every running job advances one iteration, then reports and finishes."""
        for job in [job for job in self.running + self.aside if job.should_cancel()]:
            self._remove(job)
            job.on_end(Cancelled())
        self._bring_back()
        advanced = self._advance(list(self.running))
        for job in advanced:
            self._after_iteration(job)

    def _bring_back(self) -> None:
        self.aside.sort(key=lambda job: job.order)
        while self.aside:
            job = self.aside[0]
            assert job.state is not None
            size = job.state.size
            if self.running and not (len(self.running) < self.room(size)
                                     and self.memory.fits(size, job.request.cutn, len(self.running))):
                return
            self.aside.pop(0)
            self.running.append(job)
            self.running.sort(key=lambda job: job.order)

    def _advance(self, jobs: list[BatchJob]) -> list[BatchJob]:
        """One iteration for `jobs`; returns those that advanced (the others failed or were
        set aside)."""
        advanced: list[BatchJob] = []
        while jobs:
            failure, moved = self._try_step(jobs)
            advanced += moved
            jobs = [job for job in jobs if job not in moved]
            if failure is None:
                break
            if self.generator.compiler.enabled and not is_out_of_memory(failure):
                self.generator.compiler.fall_back(failure)
                failure.__traceback__ = None
                continue  # the same step again, eagerly
            if is_out_of_memory(failure) and len(jobs) > 1:
                self._set_aside(jobs[-1], len(jobs), failure)
                jobs = jobs[:-1]
                continue
            if len(jobs) == 1:
                self._remove(jobs[0])
                self._fail(jobs[0], failure)
                break
            # Something other than memory failed a step of several jobs: find whose.
            log.warning("a step of %d jobs failed (%s: %s); stepping each alone",
                        len(jobs), type(failure).__name__, failure)
            del failure
            failed = 0
            for job in jobs:
                alone, moved = self._try_step([job])
                advanced += moved
                if alone is not None:
                    failed += 1
                    self._remove(job)
                    self._fail(job, alone)
            size = self.size
            if not failed and size is not None:
                # Each was fine alone: batching them was not. One at a time from now on at
                # this size; the others wait aside, keeping their state.
                self.limits[size] = 1
                for job in [job for job in jobs if job in self.running][1:]:
                    self.running.remove(job)
                    self.aside.append(job)
            break
        return advanced

    def _try_step(self, jobs: list[BatchJob]) -> tuple[BaseException | None, list[BatchJob]]:
        """Step `jobs` once: (None, jobs), or (the exception, the jobs that advanced anyway).
        What did not complete is undone: each job that did not advance gets its random
        generator back and no gradient. After running out of memory the exception's
        traceback is dropped (its frames hold the step's tensors) and memory is freed."""
        states = [job.state for job in jobs if job.state is not None]
        assert len(states) == len(jobs), "only started jobs step"
        before = [(state.iteration, state.generator.get_state()) for state in states]
        try:
            self._step(states)
            return None, jobs
        except Exception as error:
            failure = error
        moved = []
        for job, state, (iteration, random_state) in zip(jobs, states, before):
            if state.iteration > iteration:  # its Adam step was taken before the failure
                moved.append(job)
            else:
                state.generator.set_state(random_state)
                state.optimizer.zero_grad(set_to_none=True)
        if is_out_of_memory(failure):
            failure.__traceback__ = failure.__context__ = None
            self.generator.free_memory()
        return failure, moved

    def _step(self, states: list[JobState]) -> None:
        compiler = self.generator.compiler
        size = states[0].size
        cutns = [state.request.cutn for state in states]
        compiler.step_begin()
        with self.memory.measure(size, cutns):
            compiler.time_first_step((len(states), size, tuple(cutns)), lambda: self.generator.step(states))

    def _set_aside(self, job: BatchJob, batch: int, failure: BaseException) -> None:
        assert job.state is not None
        size = job.state.size
        self.limits[size] = min(self.limits.get(size, batch), batch - 1)
        log.warning("out of %s memory with %d jobs of %dx%d: at most %d from now on; job set aside",
                    _memory_kind(failure), batch, size[0], size[1], batch - 1)
        self.running.remove(job)
        self.aside.append(job)

    def _after_iteration(self, job: BatchJob) -> None:
        state = job.state
        assert state is not None
        try:
            if job.on_progress is not None and state.progress_due:
                self.generator.report(state, job.on_progress)
            if not state.done:
                return
            self._remove(job)
            result = self.generator.finish(state)
        except Exception as error:
            self._remove(job)
            self._fail(job, error)
            return
        job.state = None
        job.on_end(result)

    # -- leaving ---------------------------------------------------------------------------

    def _remove(self, job: BatchJob) -> None:
        for jobs in (self.running, self.aside):
            if job in jobs:
                jobs.remove(job)

    def _fail(self, job: BatchJob, error: BaseException) -> None:
        """End `job` with `error`; running out of memory becomes the advice users read."""
        state, job.state = job.state, None
        if is_out_of_memory(error):
            size = state.size if state is not None else self.generator.size_of(job.request)
            error = OutOfMemoryError(out_of_memory_advice(size, int(self.generator.models.vqgan.factor),
                                                          _memory_kind(error)))
        job.on_end(error)

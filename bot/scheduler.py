"""The fair queue in front of the engine: round-robin across users, FIFO within a user.

One GPU is shared by everyone, so a member who queues ten images must not make everyone
else wait behind all ten. The next job is taken from the user *served least recently*
among those with queued jobs (users never served yet come first, in the order their
oldest queued job arrived); within a user, jobs run in the order they were submitted.
Example: A queues A1 A2 A3, then B queues B1 -> A1, B1, A2, A3.

`position()` and `queued_jobs()` replay exactly the rule `next()` uses, so the "#2" a
member is told is the order things will run in (until someone new joins the queue); the
ETAs (`bot.eta`) play the same order forward.

A job handed out by `next()`/`pop_nowait()` has left the queue but still *runs* for its
user, and keeps its place under the per-user cap, until the runner calls `finish()`
with its id, whatever became of it (done, failed, cancelled, interrupted). Any number of
jobs may be running at once.

In memory and pure asyncio; the store is the source of truth across restarts: the app
calls `restore()` with the queued jobs from the store at start-up.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from bot import render
from bot.errors import UserError
from bot.jobs import Job


class QueueFull(UserError):
    """The job was not queued. `str(e)` is a message fit to show the user."""

    def __init__(self, message: str, *, user_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.user_id = user_id


@dataclass
class _Entry:
    seq: int  # submission order, global: the FIFO and the tie-breaker
    job: Job


_NEVER_SERVED = -1


class Scheduler:
    """Round-robin queue of `Job`s with a per-user cap.

    `max_queued_per_user` (MAX_QUEUED_PER_USER) is how many jobs one user may have
    waiting or running: queued ones plus those handed out and not yet `finish`ed. None
    disables the cap. `max_queued_total` optionally bounds how many wait in the queue.
    """

    def __init__(
        self, max_queued_per_user: int | None = 3, *, max_queued_total: int | None = None
    ) -> None:
        if max_queued_per_user is not None and max_queued_per_user < 1:
            raise ValueError("max_queued_per_user must be at least 1 (or None for no cap)")
        self.max_queued_per_user = max_queued_per_user
        self.max_queued_total = max_queued_total
        self._queues: dict[int, deque[_Entry]] = {}
        self._entries: dict[str, _Entry] = {}
        self._running: dict[str, Job] = {}  # handed out, not yet finished
        self._last_served: dict[int, int] = {}
        self._serve_counter = itertools.count()
        self._submit_counter = itertools.count()
        self._available = asyncio.Event()
        #: Called (synchronously) whenever the queue moves: a job queued, taken, removed
        #: or finished. `bot.queue_notes` sets it to keep the waiting jobs' messages true;
        #: a callback rather than an import, so the queue knows nothing of messages.
        self.on_change: Callable[[], None] | None = None

    # ------------------------------------------------------------------ adding

    def check_capacity(self, user_id: int) -> None:
        """Raise `QueueFull` if `user_id` may not queue another job now.

        Call this before storing a job, so a refused request costs no quota.
        """
        cap = self.max_queued_per_user
        held = self.queued_count(user_id) + self.running_count(user_id)
        if cap is not None and held >= cap:
            raise QueueFull(render.queue_full_for_user(held), user_id=user_id)
        total = self.max_queued_total
        if total is not None and len(self._entries) >= total:
            raise QueueFull(render.queue_full(len(self._entries)), user_id=user_id)

    def submit(self, job: Job) -> int:
        """Queue a job; returns its 1-based position. Raises `QueueFull` over the caps."""
        if job.id in self._entries:
            raise ValueError(f"job {job.id} is already queued")
        self.check_capacity(job.user_id)
        self._append(job)
        position = self.position(job.id)
        assert position is not None
        return position

    def restore(self, jobs: Iterable[Job]) -> None:
        """Re-queue jobs after a restart, in the order given, ignoring the caps (they
        count towards them once queued: the user adds no more until enough have finished).

        Pass the store's queued jobs in creation order (`jobs_with_status(QUEUED)`), with
        jobs interrupted by the restart (`requeue_running()`) first to resume them first.
        Jobs already queued are skipped, so restoring twice is harmless.
        """
        for job in jobs:
            if job.id not in self._entries:
                self._append(job)

    def _append(self, job: Job) -> None:
        entry = _Entry(next(self._submit_counter), job)
        self._entries[job.id] = entry
        self._queues.setdefault(job.user_id, deque()).append(entry)
        self._available.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ taking

    def _key(self, user_id: int) -> tuple[int, int]:
        return (self._last_served.get(user_id, _NEVER_SERVED), self._queues[user_id][0].seq)

    def pop_nowait(self) -> Job | None:
        """Take the next job by the round-robin rule, or None if the queue is empty.

        The job counts as running for its user until `finish(job.id)`.
        """
        if not self._queues:
            self._available.clear()
            return None
        user_id = min(self._queues, key=self._key)
        queue = self._queues[user_id]
        entry = queue.popleft()
        if not queue:
            del self._queues[user_id]
        del self._entries[entry.job.id]
        self._running[entry.job.id] = entry.job
        self._last_served[user_id] = next(self._serve_counter)
        self._changed()
        return entry.job

    async def next(self) -> Job:
        """Wait until a job is queued, then take it (running until `finish`). Cancelling
        the wait takes nothing."""
        while True:
            job = self.pop_nowait()
            if job is not None:
                return job
            await self._available.wait()

    def remove(self, job_id: str) -> Job | None:
        """Take a queued job out (cancelled while waiting); None if it isn't queued."""
        entry = self._entries.pop(job_id, None)
        if entry is None:
            return None
        queue = self._queues[entry.job.user_id]
        queue.remove(entry)
        if not queue:
            del self._queues[entry.job.user_id]
        self._changed()
        return entry.job

    def finish(self, job_id: str) -> Job | None:
        """A job handed out has ended, however: it no longer counts against its user's cap.

        Returns the job, or None if it was not running (never handed out, or already
        finished): calling it for every job taken, on every path, is always safe.
        """
        job = self._running.pop(job_id, None)
        if job is not None:
            self._changed()
        return job

    # ------------------------------------------------------------------ looking

    def _run_order(self) -> Iterator[Job]:
        """The queued jobs in the order `next()` would hand them out, without taking any."""
        heap: list[tuple[int, int, int]] = []  # (last served, head seq, user)
        positions: dict[int, int] = {}
        for user_id in self._queues:
            last, head = self._key(user_id)
            heap.append((last, head, user_id))
            positions[user_id] = 0
        heapq.heapify(heap)
        # Simulated serve stamps continue after every real one, exactly as `pop_nowait`.
        stamps = itertools.count(self._peek_serve_counter())
        while heap:
            _, _, user_id = heapq.heappop(heap)
            queue = self._queues[user_id]
            index = positions[user_id]
            yield queue[index].job
            index += 1
            positions[user_id] = index
            if index < len(queue):
                heapq.heappush(heap, (next(stamps), queue[index].seq, user_id))

    def _peek_serve_counter(self) -> int:
        return max(self._last_served.values(), default=_NEVER_SERVED) + 1

    def queued_jobs(self) -> list[Job]:
        """All queued jobs in run order (for `/queue`)."""
        return list(self._run_order())

    def position(self, job_id: str) -> int | None:
        """1-based place in the run order (1 = next to start), or None if not queued."""
        if job_id not in self._entries:
            return None
        for place, job in enumerate(self._run_order(), start=1):
            if job.id == job_id:
                return place
        raise AssertionError("unreachable: every entry is in the run order")

    def queued_count(self, user_id: int | None = None) -> int:
        """Jobs waiting, in total or for one user."""
        if user_id is None:
            return len(self._entries)
        return len(self._queues.get(user_id, ()))

    def running_count(self, user_id: int | None = None) -> int:
        """Jobs handed out and not yet finished, in total or for one user."""
        if user_id is None:
            return len(self._running)
        return sum(1 for job in self._running.values() if job.user_id == user_id)

    def __len__(self) -> int:
        """Jobs waiting (running ones are not in the queue)."""
        return len(self._entries)

    def __contains__(self, job_id: object) -> bool:
        """Whether the job is waiting (not whether it is running)."""
        return job_id in self._entries


__all__ = ["QueueFull", "Scheduler"]

"""Which remote workers the bot may use: their heartbeats read, checked and judged.

Why apart from the backend (`bot.redis_backend`): whether a worker is live, draining,
refused or dead is bookkeeping over heartbeats and pings, with no Redis and no jobs in it;
the backend acts on the verdicts (it fails a dead worker's started jobs and takes its
claims back). So each rule is here, in one place, and logged once:
- a heartbeat the bot cannot read, or whose Ready the bot's `Expectation` refuses
  (another protocol version, other models), makes the worker refused: never used;
- a heartbeat gone (its TTL ran out) makes a live worker dead, unless Redis itself just
  came back (a restarted Redis has no heartbeats until the workers beat again): the
  backend says when that grace is over;
- a heartbeat from another process under the same name (`instance`) means the worker
  restarted: the old process's jobs died with it;
- no pong in time makes the process dead until that same process answers a ping (a new
  process under the name is welcome at once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from bot.worker_status import WorkerState, WorkerStatus
from engine import protocol as p
from engine.redis_layout import WORKER_MAX_BACKOFF, Expectation, Heartbeat, as_text, read_heartbeat

log = logging.getLogger("bot.redis_backend")

_SERVING = (WorkerState.LIVE, WorkerState.DRAINING)


@dataclass(frozen=True)
class Verdict:
    """What the backend must act on: `died` (fail its started jobs, take its claims back)
    or `restarted` (fail the jobs the old process, `instance`, started)."""

    name: str
    kind: Literal["died", "restarted"]
    why: str = ""
    instance: str = ""


@dataclass(eq=False)
class _Worker:
    name: str
    beat: Heartbeat | None = None
    state: WorkerState = WorkerState.LIVE
    note: str | None = None
    last_seen: float = 0.0
    present: bool = True
    #: The process that stopped answering pings: dead until it answers one.
    deaf_instance: str | None = None
    #: The process whose refusal was logged (each is logged once).
    logged: str | None = None


class WorkerBook:
    """Every worker name the bot has seen, and what it makes of each."""

    def __init__(self, expect: Expectation, clock: Callable[[], float] = time.time) -> None:
        self.expect = expect
        self.clock = clock
        self._workers: dict[str, _Worker] = {}
        #: The last Ready of a worker that was live: what `/status` shows after all died.
        self.last_ready: p.Ready | None = None

    def names(self) -> set[str]:
        return set(self._workers)

    def seen(self, name: str, fields: Mapping[bytes, bytes], *,
             connected_for: float) -> Verdict | None:
        """Take in one worker's heartbeat hash (empty: the key is gone); `connected_for`:
        seconds since the bot (re)connected to Redis, the grace a restarted Redis gets."""
        worker = self._workers.get(name)
        if not fields:
            if worker is None:
                return None
            worker.present = False
            ttl = worker.beat.ttl if worker.beat is not None else 0.0
            # Right after Redis came back, a worker may still be waiting out its backoff.
            if worker.state in _SERVING and connected_for >= ttl + WORKER_MAX_BACKOFF:
                return self._died(worker, f"its heartbeat expired (none for {ttl:g} s)")
            return None
        if worker is None:
            worker = self._workers[name] = _Worker(name)
        worker.present, worker.last_seen = True, self.clock()
        try:
            beat = read_heartbeat(fields)
        except p.ProtocolError as error:
            self._refuse(worker, as_text(fields.get(b"instance", b"")),
                         f"its heartbeat cannot be read: {error}")
            return None
        previous, worker.beat = worker.beat, beat
        verdict = None
        if previous is not None and previous.instance != beat.instance and worker.state in _SERVING:
            verdict = Verdict(name, "restarted", "it restarted", previous.instance)
        refusal = self.expect.refusal(beat.ready)
        if refusal is not None:
            self._refuse(worker, beat.instance, refusal)
            return verdict
        if worker.deaf_instance == beat.instance:
            return verdict  # stays dead until it answers a ping
        state = WorkerState.DRAINING if beat.draining else WorkerState.LIVE
        if worker.state is not state:
            if state is WorkerState.LIVE:
                log.info("remote workers: %s is live: %s, vqgan %s, clip %s, %d at once", name,
                         beat.ready.device, beat.ready.vqgan, beat.ready.clip, beat.ready.capacity)
            else:
                log.info("remote workers: %s is draining (finishing its jobs, taking none)", name)
        worker.state, worker.note, worker.deaf_instance = state, None, None
        self.last_ready = beat.ready
        return verdict

    def gone(self) -> list[str]:
        """Names whose heartbeat is gone and that count for nothing: to drop from the set."""
        return [w.name for w in self._workers.values() if not w.present and w.state not in _SERVING]

    def ping_targets(self) -> list[str]:
        """Who to ping: the serving workers, and a deaf process that still beats."""
        return [w.name for w in self._workers.values() if w.beat is not None and w.present
                and (w.state in _SERVING or w.deaf_instance == w.beat.instance)]

    def pinged(self, name: str, answered: bool, timeout: float) -> Verdict | None:
        worker = self._workers.get(name)
        if worker is None or worker.beat is None:
            return None
        if answered:
            if worker.deaf_instance is not None:
                log.warning("remote workers: %s answers pings again", name)
                worker.deaf_instance = None
                worker.state, worker.note = WorkerState.LIVE, None
            return None
        if worker.state in _SERVING and worker.deaf_instance is None:
            worker.deaf_instance = worker.beat.instance
            return self._died(worker, f"it did not answer a ping in {timeout:g} s")
        return None

    def live(self) -> list[tuple[str, Heartbeat]]:
        """The workers jobs may go to, with their heartbeats."""
        return [(w.name, w.beat) for w in self._workers.values()
                if w.state is WorkerState.LIVE and w.beat is not None]

    def capacity(self) -> int:
        return sum(beat.ready.capacity for _, beat in self.live())

    def usable(self) -> list[str]:
        """Workers that may hold a job of this bot (all but the refused)."""
        return [w.name for w in self._workers.values() if w.state is not WorkerState.REFUSED]

    def refused(self) -> list[str]:
        return [f"{w.name} ({w.note})" for w in self._workers.values()
                if w.state is WorkerState.REFUSED]

    def statuses(self) -> tuple[WorkerStatus, ...]:
        out = []
        for worker in sorted(self._workers.values(), key=lambda w: w.name):
            beat = worker.beat
            ready = beat.ready if beat is not None else p.Ready(0, "", "", "")
            out.append(WorkerStatus(
                name=worker.name, state=worker.state, device=ready.device, vqgan=ready.vqgan,
                clip=ready.clip, version=ready.version, capacity=ready.capacity,
                busy=beat.busy if beat is not None else 0,
                jobs_done=beat.done if beat is not None else 0,
                last_seen=worker.last_seen, note=worker.note))
        return tuple(out)

    def _died(self, worker: _Worker, why: str) -> Verdict:
        worker.state, worker.note = WorkerState.DEAD, why
        return Verdict(worker.name, "died", why)

    def _refuse(self, worker: _Worker, instance: str, why: str) -> None:
        if worker.logged != instance or worker.state is not WorkerState.REFUSED:
            log.error("remote workers: refusing worker %s: %s", worker.name, why)
            worker.logged = instance
        worker.state, worker.note = WorkerState.REFUSED, why

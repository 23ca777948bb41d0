"""bot/redis_workers.py: what the bot makes of each remote worker, on plain heartbeats."""

from __future__ import annotations

import logging

from bot.redis_workers import Verdict, WorkerBook
from bot.worker_status import WorkerState
from engine import protocol as p
from engine.redis_layout import WORKER_MAX_BACKOFF, Expectation, Heartbeat, heartbeat_fields


def fields(name: str = "w1", *, version: int = 1, vqgan: str = "vq", capacity: int = 2,
           instance: str = "i1", draining: bool = False, ttl: float = 15.0) -> dict[bytes, bytes]:
    beat = Heartbeat(name, p.Ready(version, "cuda:0", vqgan, "cl", 1, capacity), ttl=ttl,
                     instance=instance, draining=draining)
    return {key.encode(): value for key, value in heartbeat_fields(beat).items()}


def book() -> WorkerBook:
    return WorkerBook(Expectation(1, "vq", "cl"), clock=lambda: 1000.0)


def state(workers: WorkerBook, name: str = "w1") -> WorkerState:
    return {w.name: w.state for w in workers.statuses()}[name]


def test_only_live_workers_count_towards_capacity() -> None:
    workers = book()
    workers.seen("w1", fields("w1", capacity=2), connected_for=100)
    workers.seen("w2", fields("w2", capacity=3, draining=True), connected_for=100)
    workers.seen("w3", fields("w3", capacity=4, version=2), connected_for=100)
    assert workers.capacity() == 2
    assert [name for name, _ in workers.live()] == ["w1"]
    assert (state(workers, "w2"), state(workers, "w3")) == (WorkerState.DRAINING,
                                                            WorkerState.REFUSED)


def test_a_refusal_is_logged_once_per_process(caplog) -> None:
    caplog.set_level(logging.ERROR)
    workers = book()
    for _ in range(5):
        workers.seen("w1", fields(vqgan="other"), connected_for=100)
    workers.seen("w1", fields(vqgan="other", instance="i2"), connected_for=100)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "refusing worker w1: it runs vqgan 'other'" in lines[0]
    assert workers.refused() == [f"w1 ({workers.statuses()[0].note})"]


def test_an_unreadable_heartbeat_refuses_the_worker() -> None:
    workers = book()
    workers.seen("w1", {b"name": b"w1", b"ready": b"junk"}, connected_for=100)
    assert state(workers) is WorkerState.REFUSED and workers.capacity() == 0


def test_a_gone_heartbeat_is_death_except_just_after_redis_came_back() -> None:
    workers = book()
    workers.seen("w1", fields(), connected_for=100)
    assert workers.seen("w1", {}, connected_for=3.0) is None      # Redis restarted 3 s ago
    assert state(workers) is WorkerState.LIVE
    verdict = workers.seen("w1", {}, connected_for=20.0)
    assert verdict == Verdict("w1", "died", "its heartbeat expired (none for 15 s)")
    assert state(workers) is WorkerState.DEAD and workers.gone() == ["w1"]
    assert workers.seen("w1", {}, connected_for=30.0) is None      # dead once
    workers.seen("w1", fields(instance="i2"), connected_for=100)
    assert state(workers) is WorkerState.LIVE and workers.gone() == []


def test_after_redis_came_back_a_worker_has_its_backoff_beyond_the_ttl_to_beat_again() -> None:
    # Short heartbeats (TTL 0.6 s): the worker may wait up to WORKER_MAX_BACKOFF between
    # attempts to reach Redis, so a missing beat then is not yet a death.
    workers = book()
    workers.seen("w1", fields(ttl=0.6), connected_for=100)
    assert workers.seen("w1", {}, connected_for=0.6 + WORKER_MAX_BACKOFF - 0.1) is None
    assert state(workers) is WorkerState.LIVE
    verdict = workers.seen("w1", {}, connected_for=0.6 + WORKER_MAX_BACKOFF)
    assert verdict is not None and verdict.kind == "died"


def test_another_process_under_the_name_means_the_old_one_restarted() -> None:
    workers = book()
    workers.seen("w1", fields(instance="i1"), connected_for=100)
    verdict = workers.seen("w1", fields(instance="i2"), connected_for=100)
    assert verdict == Verdict("w1", "restarted", "it restarted", "i1")
    assert state(workers) is WorkerState.LIVE


def test_a_deaf_process_is_dead_until_it_answers_or_another_replaces_it() -> None:
    workers = book()
    workers.seen("w1", fields(instance="i1"), connected_for=100)
    verdict = workers.pinged("w1", answered=False, timeout=30)
    assert verdict is not None and verdict.kind == "died" and "ping in 30 s" in verdict.why
    workers.seen("w1", fields(instance="i1"), connected_for=100)  # still beating: still dead
    assert state(workers) is WorkerState.DEAD and workers.ping_targets() == ["w1"]
    assert workers.pinged("w1", answered=False, timeout=30) is None
    workers.pinged("w1", answered=True, timeout=30)
    assert state(workers) is WorkerState.LIVE
    workers.pinged("w1", answered=False, timeout=30)
    workers.seen("w1", fields(instance="i2"), connected_for=100)  # a new process: welcome
    assert state(workers) is WorkerState.LIVE

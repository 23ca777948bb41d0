"""bot/engine_pool.py over two real engine processes (`python -m engine worker --fake`: no
torch, solid-colour images after a short sleep), as ENGINE_DEVICES=cuda:0,cuda:1 runs them.
"""

from __future__ import annotations

import os
import signal

import pytest_asyncio

from bot.engine_client import EngineClient
from bot.engine_pool import EnginePool
from bot.render import ENGINE_CRASHED
from engine import protocol as p
from tests.bot.test_engine_client import collect, fake_command, job, until


@pytest_asyncio.fixture
async def pool():
    engines = {device: EngineClient(fake_command(), name=device, ping_interval=0.5,
                                    ping_timeout=5, restart_delay=0.05)
               for device in ("cuda:0", "cuda:1")}
    pool = EnginePool(engines)
    await pool.start()
    while any(engine.ready_info is None for engine in engines.values()):
        await pool.wait_status_change(pool.status.serial)
    yield pool
    await pool.close()


def client(pool: EnginePool, name: str) -> EngineClient:
    engine = pool.engines[name]
    assert isinstance(engine, EngineClient)
    return engine


async def test_two_jobs_run_at_once_one_on_each_engine(pool) -> None:
    first = pool.submit(job("first", iterations=100_000, progress_every=1))
    second = pool.submit(job("second", iterations=100_000, progress_every=1))
    await until(first, p.Progress)
    await until(second, p.Progress)
    assert {pool.holder("first"), pool.holder("second")} == {"cuda:0", "cuda:1"}
    assert [(w.name, w.busy) for w in pool.workers] == [("cuda:0", 1), ("cuda:1", 1)]
    await pool.cancel("first")
    await pool.cancel("second")


async def test_a_killed_engine_fails_only_its_started_job_and_the_other_finishes(pool) -> None:
    doomed = pool.submit(job("doomed", iterations=100_000, progress_every=1))
    survivor = pool.submit(job("survivor", iterations=200, progress_every=50))
    await until(doomed, p.Progress)
    os.kill(client(pool, pool.holder("doomed")).pid, signal.SIGKILL)
    assert await collect(doomed) == [p.Failed("doomed", ENGINE_CRASHED, p.FAIL_CRASH)]
    assert isinstance((await collect(survivor))[-1], p.Done)


async def test_while_one_engine_restarts_new_jobs_go_to_the_other(pool) -> None:
    doomed = pool.submit(job("doomed", iterations=100_000, progress_every=1))
    await until(doomed, p.Started)
    dead = pool.holder("doomed")
    os.kill(client(pool, dead).pid, signal.SIGKILL)
    await collect(doomed)
    later = pool.submit(job("later", iterations=3))
    assert pool.holder("later") != dead
    assert isinstance((await collect(later))[-1], p.Done)


async def test_cancel_reaches_the_engine_that_runs_the_job(pool) -> None:
    kept = pool.submit(job("kept", iterations=100_000, progress_every=1))
    cancelled = pool.submit(job("cancelled", iterations=100_000, progress_every=1))
    await until(kept, p.Progress)
    await until(cancelled, p.Progress)
    await pool.cancel("cancelled")
    assert (await collect(cancelled))[-1] == p.Cancelled("cancelled")
    assert isinstance(await until(kept, p.Progress), list)  # still running
    await pool.cancel("kept")
    assert (await collect(kept))[-1] == p.Cancelled("kept")


async def test_a_job_waiting_on_a_killed_engine_runs_on_its_restart(pool) -> None:
    doomed = pool.submit(job("doomed", iterations=100_000, progress_every=1))
    busy = pool.submit(job("busy", iterations=100_000, progress_every=1))
    waiting = pool.submit(job("waiting", iterations=3))  # no free place: the first engine
    assert (pool.holder("doomed"), pool.holder("waiting")) == ("cuda:0", "cuda:0")
    await until(doomed, p.Progress)
    os.kill(client(pool, "cuda:0").pid, signal.SIGKILL)
    assert (await collect(doomed))[-1].reason == p.FAIL_CRASH
    events = await collect(waiting)
    assert events[0] == p.Started("waiting") and isinstance(events[-1], p.Done)
    await pool.cancel("busy")
    assert (await collect(busy))[-1] == p.Cancelled("busy")

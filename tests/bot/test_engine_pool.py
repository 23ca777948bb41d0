"""bot/engine_pool.py: routing and the combined status, with `FakeEngine`s as the engines.

(The same pool over two real `--fake` engine processes: tests/bot/test_engine_pool_processes.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from bot.engine_client import EngineStartError
from bot.engine_pool import EnginePool
from bot.engine_status import EngineState
from bot.services import build_engine
from bot.engine_client import EngineClient
from bot.worker_status import WorkerState
from engine import protocol as p
from tests.bot.conftest import make_settings
from tests.bot.fake_engine import START_ERROR, FakeEngine

NEVER = (3600.0,)  # a retry that never comes within a test


def job(job_id: str) -> p.Submit:
    return p.Submit(job_id, (p.TextPromptSpec("a red square"),), width=32, height=32,
                    iterations=4, progress_every=2, cutn=2)


async def started_pool(*engines: FakeEngine, names: tuple[str, ...] = ("cuda:0", "cuda:1"),
                       ) -> EnginePool:
    pool = EnginePool(dict(zip(names, engines)), retry_delays=NEVER)
    await pool.start()
    return pool


async def first_event(stream) -> p.JobEvent:
    return await asyncio.wait_for(stream.__anext__(), 5)


async def test_free_capacity_is_the_engines_free_places_together() -> None:
    pool = await started_pool(FakeEngine(capacity=2, blocked=True), FakeEngine(capacity=3, blocked=True))
    pool.submit(job("a"))
    assert pool.free_capacity() == 4
    await pool.close()


async def test_a_job_goes_to_the_engine_with_the_most_free_places() -> None:
    small, big = FakeEngine(capacity=1, blocked=True), FakeEngine(capacity=2, blocked=True)
    pool = await started_pool(small, big)
    pool.submit(job("a"))
    assert (big.jobs_received, small.jobs_received) == (["a"], [])
    await pool.close()


async def test_engines_with_as_many_free_places_take_jobs_in_the_order_listed() -> None:
    first, second = FakeEngine(capacity=1, blocked=True), FakeEngine(capacity=1, blocked=True)
    pool = await started_pool(first, second)
    pool.submit(job("a"))
    pool.submit(job("b"))
    assert (first.jobs_received, second.jobs_received) == (["a"], ["b"])
    assert (pool.holder("a"), pool.holder("b")) == ("cuda:0", "cuda:1")
    await pool.close()


async def test_cancel_goes_to_the_engine_that_holds_the_job() -> None:
    first, second = FakeEngine(blocked=True), FakeEngine(blocked=True)
    pool = await started_pool(first, second)
    other, stream = pool.submit(job("a")), pool.submit(job("b"))
    assert [await first_event(other), await first_event(stream)] == [p.Started("a"), p.Started("b")]
    await pool.cancel("b")
    assert await first_event(stream) == p.Cancelled("b")
    assert first.computing == ["a"] and second.computing == []
    await pool.close()


async def test_a_job_that_ended_is_no_longer_routed() -> None:
    pool = await started_pool(FakeEngine(), FakeEngine())
    events = [event async for event in pool.submit(job("a"))]
    assert isinstance(events[-1], p.Done) and pool.holder("a") is None
    await pool.close()


async def test_a_job_id_already_held_is_refused() -> None:
    pool = await started_pool(FakeEngine(blocked=True), FakeEngine(blocked=True))
    pool.submit(job("a"))
    with pytest.raises(ValueError, match="'a'"):
        pool.submit(job("a"))
    await pool.close()


async def test_with_no_free_place_a_job_goes_to_a_restarting_engine_rather_than_a_down_one() -> None:
    down, restarting = FakeEngine(), FakeEngine()
    pool = await started_pool(down, restarting)
    down.go_down()
    restarting._set_state(EngineState.RESTARTING)
    pool.submit(job("a"))
    assert (down.jobs_received, restarting.jobs_received) == ([], ["a"])
    await pool.close()


async def test_the_pool_is_ready_while_any_engine_is_ready() -> None:
    first, second = FakeEngine(), FakeEngine()
    pool = await started_pool(first, second)
    first.go_down()
    assert pool.status.state is EngineState.READY
    await pool.close()


async def test_the_pool_is_down_only_when_every_engine_is_down() -> None:
    first, second = FakeEngine(), FakeEngine()
    pool = await started_pool(first, second)
    first.go_down()
    second._set_state(EngineState.RESTARTING)
    assert pool.status.state is EngineState.RESTARTING
    second.go_down()
    assert pool.status.state is EngineState.DOWN and pool.ready_info is None
    await pool.close()


async def test_ready_info_sums_the_capacity_and_lists_the_devices() -> None:
    pool = await started_pool(FakeEngine(capacity=2), FakeEngine(capacity=3))
    ready = pool.ready_info
    assert ready is not None and ready.capacity == 5
    assert ready.device == "cuda:0: cpu, cuda:1: cpu"
    await pool.close()


async def test_restarts_are_summed_and_the_newest_error_names_its_device() -> None:
    first, second = FakeEngine(), FakeEngine()
    pool = await started_pool(first, second)
    first.go_down("old error")
    first.come_back()
    second.go_down("new error")
    second.come_back()
    status = pool.status
    assert status.restarts == 2
    assert status.last_error == "cuda:1: new error"
    await pool.close()


async def test_a_change_of_one_engine_wakes_wait_status_change() -> None:
    first, second = FakeEngine(), FakeEngine()
    pool = await started_pool(first, second)
    serial = pool.status.serial
    waiting = asyncio.create_task(pool.wait_status_change(serial))
    await asyncio.sleep(0)
    second.go_down()
    status = await asyncio.wait_for(waiting, 5)
    assert status.serial > serial and status.state is EngineState.READY
    await pool.close()


async def test_start_returns_once_one_engine_is_ready_while_another_cannot_start() -> None:
    broken = FakeEngine(start_failures=1_000)
    pool = await started_pool(broken, FakeEngine())
    assert pool.ready_info is not None and pool.status.state is EngineState.READY
    await pool.close()


async def test_an_engine_that_cannot_start_is_listed_dead_with_its_error() -> None:
    pool = await started_pool(FakeEngine(start_failures=1_000), FakeEngine())
    await asyncio.sleep(0)  # the broken one's first attempt
    dead, live = pool.workers
    assert (dead.name, dead.state, dead.note) == ("cuda:0", WorkerState.DEAD, START_ERROR)
    assert (live.name, live.state) == ("cuda:1", WorkerState.LIVE)
    await pool.close()


async def test_start_fails_with_each_devices_error_when_no_engine_starts() -> None:
    pool = EnginePool({"cuda:0": FakeEngine(start_failures=1_000),
                       "cuda:1": FakeEngine(start_failures=1_000)}, retry_delays=NEVER)
    with pytest.raises(EngineStartError) as caught:
        await pool.start()
    assert f"cuda:0: {START_ERROR}; cuda:1: {START_ERROR}" in str(caught.value)
    assert pool.status.state is EngineState.DOWN
    await pool.close()


async def test_an_engine_that_failed_to_start_is_retried_in_the_background() -> None:
    late = FakeEngine(start_failures=1)
    pool = EnginePool({"cuda:0": late, "cuda:1": FakeEngine()}, retry_delays=(0.01,))
    await pool.start()
    for _ in range(200):
        if late.ready_info is not None:
            break
        await asyncio.sleep(0.01)
    assert late.start_calls == 2 and late.ready_info is not None
    await pool.close()


async def test_close_closes_every_engine_and_the_pool_is_closed() -> None:
    first, second = FakeEngine(), FakeEngine()
    pool = await started_pool(first, second)
    await pool.close()
    assert first.closed and second.closed and pool.status.state is EngineState.CLOSED


def test_build_engine_makes_a_pool_of_one_engine_per_device() -> None:
    engine = build_engine(make_settings(engine_devices=("cuda:0", "cuda:1")))
    assert isinstance(engine, EnginePool)
    assert list(engine.engines) == ["cuda:0", "cuda:1"]
    for device, client in engine.engines.items():
        assert isinstance(client, EngineClient)
        assert client.command[client.command.index("--device") + 1] == device


def test_build_engine_with_one_device_is_a_single_engine_on_it() -> None:
    engine = build_engine(make_settings(engine_devices=("cuda:1",)))
    assert isinstance(engine, EngineClient)
    assert engine.command[engine.command.index("--device") + 1] == "cuda:1"

"""engine/redis_worker.py on fakeredis: a remote worker registers, takes jobs only while it
has room, publishes their events, obeys its control stream, and refuses what it must.

The engine inside is the real `engine.worker.Worker` (through its pipes) with a scripted
runner: "gate" jobs wait for the test to release them (or for a cancel)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import fakeredis
import pytest

from engine import protocol as p
from engine.errors import Cancelled
from engine.redis_layout import (
    EVENT_TYPES,
    GROUP,
    INBOX_TYPES,
    Expectation,
    RedisLayout,
    entry_fields,
    expectation_fields,
    new_run,
    read_entry,
    read_heartbeat,
    stream_entries,
)
from engine.redis_url import RedisTarget
from engine.redis_worker import RemoteWorker, RemoteWorkerConfig, WorkerStartError

LAYOUT = RedisLayout()
TIMEOUT = 10.0


class GateRunner:
    device = "test-device"
    vqgan = "test-vqgan"
    clip = "test-clip"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.ran: list[str] = []

    def run(self, job: p.Submit, on_progress, should_cancel: Callable[[], bool]) -> p.Done:
        self.ran.append(job.job)
        if job.prompts[0].text == "gate":
            on_progress(p.Progress(job.job, 1, job.iterations, 1.0, 0.0, b""))
            while not self.release.wait(0.01):
                if should_cancel():
                    raise Cancelled()
        return p.Done(job.job, b"png", 7, 0.1, job.iterations, job.width, job.height)

    def free_memory(self) -> None:
        pass


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def client(server: fakeredis.FakeServer) -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis(server=server)


def config(name: str = "w1") -> RemoteWorkerConfig:
    return RemoteWorkerConfig(RedisTarget("127.0.0.1"), name, LAYOUT, heartbeat_interval=0.1,
                              block=0.05)


@pytest.fixture
async def running(server: fakeredis.FakeServer) -> AsyncIterator[tuple[RemoteWorker, GateRunner]]:
    runner = GateRunner()
    worker = RemoteWorker(config(), lambda: runner, client=client(server))
    task = asyncio.create_task(worker.run())
    redis = client(server)
    await until(lambda: redis.exists(LAYOUT.heartbeat("w1")))
    yield worker, runner
    runner.release.set()
    worker.drain("test over")
    assert await asyncio.wait_for(task, TIMEOUT) == 0


async def until(check, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def submit(job: str, prompt: str = "quick") -> p.Submit:
    return p.Submit(job, (p.TextPromptSpec(prompt),), 64, 64, iterations=3)


async def dispatch(redis, job: p.Submit) -> tuple[str, str]:
    """What the bot does: one entry with the Submit's frame and a fresh run."""
    run = new_run()
    await redis.xadd(LAYOUT.jobs, entry_fields(job, run=run))
    return job.job, run


async def events(redis, job: str, run: str, until_type: str = "done") -> list[p.Message]:
    seen: list[p.Message] = []
    last = "0-0"
    async with asyncio.timeout(TIMEOUT):
        while True:
            for _, entry_id, fields in stream_entries(
                    await redis.xread({LAYOUT.events(job, run): last}, block=50)):
                last = entry_id
                entry = read_entry(fields, EVENT_TYPES)
                assert entry.worker == "w1"
                seen.append(entry.message)
                if entry.message.TYPE == until_type:
                    return seen
            await asyncio.sleep(0.01)


async def test_it_registers_its_ready_and_leaves_when_told_to_shut_down(server) -> None:
    redis = client(server)
    worker = RemoteWorker(config(), GateRunner, client=client(server))
    task = asyncio.create_task(worker.run())
    await until(lambda: redis.exists(LAYOUT.heartbeat("w1")))
    beat = read_heartbeat(await redis.hgetall(LAYOUT.heartbeat("w1")))
    assert (beat.name, beat.ready.device, beat.ready.vqgan, beat.ready.capacity, beat.busy) == (
        "w1", "test-device", "test-vqgan", 1, 0)
    assert 0 < await redis.pttl(LAYOUT.heartbeat("w1")) <= 300  # three beats of 0.1 s
    assert await redis.smembers(LAYOUT.workers) == {b"w1"}
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Shutdown()))
    assert await asyncio.wait_for(task, TIMEOUT) == 0
    assert not await redis.exists(LAYOUT.heartbeat("w1"))
    assert not await redis.smembers(LAYOUT.workers)


async def test_a_job_runs_its_events_are_published_and_its_entry_acked(server, running) -> None:
    redis = client(server)
    job, run = await dispatch(redis, submit("k1"))
    seen = await events(redis, job, run)
    assert [m.TYPE for m in seen] == ["started", "done"]
    assert seen[-1] == p.Done("k1", b"png", 7, 0.1, 3, 64, 64)
    await until(lambda: _pending_is(redis, 0))
    assert 0 < await redis.pttl(LAYOUT.events(job, run))  # expires if the bot never reads it


async def _pending_is(redis, count: int) -> bool:
    return (await redis.xpending(LAYOUT.jobs, GROUP))["pending"] == count


async def test_it_claims_only_as_many_jobs_as_it_has_room_for(server, running) -> None:
    worker, runner = running
    redis = client(server)
    first = await dispatch(redis, submit("g1", "gate"))
    await dispatch(redis, submit("g2", "gate"))
    await dispatch(redis, submit("g3"))
    await events(redis, *first, until_type="progress")
    await asyncio.sleep(0.3)  # several claim rounds: none may take a second job
    assert (await redis.xpending(LAYOUT.jobs, GROUP))["pending"] == 1
    assert worker.busy == 1 and runner.ran == ["g1"]
    runner.release.set()
    await until(lambda: _pending_is(redis, 0))
    await until(lambda: _async(runner.ran == ["g1", "g2", "g3"]))


async def _async(value: bool) -> bool:
    return value


async def test_a_cancel_on_the_control_stream_stops_the_running_job(server, running) -> None:
    redis = client(server)
    job, run = await dispatch(redis, submit("g1", "gate"))
    await events(redis, job, run, until_type="progress")
    # A cancel for another dispatch of the same job id does nothing.
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Cancel("g1"), run="other"))
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Cancel("g1"), run=run))
    seen = await events(redis, job, run, until_type="cancelled")
    assert [m.TYPE for m in seen] == ["started", "progress", "cancelled"]
    await until(lambda: _pending_is(redis, 0))


async def test_a_run_cancelled_before_it_is_claimed_never_runs(server, running) -> None:
    _, runner = running
    redis = client(server)
    run = new_run()
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Cancel("k9"), run=run))
    await asyncio.sleep(0.2)
    await redis.xadd(LAYOUT.jobs, entry_fields(submit("k9"), run=run))
    seen = await events(redis, "k9", run, until_type="cancelled")
    assert [m.TYPE for m in seen] == ["cancelled"] and runner.ran == []


async def test_a_ping_is_answered_by_the_engine_into_the_bots_inbox(server, running) -> None:
    redis = client(server)
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Ping(4242)))
    async with asyncio.timeout(TIMEOUT):
        while not (reply := await redis.xread({LAYOUT.inbox: "0-0"}, block=50)):
            await asyncio.sleep(0.01)
    entry = read_entry(stream_entries(reply)[0][2], INBOX_TYPES)
    assert entry.message == p.Pong(4242) and entry.worker == "w1"


async def test_a_malformed_job_is_answered_failed_and_the_worker_goes_on(server, running) -> None:
    redis = client(server)
    run = new_run()
    bad = p.encode_frame({"type": "submit", "job": "bad1", "prompts": [], "width": 0})
    await redis.xadd(LAYOUT.jobs, {"frame": bad, "run": run})
    await redis.xadd(LAYOUT.jobs, {"frame": b"garbage", "run": run})  # no job to answer
    seen = await events(redis, "bad1", run, until_type="failed")
    assert isinstance(seen[-1], p.Failed) and seen[-1].reason == p.FAIL_REJECTED
    assert "width" in seen[-1].message
    job, good_run = await dispatch(redis, submit("k2"))
    assert [m.TYPE for m in await events(redis, job, good_run)] == ["started", "done"]
    await until(lambda: _pending_is(redis, 0))


async def test_a_malformed_control_entry_is_ignored(server, running) -> None:
    redis = client(server)
    await redis.xadd(LAYOUT.control("w1"), {"frame": b"\x00\x00\x00\x02{}"})
    await redis.xadd(LAYOUT.control("w1"), entry_fields(p.Started("x")))  # not a control
    job, run = await dispatch(redis, submit("k3"))
    assert [m.TYPE for m in await events(redis, job, run)] == ["started", "done"]


async def test_it_refuses_to_start_when_the_bot_expects_other_models(server) -> None:
    redis = client(server)
    await redis.hset(LAYOUT.expect, mapping=expectation_fields(
        Expectation(p.PROTOCOL_VERSION, "vqgan_imagenet_f16_16384", None)))
    worker = RemoteWorker(config(), GateRunner, client=client(server))
    with pytest.raises(WorkerStartError, match="'test-vqgan'.*vqgan_imagenet_f16_16384"):
        await asyncio.wait_for(worker.run(), TIMEOUT)
    assert not await redis.exists(LAYOUT.heartbeat("w1"))


async def test_it_refuses_to_start_when_the_bot_speaks_another_protocol(server) -> None:
    redis = client(server)
    await redis.hset(LAYOUT.expect, mapping=expectation_fields(Expectation(99)))
    worker = RemoteWorker(config(), GateRunner, client=client(server))
    with pytest.raises(WorkerStartError, match="protocol version"):
        await asyncio.wait_for(worker.run(), TIMEOUT)


async def test_a_second_live_worker_with_the_same_name_is_refused(server, running) -> None:
    second = RemoteWorker(config("w1"), GateRunner, client=client(server))
    with pytest.raises(WorkerStartError, match="another worker named w1"):
        await asyncio.wait_for(second.run(), TIMEOUT)


# ---- the command line -------------------------------------------------------------------


def test_a_bad_redis_url_exits_2_without_showing_the_password(capsys, monkeypatch) -> None:
    from engine.cli import main

    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["worker", "--fake", "--redis", "redis://bot:hunter2-secret@h:1/db"]) == 2
    err = capsys.readouterr().err
    assert "database number" in err and "hunter2" not in err
    assert main(["worker", "--fake", "--redis"]) == 2
    assert "REDIS_URL" in capsys.readouterr().err


def test_the_url_may_come_from_the_environment_and_names_are_checked(capsys, monkeypatch) -> None:
    from engine.cli import main

    monkeypatch.setenv("REDIS_URL", "redis://:hunter2-secret@127.0.0.1:1/0")
    assert main(["worker", "--fake", "--redis", "--name", "bad name"]) == 2
    err = capsys.readouterr().err
    assert "worker name" in err and "hunter2" not in err
    assert main(["worker", "--fake", "--redis", "--prefix", "a*"]) == 2
    assert "prefix" in capsys.readouterr().err


def test_the_default_name_is_the_host_and_the_device() -> None:
    from engine.commands.worker import default_worker_name
    from engine.redis_layout import check_worker_name

    name = default_worker_name("cuda:1")
    assert name.endswith("-cuda-1") and check_worker_name(name) == name


def test_device_accepts_one_gpu_of_several() -> None:
    from engine.cli import build_parser

    args = build_parser().parse_args(["worker", "--device", "cuda:1"])
    assert args.device == "cuda:1"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--device", "gpu"])

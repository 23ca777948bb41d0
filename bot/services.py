"""The bot's long-lived parts, built once from the settings and shared by every cog.

Why one object: cogs must not each open the database or spawn an engine; they read
`bot.services` and call the domain layer (store, scheduler, quotas) and the engine client.
Tests build the same object with a fake engine behind the same interface.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bot.config import Settings
from bot.engine_client import EngineClient, worker_command_for
from bot.engine_pool import EnginePool
from bot.engine_status import EngineStatus
from bot.job_messages import JobMessages
from bot.jobs import RunningJob as RunningJob  # plain data, kept importable from here
from bot.quotas import QuotaPolicy
from bot.scheduler import Scheduler
from bot.store import Store
from bot.worker_status import WorkerStatus
from engine import protocol

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the bot needs of the engine: `bot.engine_client.EngineClient` (the local engine
    process), `bot.engine_pool.EnginePool` (one engine process per device of ENGINE_DEVICES)
    and `bot.redis_backend.RedisBackend` (remote workers) are the real ones; `build_engine`
    picks one from ENGINE_BACKEND and ENGINE_DEVICES.

    Its behaviour, which `tests/bot/fake_engine.py` models too: `start` raises while the
    engine cannot start (the state is then `down`, `last_error` says why); a job submitted
    while the engine is down or restarting waits, and runs once it is back; a job that had
    started when the engine died ends `Failed(reason="crash")`, uncharged.
    """

    @property
    def ready_info(self) -> protocol.Ready | None: ...

    @property
    def status(self) -> EngineStatus: ...

    async def wait_status_change(self, after: int) -> EngineStatus: ...

    def free_capacity(self) -> int:
        """Jobs the runner may hand over now: the capacity of what is live minus the jobs
        the engine already holds (`Ready.capacity` is a total that ignores them)."""
        ...

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        """Each engine process or remote worker, for `/status`."""
        ...

    async def start(self) -> protocol.Ready: ...

    def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]: ...

    async def cancel(self, job_id: str) -> None: ...

    async def close(self) -> None: ...


#: Variables the engine process must not inherit: it never talks to Discord.
SECRET_VARIABLES = ("DISCORD_TOKEN",)


def worker_environment() -> dict[str, str]:
    """The bot's environment minus its secrets, for the engine process: a library in the
    worker that dumps its environment (a crash reporter, a debug log) cannot leak them."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_VARIABLES}


def build_engine(settings: Settings) -> Engine:
    """The engine ENGINE_BACKEND names, not started: for `local`, one engine process per
    device of ENGINE_DEVICES (a pool when there are several), else one on DEVICE. For
    `redis`, the workers must run the bot's models: a VQGAN or CLIP given as files is
    checked by nobody (a worker's Ready carries whatever name it was started with), a named
    one must match."""
    if settings.engine_backend == "redis":
        # Imported here: only this backend needs the Redis client.
        from bot.redis_backend import RedisBackend
        from engine.redis_layout import Expectation, RedisLayout

        if settings.redis_url is None:  # load_settings refuses this; a hand-built Settings may not
            raise ValueError("ENGINE_BACKEND=redis needs REDIS_URL")
        expect = Expectation(
            protocol.PROTOCOL_VERSION,
            None if settings.uses_custom_vqgan_files else settings.vqgan_model,
            None if settings.clip_model_is_path else settings.clip_model)
        return RedisBackend(settings.redis_url, layout=RedisLayout(settings.redis_prefix),
                            expect=expect)
    devices = settings.engine_devices
    if len(devices) >= 2:
        return EnginePool({device: EngineClient(worker_command_for(settings, device),
                                                env=worker_environment(), name=device)
                           for device in devices})
    if devices:
        return EngineClient(worker_command_for(settings, devices[0]), env=worker_environment(),
                            name=devices[0])
    return EngineClient(worker_command_for(settings), env=worker_environment())


@dataclass
class Services:
    """Everything a cog needs besides discord.py itself."""

    settings: Settings
    store: Store
    scheduler: Scheduler
    quotas: QuotaPolicy
    engine: Engine
    results_dir: Path
    #: Writes each job's channel message (its buttons come from the app's views).
    messages: JobMessages
    #: The jobs the job runner has taken from the queue and not yet ended, by job id, in
    #: the order it handed them to the engine (up to its capacity, `Ready.capacity`).
    running: dict[str, RunningJob] = field(default_factory=dict)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        messages: JobMessages,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> Services:
        """Open the database, create the results directory and build the engine client
        (not started: starting loads the models, which the job runner does in the
        background so the bot is online while the engine warms up)."""
        if engine is None:
            engine = build_engine(settings)
        results_dir = Path(settings.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(settings.database_path, clock=clock)
        return cls(
            settings=settings,
            store=store,
            scheduler=Scheduler(settings.max_queued_per_user),
            # In the settings 0 means unlimited; the policy spells unlimited as None.
            quotas=QuotaPolicy(store, settings.default_daily_quota or None, clock),
            engine=engine,
            results_dir=results_dir,
            messages=messages,
        )

    async def close(self) -> None:
        """Stop the engine, then close the database (in that order: the engine's last
        events may still update jobs)."""
        try:
            await self.engine.close()
        finally:
            await self.store.close()

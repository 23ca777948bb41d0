"""A fake engine behind the bot's `Engine` interface, for bot tests without torch, and the
SimCord world (`running_world`) the generation tests run the real bot in.

It answers every `Submit` the way the real engine does (Started, a few Progress events with
real JPEG previews, then Done with a real PNG of the requested size), and can be told to
fail, to refuse to start, or to hold jobs until the test releases them (all, or one by
one: to test cancel and queue order). It records every `Submit` it received, and the order
it started them in.

It starts jobs by the real engine's batching rule (`engine/batching.py`): up to `capacity`
at once (its `Ready.capacity`), only jobs of one size together, in the order they came; a
job of another size waits until the batch has drained, and nothing behind it starts first.

It keeps the engine's state as `bot.engine_client.EngineClient` does (`status`,
`wait_status_change`, the same `EngineState`s), and behaves the same way when the engine
dies (`go_down`): the job that had started ends `Failed(reason="crash")` with the client's
`ENGINE_CRASHED`; jobs submitted but not started wait until it is back (`come_back`), or
end `Cancelled` if cancelled meanwhile.

SimCord runs the bot's tasks under a settlement check: a bot task waiting on something
SimCord doesn't know must declare it. `attach(env)` makes the fake declare its "blocked"
waits with `env.external_wait`, which is what a real engine's GPU time is to SimCord.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import discord
import simcord
from PIL import Image, PngImagePlugin

from bot.app import ImagineBot
from bot.config import Settings
from bot.engine_status import EngineState, EngineStatus
from bot.pacing import QUEUE_EDIT_WINDOW
from bot.render import ENGINE_CRASHED
from bot.worker_status import WorkerState, WorkerStatus
from engine import protocol
from tests.bot.conftest import make_settings, raise_unexpected_errors


def jpeg_bytes(width: int = 32, height: int = 32, colour: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (40, 120, 200),
              text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def result_text(job: protocol.Submit, seed: int) -> dict[str, str]:
    """The text chunks the real engine writes into a result (`Generator._metadata`), with
    the fake's model names and the method's settings as the engine's defaults."""
    text = {"prompt": " + ".join(p.text for p in job.prompts), "seed": str(seed),
            "iterations": str(job.iterations), "size": f"{job.width}x{job.height}",
            "vqgan": "fake_vqgan", "clip": "fake_clip", "cutn": str(job.cutn), "lr": "0.15",
            "l2": "0.75", "l2_decay": "linear",
            "mode": "edit" if job.init_image is not None else "generate",
            "device": "cpu", "threads": "1"}
    if job.init_image is not None:
        text["keep_structure"] = "0"
    if job.replace is not None:
        text["original_weight"] = "0.5"
        text["replace"] = job.replace
    return text


class FakeEngineStartError(Exception):
    pass


#: Why the fake cannot start, as a real engine would say it: with a server path in it.
START_ERROR = "cannot start the engine: /srv/vqgan/models/tiny.ckpt is missing"


class FakeEngine:
    """See the module docstring. Knobs: `fail_with`, `start_failures`, `blocked`,
    `progress_steps`, `step_delay` (real seconds between progress events); `go_down` and
    `come_back` kill and revive the engine."""

    def __init__(
        self,
        *,
        fail_with: str | None = None,
        fail_reason: str = protocol.FAIL_ENGINE,
        start_failures: int = 0,
        blocked: bool = False,
        progress_steps: int = 4,
        step_delay: float = 0.0,
        hold_at_step: int = 0,
        capacity: int = 1,
    ) -> None:
        self.fail_with = fail_with
        self.fail_reason = fail_reason
        self.start_failures = start_failures
        self.progress_steps = progress_steps
        self.step_delay = step_delay
        #: Where a blocked engine holds a job: 0 = before any progress, N = after N events.
        self.hold_at_step = hold_at_step
        #: Jobs optimised at once (`Ready.capacity`).
        self.capacity = capacity
        #: Job ids in the order they started (sent `Started`).
        self.started: list[str] = []
        #: Jobs submitted and not started yet, in the order they came.
        self._line: list[str] = []
        #: Jobs submitted and not ended (what `free_capacity` subtracts).
        self._unended: set[str] = set()
        #: The jobs computing now, with their size: one size at a time.
        self._batch: dict[str, tuple[int, int]] = {}
        #: Jobs a blocked engine lets finish (`release_job`).
        self._released: set[str] = set()
        self.submits: list[protocol.Submit] = []
        self.start_calls = 0
        self.closed = False
        self.restarts = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._state = EngineState.NOT_STARTED
        self._since = time.time()
        self._serial = 0
        self._changed = asyncio.Event()
        self._ready: protocol.Ready | None = None
        #: Goes up at every death: a job started before one has crashed.
        self._deaths = 0
        self._gate = asyncio.Event()
        if not blocked:
            self._gate.set()
        self._cancelled: set[str] = set()
        self._wakers: dict[str, asyncio.Event] = {}
        self._env: Any = None
        #: Set when a job is waiting at the gate (tests wait for it).
        self.holding: str | None = None

    # ---- test controls ----------------------------------------------------------------

    def attach(self, env: Any) -> FakeEngine:
        """Declare blocked waits to SimCord as external input."""
        self._env = env
        return self

    def release(self) -> None:
        """Let held jobs (and all later ones) run."""
        self._gate.set()
        self._wake_all()

    def release_job(self, job_id: str) -> None:
        """Let one held job (only that one) finish."""
        self._released.add(job_id)
        waker = self._wakers.get(job_id)
        if waker is not None:
            waker.set()

    def block(self) -> None:
        self._gate.clear()

    @property
    def computing(self) -> list[str]:
        """The jobs started and not ended, in the order they started."""
        return list(self._batch)

    def go_down(self, error: str = START_ERROR) -> None:
        """The worker dies and every restart fails (its model file was removed, say): as
        the real client, restarting, then down with `error` as the last error."""
        self._deaths += 1
        self._batch.clear()  # every job computing dies with it
        self._record_error(error)
        self._set_state(EngineState.RESTARTING)
        self._set_state(EngineState.DOWN)
        self._wake_all()

    def come_back(self) -> None:
        """A restart works again: the jobs that waited run."""
        self.restarts += 1
        self._set_state(EngineState.READY)
        self._wake_all()

    @property
    def prompts_received(self) -> list[list[tuple[str, float]]]:
        return [[(p.text, p.weight) for p in s.prompts] for s in self.submits]

    @property
    def jobs_received(self) -> list[str]:
        return [s.job for s in self.submits]

    # ---- the Engine interface ---------------------------------------------------------

    @property
    def ready_info(self) -> protocol.Ready | None:
        return self._ready if self._state is EngineState.READY else None

    @property
    def status(self) -> EngineStatus:
        return EngineStatus(
            state=self._state, since=self._since, serial=self._serial, ready=self.ready_info,
            last_ready=self._ready, last_error=self.last_error,
            last_error_at=self.last_error_at, restarts=self.restarts,
        )

    async def wait_status_change(self, after: int) -> EngineStatus:
        while self._serial <= after:
            await self._wait(self._changed.wait(), "fake engine's state")
        return self.status

    async def start(self) -> protocol.Ready:
        self.start_calls += 1
        if self._state is not EngineState.DOWN:
            self._set_state(EngineState.STARTING)
        if self.start_failures > 0:
            self.start_failures -= 1
            self._record_error(START_ERROR)
            self._set_state(EngineState.DOWN)
            raise FakeEngineStartError(START_ERROR)
        self._ready = protocol.Ready(protocol.PROTOCOL_VERSION, "cpu", "fake_vqgan", "fake_clip", 1,
                                     capacity=self.capacity)
        self._set_state(EngineState.READY)
        return self._ready

    def free_capacity(self) -> int:
        ready = self.ready_info
        return 0 if ready is None else max(0, ready.capacity - len(self._unended))

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        ready = self.ready_info
        if ready is None:
            return ()
        return (WorkerStatus("fake", WorkerState.LIVE, ready.device, ready.vqgan, ready.clip,
                             ready.version, ready.capacity, len(self._batch),
                             len([job for job in self.started if job not in self._batch]),
                             time.time()),)

    def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        self.submits.append(job)
        self._unended.add(job.job)
        return self._events(job)

    async def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        waker = self._wakers.get(job_id)
        if waker is not None:
            waker.set()

    async def close(self) -> None:
        self.closed = True
        self._set_state(EngineState.CLOSED)

    # ---- internals ----------------------------------------------------------------------

    def _set_state(self, state: EngineState) -> None:
        if state is self._state or self._state is EngineState.CLOSED:
            return
        self._state = state
        self._since = time.time()
        self._serial += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _record_error(self, text: str) -> None:
        self.last_error = text
        self.last_error_at = time.time()

    async def _wait(self, awaitable: Awaitable[Any], reason: str) -> Any:
        if self._env is not None:
            return await self._env.external_wait(awaitable, reason=reason)
        return await awaitable

    def _wake_all(self) -> None:
        for event in self._wakers.values():
            event.set()

    async def _sleep(self, job_id: str, reason: str) -> None:
        """Wait for the next `release`, `cancel`, `go_down` or `come_back`."""
        waker = self._wakers[job_id] = asyncio.Event()
        try:
            await self._wait(waker.wait(), reason)
        finally:
            self._wakers.pop(job_id, None)

    async def _held(self, job_id: str, deaths: int) -> None:
        """Wait until released, this job is cancelled, or the engine dies."""
        self.holding = job_id
        try:
            while not (self._gate.is_set() or job_id in self._released
                       or job_id in self._cancelled or self._deaths != deaths):
                await self._sleep(job_id, "fake engine holding a job")
        finally:
            self.holding = None

    def _may_start(self, job: protocol.Submit) -> bool:
        """The engine's batching rule: first in line, and room in a batch of its size."""
        if self._state is not EngineState.READY or self._line[0] != job.job:
            return False
        size = (job.width, job.height)
        return not self._batch or (size in self._batch.values() and len(self._batch) < self.capacity)

    def _end(self, job_id: str) -> None:
        """The job leaves the batch (before its last event: a reader may stop there)."""
        self._batch.pop(job_id, None)
        self._unended.discard(job_id)
        self._wake_all()

    async def _events(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        # Not started while the engine is down (the job waits, as in the real client), nor
        # before there is room for it by the batching rule.
        self._line.append(job.job)
        while not self._may_start(job) and job.job not in self._cancelled:
            await self._sleep(job.job, "fake engine: a job waiting to start")
        self._line.remove(job.job)
        if job.job in self._cancelled:
            self._unended.discard(job.job)
            self._wake_all()
            yield protocol.Cancelled(job.job)
            return
        self._batch[job.job] = (job.width, job.height)
        self.started.append(job.job)
        deaths = self._deaths
        crashed = protocol.Failed(job.job, ENGINE_CRASHED, protocol.FAIL_CRASH)
        yield protocol.Started(job.job)
        steps = max(1, self.progress_steps)
        for step in range(1, steps + 1):
            if step - 1 == self.hold_at_step:
                await self._held(job.job, deaths)
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            if self._deaths != deaths:
                self._end(job.job)
                yield crashed
                return
            if job.job in self._cancelled:
                self._end(job.job)
                yield protocol.Cancelled(job.job)
                return
            iteration = max(1, job.iterations * step // steps)
            yield protocol.Progress(job.job, iteration, job.iterations, loss=1.0 / step,
                                    elapsed=0.5 * iteration, preview=jpeg_bytes(colour=(10 * step, 80, 40)))
        self._end(job.job)
        if self.fail_with is not None:
            yield protocol.Failed(job.job, self.fail_with, self.fail_reason)
            return
        seed = job.seed if job.seed is not None else 1234
        yield protocol.Done(job.job, png_bytes(job.width, job.height, text=result_text(job, seed)),
                            seed=seed, seconds=0.5 * job.iterations, iterations=job.iterations,
                            width=job.width, height=job.height)


# --------------------------------------------------------------------------------------
# The SimCord world the generate tests run in.
# --------------------------------------------------------------------------------------


#: Small, fast defaults for bot tests: every progress event edits (interval 0).
TEST_SETTINGS: dict[str, Any] = dict(
    progress_interval=0.0,
    default_size=(64, 64),
    max_size=(128, 128),
    default_iterations=8,
    max_iterations=50,
    default_daily_quota=20,
    max_queued_per_user=3,
)


def fast_settings(**overrides: Any) -> Settings:
    return make_settings(**{**TEST_SETTINGS, **overrides})


@dataclass
class World:
    """A running bot with a fake engine, one guild, one channel and three members:
    alice and bob (plain members) and mod (Manage Server)."""

    env: simcord.Env
    engine: FakeEngine
    settings: Settings
    guild: Any
    channel: Any
    alice: Any
    bob: Any
    mod: Any
    engines: list[FakeEngine] = field(default_factory=list)
    #: SimCord's error cursor up to which a test has checked the bot's errors itself.
    errors_seen: int = 0

    @property
    def bot(self) -> ImagineBot:
        return self.env.bot  # type: ignore[return-value]

    @property
    def services(self) -> Any:
        return self.bot.services

    async def restart(self, engine: FakeEngine | None = None) -> FakeEngine:
        """Close the bot (as a real shutdown does) and start a fresh one on the same
        database and results folder."""
        await self.bot.close()
        self.engine = (engine or FakeEngine()).attach(self.env)
        self.engines.append(self.engine)
        await self.env.restart_bot(ImagineBot(self.settings, engine=self.engine))
        return self.engine

    async def catch_up(self, *, most: int = 100) -> None:
        """Let the paced edits of waiting jobs' messages (`bot.pacing`) all go out: move the
        simulated clock one pace window at a time until a window passes without an edit."""
        for _ in range(most):
            sent = len(self.env.http_requests)
            await self.env.advance_time(QUEUE_EDIT_WINDOW)
            if len(self.env.http_requests) == sent:
                return
        raise AssertionError(f"the bot was still editing after {most} pace windows")

    def bot_messages(self) -> list[discord.Message]:
        """The bot's channel messages, oldest first."""
        me = self.bot.user.id
        return [m for m in reversed(self.channel.history()) if m.author.id == me]

    def edits_of(self, message_id: int) -> list[Any]:
        """The JSON bodies of every edit the bot made to one message, in order."""
        path = f"/channels/{self.channel.id}/messages/{message_id}"
        return [r.json for r in self.env.http_requests if r.method == "PATCH" and r.path == path]

    def job_edits(self, job_id: str) -> list[Any]:
        """The JSON bodies of every edit of a message of this job (its waiting and progress
        message, which its final message replaces), in order: their embeds name the job."""
        prefix = f"/channels/{self.channel.id}/messages/"
        return [r.json for r in self.env.http_requests
                if r.method == "PATCH" and r.path.startswith(prefix) and isinstance(r.json, dict)
                and any(f"job {job_id}" in ((e.get("footer") or {}).get("text") or "")
                        for e in r.json.get("embeds") or [])]


@contextlib.asynccontextmanager
async def running_world(
    engine: FakeEngine | None = None, *, env_options: dict[str, Any] | None = None,
    warm_engine: bool = False, **settings: Any
) -> AsyncIterator[World]:
    """`settings` override `TEST_SETTINGS`; `env_options` go to `simcord.Env`. By default
    no privileged intent is approved, as for the real bot: SimCord then hides other users'
    message contents and attachments from it, exactly as Discord does."""
    engine = engine or FakeEngine()
    config = fast_settings(**settings)
    options = {"approved_intents": discord.Intents.none(), **(env_options or {})}
    env = simcord.Env(ImagineBot(config, engine=engine, warm_engine=warm_engine), **options)
    guild = env.create_guild("studio")
    channel = guild.create_text_channel("art")
    mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
    engine.attach(env)  # before the bot starts: it may follow the engine's state at once
    await env.start()
    world = World(env, engine, config, guild, channel,
                  guild.add_member(env.create_user("alice")),
                  guild.add_member(env.create_user("bob")),
                  guild.add_member(env.create_user("mod"), roles=[mods]),
                  engines=[engine])
    try:
        yield world
    finally:
        with contextlib.suppress(Exception):
            world.engine.release()
            await env.settle()
        await world.bot.close()
        await env.shutdown()
    raise_unexpected_errors(env, since=world.errors_seen)


def png_file(name: str = "photo.png", width: int = 48, height: int = 32) -> tuple[str, bytes]:
    return name, png_bytes(width, height, (120, 200, 90))


def text_of(result: Any) -> str:
    """The text the bot answered an interaction with (its response or first followup)."""
    response = result.response
    if response is not None and response.content:
        return response.content
    for followup in result.followups:
        if followup.content:
            return followup.content
    return ""

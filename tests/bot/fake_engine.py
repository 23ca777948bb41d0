"""A fake engine behind the bot's `Engine` interface, for bot tests without torch, and the
SimCord world (`running_world`) the generation tests run the real bot in.

It answers every `Submit` the way the real engine does (Started, a few Progress events with
real JPEG previews, then Done with a real PNG of the requested size), and can be told to
fail, to refuse to start, or to hold jobs until the test releases them (to test cancel
and queue order). It records every `Submit` it received.

SimCord runs the bot's tasks under a settlement check: a bot task waiting on something
SimCord doesn't know must declare it. `attach(env)` makes the fake declare its "blocked"
waits with `env.external_wait`, which is what a real engine's GPU time is to SimCord.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any

import discord
import simcord
from PIL import Image

from bot.app import ImagineBot
from bot.config import Settings
from engine import protocol
from tests.bot.conftest import make_settings, raise_unexpected_errors


def jpeg_bytes(width: int = 32, height: int = 32, colour: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def png_bytes(width: int, height: int, colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


class FakeEngineStartError(Exception):
    pass


class FakeEngine:
    """See the module docstring. Knobs: `fail_with`, `start_failures`, `blocked`,
    `progress_steps`, `step_delay` (real seconds between progress events)."""

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
    ) -> None:
        self.fail_with = fail_with
        self.fail_reason = fail_reason
        self.start_failures = start_failures
        self.progress_steps = progress_steps
        self.step_delay = step_delay
        #: Where a blocked engine holds a job: 0 = before any progress, N = after N events.
        self.hold_at_step = hold_at_step
        self.submits: list[protocol.Submit] = []
        self.start_calls = 0
        self.closed = False
        self._ready: protocol.Ready | None = None
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
        for event in self._wakers.values():
            event.set()

    def block(self) -> None:
        self._gate.clear()

    @property
    def prompts_received(self) -> list[list[tuple[str, float]]]:
        return [[(p.text, p.weight) for p in s.prompts] for s in self.submits]

    @property
    def jobs_received(self) -> list[str]:
        return [s.job for s in self.submits]

    # ---- the Engine interface ---------------------------------------------------------

    @property
    def ready_info(self) -> protocol.Ready | None:
        return self._ready

    async def start(self) -> protocol.Ready:
        self.start_calls += 1
        if self.start_failures > 0:
            self.start_failures -= 1
            raise FakeEngineStartError("fake engine: model file tiny.ckpt is missing")
        self._ready = protocol.Ready(protocol.PROTOCOL_VERSION, "cpu", "fake_vqgan", "fake_clip", 1)
        return self._ready

    def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        self.submits.append(job)
        return self._events(job)

    async def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        waker = self._wakers.get(job_id)
        if waker is not None:
            waker.set()

    async def close(self) -> None:
        self.closed = True

    # ---- internals ----------------------------------------------------------------------

    async def _wait(self, awaitable: Awaitable[Any]) -> Any:
        if self._env is not None:
            return await self._env.external_wait(awaitable, reason="fake engine holding a job")
        return await awaitable

    async def _held(self, job_id: str) -> None:
        """Wait until released or this job is cancelled."""
        if self._gate.is_set():
            return
        waker = self._wakers[job_id] = asyncio.Event()
        self.holding = job_id
        try:
            await self._wait(waker.wait())
        finally:
            self.holding = None
            self._wakers.pop(job_id, None)

    async def _events(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        yield protocol.Started(job.job)
        steps = max(1, self.progress_steps)
        for step in range(1, steps + 1):
            if step - 1 == self.hold_at_step:
                await self._held(job.job)
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            if job.job in self._cancelled:
                yield protocol.Cancelled(job.job)
                return
            iteration = max(1, job.iterations * step // steps)
            yield protocol.Progress(job.job, iteration, job.iterations, loss=1.0 / step,
                                    elapsed=0.5 * iteration, preview=jpeg_bytes(colour=(10 * step, 80, 40)))
        if self.fail_with is not None:
            yield protocol.Failed(job.job, self.fail_with, self.fail_reason)
            return
        yield protocol.Done(job.job, png_bytes(job.width, job.height), seed=job.seed if job.seed is not None else 1234,
                            seconds=0.5 * job.iterations, iterations=job.iterations,
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

    def bot_messages(self) -> list[discord.Message]:
        """The bot's channel messages, oldest first."""
        me = self.bot.user.id
        return [m for m in reversed(self.channel.history()) if m.author.id == me]

    def edits_of(self, message_id: int) -> list[Any]:
        """The JSON bodies of every edit the bot made to one message, in order."""
        path = f"/channels/{self.channel.id}/messages/{message_id}"
        return [r.json for r in self.env.http_requests if r.method == "PATCH" and r.path == path]


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
    await env.start()
    engine.attach(env)
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

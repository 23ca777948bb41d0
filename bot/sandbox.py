"""`vqgan-clip-bot --sandbox`: the real bot and the real engine in a simulated Discord,
shown in the browser. No token, no Discord, nothing sent anywhere.

Why: a newcomer sees the bot work before creating a Discord application, and a developer
sees the effect of a change in seconds. The simulated Discord is SimCord (the library the
tests drive the bot with); its preview mode serves a Discord-like page on 127.0.0.1 where
a person types slash commands (attachments included), clicks buttons, fills in modals and
sees embeds, images and message edits. Only this module imports SimCord, and only
`vqgan-clip-bot --sandbox` imports this module: the bot on Discord needs neither.

What the sandbox adds to SimCord's page, and why:

- The clock. SimCord gives the bot a virtual `time.monotonic` that moves only when told, so
  the progress throttle (`bot.runner`) would never let an edit through. A pump task moves
  the virtual clock along with the wall clock (and starts it at today's date, so message
  times read right).
- Refreshes. The page shows what SimCord last *published*; SimCord publishes after a
  person's action, but not after the bot writes on its own (progress, results). The pump
  republishes when the bot has written to the channel (a gateway event says so), not on a
  blind timer: every republish makes the page's next click carry a stale revision if it
  races the page's own poll, so the fewer the better.
- One operation at a time. SimCord refuses two operations at once (a page action while the
  pump moves the clock would fail as "uncertain"), so page actions, the pump and Python
  drivers (tests, `scripts/sandbox_screenshots.py`) take turns (`Sandbox.turn`).
- The progress interval is at least `MIN_PROGRESS_INTERVAL` (3 s): the page loses preview
  images when a message is edited faster than about once a second.
- Refusals are answers. SimCord records every exception that reaches the bot's error
  handlers, and the page shows the action as failed; the bot's refusals (`UserError`s,
  answered by its one handler) are left out (`_record_only_bugs`).
- The engine's work happens in another process: the engine client's waits are declared to
  SimCord as external input (`ExternallyWaited`), as SimCord requires of anything the bot
  waits on that it cannot see.

Members: "you" and "friend" (ordinary members) and "mod" (Manage Server), switched with
the page's "Viewing as" picker. The page has no message context menus ("Edit image"); the
Edit button and `/edit` do the same, and the welcome message says so (the page's texts, its
channel topic and welcome, are `bot.render.sandbox`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import discord


@contextlib.contextmanager
def _without_warnings_from(*loggers: str) -> Iterator[None]:
    """Drop the warnings the named loggers emit meanwhile."""
    def below_warning(record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING

    for name in loggers:
        logging.getLogger(name).addFilter(below_warning)
    try:
        yield
    finally:
        for name in loggers:
            logging.getLogger(name).removeFilter(below_warning)


# SimCord checks discord.py when imported, with a probe client that has no intents and no
# voice libraries; discord.py's warnings about that probe are not about this bot.
with _without_warnings_from("discord.state", "discord.client"):
    import simcord

from bot import render
from bot.app import ImagineBot
from bot.config import Settings
from bot.engine_client import EngineClient, EngineStartError, worker_command_for
from bot.engine_status import EngineStatus
from bot.errors import UserError
from bot.interactions import unwrap
from bot.services import Engine, worker_environment
from bot.worker_status import WorkerStatus
from engine import protocol
from engine.errors import ModelFileError
from engine.registry import resolve_clip, resolve_vqgan

log = logging.getLogger(__name__)

#: Seconds between edits of a progress message, at least: faster edits lose their
#: preview images in the page.
MIN_PROGRESS_INTERVAL = 3.0
#: Seconds between moves of the virtual clock.
CLOCK_TICK = 0.5
#: The bot's name in the page (SimCord's default is "TestBot").
BOT_NAME = "VQGAN-CLIP"
#: The members a person can be, in the order of the page's picker; "mod" has Manage Server.
MEMBERS = ("you", "friend", "mod")
#: The settings the tiny random models run with: small and few, so a job takes seconds on
#: a CPU (their images are noise at any size).
TINY_MODEL_SETTINGS: dict[str, Any] = dict(
    vqgan_model="tiny_vqgan", clip_model="tiny_clip", vqgan_config=None, vqgan_checkpoint=None,
    default_size=(256, 256), max_size=(512, 512), default_iterations=40, max_iterations=200,
    default_cutn=8, max_cutn=16,
)
#: The files `vqgan-clip make-test-models` writes that the sandbox uses.
TINY_MODEL_FILES = ("tiny_vqgan.yaml", "tiny_vqgan.ckpt", "tiny_clip.pt")
#: Gateway events that mean the channel changed.
MESSAGE_EVENTS = frozenset({"MESSAGE_CREATE", "MESSAGE_UPDATE", "MESSAGE_DELETE"})


class AttachableEngine(Engine, Protocol):
    """An engine the sandbox can declare to SimCord: `attach(env)` before the bot starts."""

    def attach(self, env: Any) -> Any: ...


class ExternallyWaited:
    """The real engine client, with its waits declared to SimCord as external input.

    SimCord settles each simulated interaction by waiting for the bot's own tasks; time
    spent computing in another process is outside input to it, which the bot code cannot
    declare itself. The client must be started outside the bot's tasks (before the bot
    starts), so that its supervision tasks are not the bot's; the runner then sees
    `ready_info` and does not start it.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.env: Any = None

    def attach(self, env: Any) -> ExternallyWaited:
        self.env = env
        return self

    @property
    def ready_info(self) -> protocol.Ready | None:
        return self.inner.ready_info

    async def start(self) -> protocol.Ready:
        return await self.inner.start()

    @property
    def status(self) -> EngineStatus:
        return self.inner.status

    def free_capacity(self) -> int:
        return self.inner.free_capacity()

    @property
    def workers(self) -> tuple[WorkerStatus, ...]:
        return self.inner.workers

    async def wait_status_change(self, after: int) -> EngineStatus:
        return await self.env.external_wait(self.inner.wait_status_change(after),
                                            reason="engine state")

    def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
        return self._events(self.inner.submit(job))

    async def _events(self, stream: AsyncIterator[protocol.JobEvent]) -> AsyncIterator[protocol.JobEvent]:
        iterator = stream.__aiter__()
        while True:
            try:
                event = await self.env.external_wait(iterator.__anext__(), reason="engine computing")
            except StopAsyncIteration:
                return
            yield event

    async def cancel(self, job_id: str) -> None:
        await self.inner.cancel(job_id)

    async def close(self) -> None:
        await self.inner.close()


class SandboxBot(ImagineBot):
    """The bot as the sandbox runs it. Only what it logs differs: there is no Discord
    application to invite, and its commands reach the simulated server at once."""

    async def on_ready(self) -> None:
        log.info("sandbox: the bot is ready")

    async def sync_commands(self) -> str:
        self.synced_commands = await self.tree.sync()
        return "the sandbox's simulated server (at once)"


# ---------------------------------------------------------------------- settings, models


@dataclass(frozen=True)
class SandboxPlan:
    """What the sandbox runs on: its settings, and whether the models are the tiny ones
    because the configured ones (`configured_models`, as the welcome names them) are absent."""

    settings: Settings
    tiny_models: bool
    configured_models: str


def model_names(settings: Settings) -> str:
    """The VQGAN and CLIP the settings name, as people read them."""
    vqgan = str(settings.vqgan_checkpoint) if settings.uses_custom_vqgan_files else settings.vqgan_model
    return f"{vqgan} + {settings.clip_model}"


def real_models_present(settings: Settings) -> bool:
    """Whether the configured VQGAN and CLIP files are all there (nothing is downloaded)."""
    try:
        resolve_vqgan(settings.vqgan_model, settings.model_dir, settings.vqgan_config,
                      settings.vqgan_checkpoint)
        resolve_clip(settings.clip_model, settings.model_dir)
    except ModelFileError:
        return False
    return True


def sandbox_settings(settings: Settings, data_dir: Path, *, tiny_models_dir: Path | None) -> Settings:
    """`settings` as the sandbox runs them: its own database and results under `data_dir`,
    no development server, a progress interval of at least `MIN_PROGRESS_INTERVAL`, and with
    `tiny_models_dir` the tiny models and their small sizes."""
    overrides: dict[str, Any] = dict(
        dev_guild_id=None,
        auto_download=False,
        database_path=data_dir / "bot.sqlite3",
        results_dir=data_dir / "results",
        progress_interval=max(settings.progress_interval, MIN_PROGRESS_INTERVAL),
    )
    if tiny_models_dir is not None:
        overrides.update(TINY_MODEL_SETTINGS, model_dir=tiny_models_dir)
    return replace(settings, **overrides)


async def make_tiny_models(directory: Path) -> None:
    """Write the tiny random models with `vqgan-clip make-test-models` (a child process:
    the bot process never imports torch), unless a previous start left them there."""
    if all((directory / name).is_file() for name in TINY_MODEL_FILES):
        return
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", "make-test-models", str(directory),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        raise EngineStartError(f"could not make the tiny test models in {directory}: "
                               f"{stderr.decode(errors='replace').strip()}")


async def plan_sandbox(settings: Settings, data_dir: Path) -> SandboxPlan:
    """The configured models when their files are present (GPU or CPU, as DEVICE says);
    else tiny random ones, made in `data_dir`."""
    configured = model_names(settings)
    if real_models_present(settings):
        log.info("sandbox: using the configured models (%s) from %s", configured, settings.model_dir)
        return SandboxPlan(sandbox_settings(settings, data_dir, tiny_models_dir=None), False, configured)
    tiny_dir = data_dir / "tiny-models"
    log.warning("sandbox: the configured models (%s) are not in %s; using tiny random models "
                "made in %s instead: their images are noise", configured,
                settings.model_dir.resolve(), tiny_dir)
    await make_tiny_models(tiny_dir)
    return SandboxPlan(sandbox_settings(settings, data_dir, tiny_models_dir=tiny_dir), True, configured)


# ---------------------------------------------------------------------- the sandbox


class Sandbox:
    """The bot in a SimCord world with one server, one channel and the `MEMBERS`, served
    as a page on 127.0.0.1 (`url`, which holds the page's secret token).

    `async with Sandbox(plan, engine) as sandbox:`; the engine must be started already
    (see `ExternallyWaited`) or need no start outside the bot (the tests' fake engine).
    Leaving closes the page, the bot and its engine.
    """

    def __init__(self, plan: SandboxPlan, engine: AttachableEngine, *,
                 kept_in: Path | None = None, port: int = 0) -> None:
        self.plan = plan
        self.engine = engine
        self.kept_in = kept_in
        self.port = port
        self.env: simcord.Env | None = None
        self.channel: Any = None
        self.members: dict[str, Any] = {}
        self.preview: Any = None
        #: Page actions and the pump take turns: SimCord runs one operation at a time.
        self._turn = asyncio.Lock()
        #: Set when the bot wrote to the channel since the page was last published.
        self._written = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        """The page's address; the part after `#` is its secret token."""
        if self.preview is None:
            raise RuntimeError("the sandbox is not running")
        return str(self.preview.url)

    async def __aenter__(self) -> Sandbox:
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    def turn(self) -> asyncio.Lock:
        """Hold (`async with sandbox.turn():`) while driving the simulated Discord from
        Python (`env.settle()`, a member's `slash`): SimCord runs one operation at a time,
        and the page's actions and the clock pump take turns through this lock."""
        return self._turn

    async def wait_closed(self) -> None:
        """Return when the page's "End preview session" closed the session."""
        await self.preview.wait_closed()

    async def _open(self) -> None:
        bot = SandboxBot(self.plan.settings, engine=self.engine, warm_engine=True)
        # No privileged intent approved, as for a new application on Discord: SimCord then
        # hides other members' attachments from the bot exactly as Discord does.
        env = self.env = simcord.Env(bot, approved_intents=discord.Intents.none())
        env.backend.bot_user.name = BOT_NAME
        _record_only_bugs(env)  # before start: SimCord hands its recorder out then
        guild = env.create_guild("VQGAN-CLIP sandbox")
        mods = guild.create_role("mods", permissions=discord.Permissions(manage_guild=True))
        self.channel = guild.create_text_channel("imagine", topic=render.sandbox_topic(
            tiny_models=self.plan.tiny_models, configured_models=self.plan.configured_models))
        self.engine.attach(env)
        await env.start()
        self._stack.push_async_callback(env.shutdown)
        self._stack.push_async_callback(bot.close)
        self.members = {
            "you": guild.add_member(env.create_user("you")),
            "friend": guild.add_member(env.create_user("friend")),
            "mod": guild.add_member(env.create_user("mod"), roles=[mods]),
        }
        # SimCord's clock starts on a fixed date; today's makes message times read right.
        behind = (datetime.now(UTC) - env.now()).total_seconds()
        if behind > 0:
            await env.advance_time(behind)
        channel = bot.get_channel(self.channel.id)
        assert isinstance(channel, discord.TextChannel)
        ready = self.engine.ready_info
        await channel.send(embed=render.sandbox_welcome(
            tiny_models=self.plan.tiny_models, configured_models=self.plan.configured_models,
            device_setting=self.plan.settings.device, device=ready.device if ready else None,
            kept_in=self.kept_in))
        self.preview = await self._stack.enter_async_context(env.preview(
            self.channel, viewers=[self.members[name] for name in MEMBERS], layout="channel",
            port=self.port))
        self._serialise_page_actions()
        env.backend.subscribers.append(self._on_gateway_event)
        self._stack.callback(env.backend.subscribers.remove, self._on_gateway_event)
        pump = asyncio.create_task(self._pump(), name="sandbox clock and page refresh")
        self._stack.push_async_callback(_cancel, pump)

    def _serialise_page_actions(self) -> None:
        """Make page actions wait for the pump, and the pump for them.

        SimCord's page answers each action (a command, a click, a modal) by running it as
        an operation on the simulated Discord; it refuses one while another runs, and the
        pump's clock moves and refreshes are operations too. Wrapping the page's action
        entry point (the one its HTTP server calls) in the pump's lock makes them queue.
        """
        act = self.preview._action

        async def serialised(context_id: str | None, body: Mapping[str, Any]) -> Any:
            # What the bot writes meanwhile is republished afterwards, for every page: an
            # action republishes only its own page, and a person may have two open.
            async with self._turn:
                return await act(context_id, body)

        setattr(self.preview, "_action", serialised)

    def _on_gateway_event(self, event: str, payload: Mapping[str, Any]) -> None:
        if event in MESSAGE_EVENTS and str(payload.get("channel_id")) == str(self.channel.id):
            self._written.set()

    async def _pump(self) -> None:
        """Move the virtual clock with the wall clock; republish the page when the bot
        has written to the channel."""
        env = self.env
        assert env is not None
        loop = asyncio.get_running_loop()
        wall_start, virtual_start = loop.time(), env.now()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), CLOCK_TICK)
            async with self._turn:
                try:
                    target = virtual_start.timestamp() + (loop.time() - wall_start)
                    behind = target - env.now().timestamp()
                    if behind > 0:
                        await env.advance_time(behind)
                    if self._written.is_set():
                        self._written.clear()
                        # Refused once the page's session ended ("End preview session");
                        # the bot runs on until the sandbox stops.
                        with contextlib.suppress(simcord.SetupError):
                            await self.preview.refresh()
                except TimeoutError as error:
                    # The bot was busy past SimCord's settle timeout; the next tick catches up.
                    log.debug("sandbox: the bot did not settle in time: %s", error)


def _record_only_bugs(env: simcord.Env) -> None:
    """Make SimCord record only the bot's bugs, not its refusals.

    SimCord records every exception that reaches the bot's error handlers, and the page
    reports an action that recorded one as failed ("outcome uncertain", a diagnostic). This
    bot sends its refusals (a bad prompt, a full queue, not an admin) down that very path on
    purpose, as `UserError`s, to its one handler, which answers them: an answered refusal
    is not a failure. Anything else still shows on the page as one.
    """
    record = env._record_error

    def record_bugs(error: BaseException) -> None:
        if not isinstance(unwrap(error), UserError):
            record(error)

    setattr(env, "_record_error", record_bugs)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# ---------------------------------------------------------------------- vqgan-clip-bot --sandbox


def engine_environment(plan: SandboxPlan) -> dict[str, str]:
    """The engine process's environment. On the tiny models, torch gets one CPU thread
    unless told otherwise: they gain nothing from more, and on a busy machine its threads
    spinning against other processes made a 10 s job take minutes."""
    environment = worker_environment()
    if plan.tiny_models:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            environment.setdefault(name, "1")
    return environment


def print_line(text: str) -> None:
    """Print to stdout at once, also when it is a pipe (which Python buffers)."""
    print(text, flush=True)


async def run_sandbox(settings: Settings, data_dir: Path | None,
                      announce: Callable[[str], None] = print_line) -> int:
    """`vqgan-clip-bot --sandbox`: run until Ctrl-C (or SIGTERM, or the page's "End preview
    session"); returns the exit code.

    The database and images go to `data_dir`, else to a temporary folder removed at the
    end. The engine starts first (outside the bot's tasks, see `ExternallyWaited`); then
    the page, whose address `announce` gets as the one line printed: it holds the page's
    secret token, and nothing is opened by itself.
    """
    with tempfile.TemporaryDirectory(prefix="vqgan-clip-sandbox-") as scratch:
        folder = data_dir if data_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        log.info("sandbox: database and images in %s (%s)", folder.resolve(),
                 "kept" if data_dir is not None else "throwaway: deleted at the end")
        try:
            plan = await plan_sandbox(settings, folder)
        except EngineStartError as error:
            print(f"the sandbox could not start: {error}", file=sys.stderr)
            return 1
        client = EngineClient(worker_command_for(plan.settings), env=engine_environment(plan))
        log.info("sandbox: starting the image engine (%s)", model_names(plan.settings))
        try:
            try:
                ready = await client.start()
            except EngineStartError as error:
                print(f"the sandbox's image engine did not start: {error}", file=sys.stderr)
                return 1
            log.info("sandbox: image engine ready on %s", ready.device)
            async with Sandbox(plan, ExternallyWaited(client), kept_in=data_dir) as sandbox:
                announce(f"sandbox ready: open {sandbox.url} in your browser "
                         "(the part after # is its secret token; Ctrl-C stops the sandbox)")
                await _until_stopped(sandbox.wait_closed())
            log.info("sandbox: stopped")
        finally:
            await client.close()  # closed with the bot already; this covers a failed start
    return 0


async def _until_stopped(closed: Awaitable[None]) -> None:
    """Wait for `closed`, SIGINT or SIGTERM. After the first signal the default handling
    is back, so a second Ctrl-C interrupts a stuck shutdown."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows, or not the main thread
            pass
    waiters = [asyncio.ensure_future(closed), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
    log.info("sandbox: stopping")

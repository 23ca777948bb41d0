#!/usr/bin/env python
"""Soak and fault injection (issue 15): the real bot, driven through SimCord, makes a
thousand jobs while faults arrive at random, and at the end a table says whether it kept
its promises.

    python bench/soak.py                        # 1,000 jobs, fake engine, seed 15
    python bench/soak.py --jobs 200 --seed 15   # what CI runs (tests/bot/test_soak.py)
    python bench/soak.py --real-engine --jobs 50  # real engine processes, tiny models
    python bench/soak.py --backend redis --jobs 300  # remote workers through a redis-server

What it drives: 50 members in 3 servers (several channels each) ask for images with
/imagine (a mix of shapes and iteration counts), /edit with an attached image, and the
Reroll and Vary buttons of results; a few members have a tiny quota, so some requests are
refused over quota (and some over the per-member queue cap). The engine is the real engine
process (`python -m engine worker`) on its fake runner (`--fake --batch N`, fast, no
torch), or with `--real-engine` on the tiny random models, so killing it is real. With
`--backend redis` it is what ENGINE_BACKEND=redis builds (`build_engine`: the bot's
`RedisBackend`) on a redis-server of the soak's own on 127.0.0.1, logged in as the
documented ACL user, with 2 worker processes on the fake runner
(`python -m engine worker --fake --redis`, one job at once each; `RedisSide`).

Faults, drawn from the seed (`plan_faults`): the Cancel button and /cancel on waiting and
running jobs; SIGKILL of the engine process while a job computes (with the Redis backend:
of the worker that started a computing job, started again under its name a second later);
a bot restart (close, then a new bot with a new engine on the same database and results)
while the queue is full; Discord answering 429 or 500 to a message send or edit
(SimCord's `inject_error`, once each); with the Redis backend only, a redis-server
restart while a job computes (SIGKILL, about a second down, started again empty: it
keeps no data).

Clocks: under SimCord the bot's `time.monotonic` (the progress throttle, the edit pace) and
its timers follow SimCord's virtual clock, which this harness moves along with the wall
clock after every step (as the sandbox does), so a second is about a second for both; the
store's times (time to start, time to done) are wall-clock. Edits are counted on SimCord's
clock, the one the bot paces itself by. The run lasts minutes, far inside the 24 h quota
window. Load: the fake engine is far faster than a GPU, so members are spread over six
channels per server; each channel still sees dozens of jobs a minute.

Invariants (`check_invariants`, a pure function of a `SoakState` snapshot, so that a test
can feed it a doctored one and see each check fail):
- every job ends in exactly one final state (done, failed, cancelled), and every job a
  member was told was queued is in the store;
- each member's usage (`QuotaPolicy.check`) equals their done jobs in the window, counted
  both from the store and from the results seen in the channels;
- no job is run to `done` twice (store transitions, result messages, the engine's Done
  events), none is left waiting or running (store, queue, runner);
- every done job's result file exists, and no file under RESULTS_DIR is owned by no job;
- message edits per channel: at most 5 in any 5 s (`bot.pacing`, as README and
  ARCHITECTURE state it: Discord's per-channel limit), so at most 60 in any minute; and of
  them queue edits at most 2 in any 5 s. New messages are not held back by the bot
  (`bot.pacing` says why): the most sends and edits together in 5 s is printed beside it,
  not checked. Interaction responses go to Discord's interaction webhooks, not the channel,
  and deletes have a bucket of their own: neither is counted;
- the bot raised nothing but the refusals it answers (SimCord records any other error);
- the bot's memory at the end within 20% of it after the first 100 jobs ended: its heap,
  what it keeps reachable (`bot_heap_bytes`), not the process's RSS, which the simulated
  Discord shares and grows (it keeps every message, as Discord does); RSS is printed.
Figures: p50/p95 time-to-start and time-to-done of done jobs, faults of each kind, the
memory curve (the bot's heap and the process's RSS; the harness's own request log is kept
small, see `RequestLog`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import gc
import io
import logging
import os
import random
import re
import signal
import statistics
import sys
import tempfile
import time
import types
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: What the CI test and the full run pass unless told otherwise.
DEFAULT_SEED = 15
#: `bot.pacing`: message edits at most 5 in any 5 s per channel (Discord's per-channel
#: limit as README cites it), so at most 60 in any minute.
EDITS_PER_CHANNEL = (5, 5.0)
#: `bot.pacing`: of them, queue edits at most 2 in any 5 s per channel.
QUEUE_EDITS = (2, 5.0)
#: The bot's heap at the end may be at most this much above it after the first
#: `MEMORY_BASE_JOBS` jobs ended; sampled every `MEMORY_STEP` jobs.
MEMORY_GROWTH = 0.20
MEMORY_BASE_JOBS = 100
MEMORY_STEP = 100
#: The text of a waiting job's message (`render.queued_embed`): how an edit is known as a
#: queue edit from the request alone.
QUEUE_TEXT = "Waiting in the queue"
QUEUED_ANSWER = re.compile(r"Queued job `([0-9a-z]+)`")
RESULT_NAME = re.compile(r"^([0-9a-z]+)\.png$")
FAKE_TOKEN = "MTAxMjM0NTY3ODkwMTIzNDU2.GaBcDe.soak-token-never-sent-anywhere_0123456789ab"
#: The Redis backend: fake workers started (each runs one job at once), seconds a killed one
#: stays down before it is started again, seconds redis-server stays down in a restart.
REDIS_WORKERS = 2
WORKER_RESTART_DELAY = 1.0
REDIS_DOWN_SECONDS = 1.0
#: Seconds between a worker's heartbeats (its key lives 3 of them): 1 s (TTL 3 s) keeps a
#: production worker's order (5 s, TTL 15 s) and still sees a killed worker within
#: seconds. (With 0.2 s, every Redis restart once looked like every worker dying: the bot
#: gave a worker only the TTL to beat again, not also its backoff, `WORKER_MAX_BACKOFF`.)
WORKER_HEARTBEAT = 1.0

log = logging.getLogger("soak")


# --------------------------------------------------------------------------------------
# Configuration and the fault plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakConfig:
    jobs: int = 1000
    members: int = 50
    guilds: int = 3
    channels_per_guild: int = 6
    seed: int = DEFAULT_SEED
    real_engine: bool = False
    #: "local": the engine process the bot starts (`EngineClient`); "redis": remote workers
    #: through a redis-server of the soak's own (`RedisSide`), as ENGINE_BACKEND=redis.
    backend: str = "local"
    #: Jobs the engine computes at once (`--batch`).
    batch: int = 4
    #: Seconds per fake iteration (`--fake-seconds-per-iteration`).
    seconds_per_iteration: float = 0.05
    #: Iterations members ask for (a few ask for none: the server's default).
    iterations: tuple[int, ...] = (4, 6, 8, 12, 16)
    default_iterations: int = 8
    progress_interval: float = 5.0
    default_quota: int = 40
    #: Members with a quota override this small: some of their requests are refused.
    small_quota_members: int = 5
    small_quota: int = 2
    max_queued_per_user: int = 3
    #: Jobs waiting or running above which members hold back (the queue stays "full").
    queue_target: int = 24
    #: A restart waits until at least this many jobs wait.
    restart_min_queue: int = 10
    #: Faults per 1,000 jobs (at least one of each but Discord errors: scaled, rounded).
    cancel_buttons: int = 40
    cancel_commands: int = 40
    engine_kills: int = 12
    bot_restarts: int = 5
    discord_errors: int = 60
    #: Only with the Redis backend.
    redis_restarts: int = 8
    #: Give up waiting for the last jobs after this many seconds.
    drain_timeout: float = 300.0
    #: The memory invariant's baseline: the bot's heap once this many jobs ended (a short
    #: run needs a smaller one), sampled every `memory_step` jobs ended.
    memory_base_jobs: int = MEMORY_BASE_JOBS
    memory_step: int = MEMORY_STEP
    work_dir: Path | None = None


BACKENDS = ("local", "redis")
#: Faults on every backend; with the Redis backend also `redis_restart` (`fault_kinds`).
FAULT_KINDS = ("cancel_button", "cancel_command", "engine_kill", "bot_restart", "discord_error")
REDIS_FAULT_KINDS = (*FAULT_KINDS, "redis_restart")


def fault_kinds(config: SoakConfig) -> tuple[str, ...]:
    """The kinds of fault a run with this config plans."""
    return REDIS_FAULT_KINDS if config.backend == "redis" else FAULT_KINDS


def plan_faults(config: SoakConfig) -> dict[int, list[str]]:
    """Which faults come after which accepted job (from the seed): job index -> kinds.
    Redis restarts are drawn after every other kind, so the other kinds fall after the
    same jobs on either backend (and a seed's local plan did not move when they came)."""
    rng = random.Random(config.seed * 7919 + 1)
    counts = {
        "cancel_button": config.cancel_buttons, "cancel_command": config.cancel_commands,
        "engine_kill": config.engine_kills, "bot_restart": config.bot_restarts,
        "discord_error": config.discord_errors,
    }
    if config.backend == "redis":
        counts["redis_restart"] = config.redis_restarts
    plan: dict[int, list[str]] = collections.defaultdict(list)
    for kind, per_thousand in counts.items():
        n = max(1, round(per_thousand * config.jobs / 1000)) if per_thousand else 0
        # Not in the first tenth (the memory baseline and some results to Reroll come first)
        # nor the last tenth (a restart or kill there would leave nothing to check after).
        low, high = max(1, config.jobs // 10), max(2, config.jobs - config.jobs // 10)
        for _ in range(n):
            plan[rng.randrange(low, high)].append(kind)
    return dict(plan)


# --------------------------------------------------------------------------------------
# The snapshot the invariants are checked on
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    id: str
    guild_id: int | None
    user_id: int
    status: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_path: str | None
    input_path: str | None
    image_prompt_path: str | None


@dataclass(frozen=True)
class Request:
    """One REST call the bot made: when (SimCord's clock, seconds), what, where, whether it was a
    queue edit (a waiting job's message)."""

    at: float
    method: str
    path: str
    queue_edit: bool = False

    @property
    def channel(self) -> str | None:
        parts = self.path.strip("/").split("/")
        return parts[1] if len(parts) >= 3 and parts[0] == "channels" and parts[2] == "messages" else None

    @property
    def is_edit(self) -> bool:
        return self.method == "PATCH" and self.channel is not None and self.path.count("/") == 4

    @property
    def is_write(self) -> bool:
        """A message sent or edited in a channel: what Discord's per-channel limit counts."""
        return self.is_edit or (self.method == "POST" and self.channel is not None
                                and self.path.count("/") == 3)


@dataclass(frozen=True)
class MemorySample:
    #: Jobs ended so far.
    jobs: int
    #: The bot's heap (`bot_heap_bytes`): what the invariant checks.
    heap: int
    #: This process's RSS, simulated Discord included: a figure, not checked.
    rss: int


@dataclass
class SoakState:
    """Everything the invariants read, as plain data."""

    jobs: list[JobRecord]
    #: Job ids members were told were queued (the answer "Queued job `id`").
    told_queued: set[str]
    #: Final transitions the store made, per job, in order (instrumented `_transition`).
    final_transitions: dict[str, list[str]]
    #: Done events the bot received from the engine, per job.
    engine_done: dict[str, int]
    #: Messages in the channels that show a job's result PNG, per job.
    result_messages: dict[str, int]
    #: (guild id, user id) -> `QuotaPolicy.check(...).used` at the end.
    usage: dict[tuple[int | None, int], int]
    now: float
    window: float
    #: Paths under RESULTS_DIR, relative, with "/" separators.
    files: list[str]
    queue_length: int
    running: int
    requests: list[Request]
    #: Memory after every `MEMORY_STEP` jobs ended, and at the end.
    memory: list[MemorySample]
    #: Errors SimCord recorded that were not answered refusals (their repr).
    unexpected_errors: list[str] = field(default_factory=list)
    #: The memory invariant's baseline: the sample once this many jobs ended.
    memory_base_jobs: int = MEMORY_BASE_JOBS


@dataclass(frozen=True)
class Row:
    name: str
    held: bool
    detail: str


FINAL = ("done", "failed", "cancelled")


def check_invariants(state: SoakState) -> list[Row]:
    """Every invariant on a snapshot: one row each, `held` and what was seen."""
    return [_final_states(state), _usage(state), _done_once(state), _files(state),
            _edit_rate(state), _queue_pace(state), _errors(state), _memory(state)]


def _final_states(state: SoakState) -> Row:
    by_id = {job.id: job for job in state.jobs}
    bad = [f"{job.id}: {job.status}" for job in state.jobs if job.status not in FINAL]
    bad += [f"{job_id}: {len(kinds)} final transitions {kinds}"
            for job_id, kinds in state.final_transitions.items() if len(kinds) > 1]
    bad += [f"{job.id}: final as {job.status} with no final transition seen"
            for job in state.jobs if job.status in FINAL and not state.final_transitions.get(job.id)]
    bad += [f"{job_id}: told queued, not in the store" for job_id in sorted(state.told_queued - set(by_id))]
    counts = collections.Counter(job.status for job in state.jobs)
    detail = f"{len(state.jobs)} jobs: " + ", ".join(f"{counts[s]} {s}" for s in FINAL)
    return Row("every job ends in exactly one final state", not bad, _with(detail, bad))


def _usage(state: SoakState) -> Row:
    since = state.now - state.window
    in_store: collections.Counter[tuple[int | None, int]] = collections.Counter()
    seen: collections.Counter[tuple[int | None, int]] = collections.Counter()
    for job in state.jobs:
        if job.status == "done" and job.created_at > since:
            in_store[(job.guild_id, job.user_id)] += 1
            if state.result_messages.get(job.id):
                seen[(job.guild_id, job.user_id)] += 1
    members = set(state.usage) | set(in_store)
    bad = [f"member {user} in {guild}: usage {state.usage.get((guild, user), 0)}, done "
           f"{in_store[(guild, user)]} (results seen {seen[(guild, user)]})"
           for guild, user in sorted(members, key=str)
           if not state.usage.get((guild, user), 0) == in_store[(guild, user)] == seen[(guild, user)]]
    detail = f"{len(members)} members, {sum(state.usage.values())} charged"
    return Row("usage per member = done jobs in the window", not bad, _with(detail, bad))


def _done_once(state: SoakState) -> Row:
    bad = [f"{job_id}: {kinds.count('done')} times done in the store"
           for job_id, kinds in state.final_transitions.items() if kinds.count("done") > 1]
    bad += [f"{job_id}: {n} result messages" for job_id, n in state.result_messages.items() if n > 1]
    bad += [f"{job_id}: the engine sent Done {n} times" for job_id, n in state.engine_done.items() if n > 1]
    done = {job.id for job in state.jobs if job.status == "done"}
    bad += [f"{job_id}: result shown but the job is not done"
            for job_id in state.result_messages if job_id not in done]
    bad += [f"{job_id}: done, no result message" for job_id in sorted(done - set(state.result_messages))]
    left = [job.id for job in state.jobs if job.status in ("queued", "running")]
    if left:
        bad.append(f"{len(left)} left queued/running: {left[:5]}")
    if state.queue_length or state.running:
        bad.append(f"queue holds {state.queue_length}, runner holds {state.running}")
    return Row("no job done twice; none left waiting or running", not bad,
               _with(f"{len(done)} done, each once", bad))


def _files(state: SoakState) -> Row:
    jobs = {job.id: job for job in state.jobs}
    owned: set[str] = set()
    for job in state.jobs:
        owned.update(p for p in (job.input_path, job.image_prompt_path) if p)
        if job.status == "done" and job.result_path:
            owned.add(job.result_path)
    bad = [f"{job.id}: result {job.result_path} missing" for job in state.jobs
           if job.status == "done" and (not job.result_path or job.result_path not in state.files)]
    for path in state.files:
        if path in owned:
            continue
        parts = path.split("/")
        if parts[0] == "frames" and len(parts) == 3 and jobs.get(parts[1]) is not None \
                and jobs[parts[1]].status == "done":
            continue  # a done job's timelapse frames
        bad.append(f"{path}: owned by no job")
    return Row("every result file exists; no file without a job", not bad,
               _with(f"{len(state.files)} files", bad))


def _max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def _per_channel(state: SoakState, wanted: Callable[[Request], bool]) -> dict[str, list[float]]:
    """When each request that `wanted` picks was made, per channel (SimCord's clock)."""
    per_channel: dict[str, list[float]] = collections.defaultdict(list)
    for request in state.requests:
        if request.channel is not None and wanted(request):
            per_channel[request.channel].append(request.at)
    return per_channel


def _edit_rate(state: SoakState) -> Row:
    limit, window = EDITS_PER_CHANNEL
    per_channel = _per_channel(state, lambda request: request.is_edit)
    worst = {channel: _max_in_window(times, window) for channel, times in per_channel.items()}
    bad = [f"channel {channel}: {n} edits in {window:g} s"
           for channel, n in sorted(worst.items()) if n > limit]
    per_minute = max((_max_in_window(times, 60.0) for times in per_channel.values()), default=0)
    writes = max((_max_in_window(times, window) for times in
                  _per_channel(state, lambda request: request.is_write).values()), default=0)
    times = [t for ts in per_channel.values() for t in ts]
    span = max(times) - min(times) if times else 0.0
    return Row(f"edits per channel <= {limit} in {window:g} s", not bad,
               _with(f"most {max(worst.values(), default=0)} in {window:g} s, {per_minute} in a "
                     f"minute (of {len(times)} over {span:.0f} s); with new messages, most "
                     f"{writes} in {window:g} s", bad))


def _queue_pace(state: SoakState) -> Row:
    limit, window = QUEUE_EDITS
    per_channel: dict[str, list[float]] = collections.defaultdict(list)
    for request in state.requests:
        if request.is_edit and request.queue_edit and request.channel is not None:
            per_channel[request.channel].append(request.at)
    worst = {channel: _max_in_window(times, window) for channel, times in per_channel.items()}
    bad = [f"channel {channel}: {n} queue edits in {window:g} s" for channel, n in sorted(worst.items())
           if n > limit]
    return Row(f"queue edits per channel <= {limit} in {window:g} s", not bad,
               _with(f"most {max(worst.values(), default=0)} "
                     f"(of {sum(len(t) for t in per_channel.values())} queue edits)", bad))


def _errors(state: SoakState) -> Row:
    return Row("the bot raised nothing but answered refusals", not state.unexpected_errors,
               _with("none" if not state.unexpected_errors else "", state.unexpected_errors))


def _memory(state: SoakState) -> Row:
    name = f"bot's heap at the end within {MEMORY_GROWTH:.0%} of it after {state.memory_base_jobs} jobs"
    base = next((sample for sample in state.memory if sample.jobs >= state.memory_base_jobs), None)
    if base is None:
        return Row(name, False, "no memory sample after the first jobs")
    end = state.memory[-1]
    growth = end.heap / base.heap - 1
    return Row(name, growth <= MEMORY_GROWTH,
               f"{base.heap / 2**10:.0f} -> {end.heap / 2**10:.0f} KiB ({growth:+.1%}); process RSS "
               f"{base.rss / 2**20:.0f} -> {end.rss / 2**20:.0f} MiB, simulated Discord included")


def _with(detail: str, bad: list[str]) -> str:
    if not bad:
        return detail
    shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (detail + ". " if detail else "") + f"VIOLATED: {shown}"


def percentiles(values: Iterable[float]) -> tuple[float, float] | None:
    """p50 and p95 (inclusive quantiles), None without values."""
    data = sorted(values)
    if not data:
        return None
    if len(data) == 1:
        return data[0], data[0]
    cuts = statistics.quantiles(data, n=20, method="inclusive")
    return statistics.median(data), cuts[18]


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclass
class SoakReport:
    config: SoakConfig
    rows: list[Row]
    #: Named figures: counts of jobs, refusals, faults; timings; the memory curve.
    figures: dict[str, Any]
    #: Faults injected, by kind (`FAULT_KINDS`; Discord errors by status and method).
    faults: dict[str, int] = field(default_factory=dict)

    @property
    def held(self) -> bool:
        return all(row.held for row in self.rows)

    def table(self) -> str:
        width = max(len(row.name) for row in self.rows)
        lines = [f"{'invariant'.ljust(width)}  held  detail", f"{'-' * width}  ----  ------"]
        lines += [f"{row.name.ljust(width)}  {'yes ' if row.held else 'NO  '}  {row.detail}"
                  for row in self.rows]
        lines.append("")
        for name, value in self.figures.items():
            lines.append(f"{name}: {value}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Instruments: what the bot did, seen from outside it
# --------------------------------------------------------------------------------------


class RequestLog(list[Any]):
    """Stands in for SimCord's `backend.http_requests`: keeps each REST call as a small
    `Request` with the time it was made (SimCord's clock), not the full request (a thousand jobs'
    bodies would grow this process's RSS, which the soak reports)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__()
        self.clock = clock
        self.requests: list[Request] = []

    def append(self, entry: Any) -> None:
        body = entry.json if isinstance(entry.json, dict) else {}
        texts = [str(embed.get("description") or "") for embed in body.get("embeds") or []
                 if isinstance(embed, dict)]
        self.requests.append(Request(self.clock(), entry.method, entry.path,
                                     any(QUEUE_TEXT in text for text in texts)))


#: What the bot's heap walk does not enter: the simulated Discord (SimCord), the event
#: loop and its transports (shared with the simulator, and reached from everything), and
#: code, classes and modules (loaded once, not grown by jobs).
_NOT_THE_BOTS = ("simcord", "asyncio", "_asyncio", "concurrent", "threading", "selectors", "socket", "logging")
_SHARED_TYPES = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                 types.CodeType, types.MethodDescriptorType, types.WrapperDescriptorType,
                 types.GetSetDescriptorType, types.MemberDescriptorType, types.FrameType)


def bot_heap_bytes(bot: Any) -> int:
    """The bytes of Python objects the bot keeps alive: everything reachable from the bot
    and from its own asyncio tasks, not entering the simulated Discord (`_NOT_THE_BOTS`).

    Why not RSS: this process also hosts SimCord, which keeps every message, interaction,
    request and error the run makes, as Discord's servers would, so the process's RSS
    grows with the run whatever the bot does. A real bot runs alone in its process; what
    it can leak is what it keeps reachable, which this counts (`sys.getsizeof` of each
    object once; allocator overhead and fragmentation are not in it). Frames are not
    entered, but a task's coroutine is, with the locals it holds. A bot restart (one of
    the faults) starts a new bot: a leak shows as far as it grew since the last restart
    (a Job object kept per progress edit, planted by hand, added about 700 bytes a job)."""
    def ours(task: asyncio.Task[Any]) -> bool:
        code = getattr(task.get_coro(), "cr_code", None)
        name = code.co_filename if code is not None else ""
        return not any(part in name for part in ("/simcord/", "/bench/", "/asyncio/"))

    roots: list[Any] = [bot, *(task.get_coro() for task in asyncio.all_tasks() if ours(task))]
    seen: set[int] = set()
    total = 0
    while roots:
        obj = roots.pop()
        if id(obj) in seen or isinstance(obj, _SHARED_TYPES):
            continue
        seen.add(id(obj))
        if type(obj).__module__.split(".")[0] in _NOT_THE_BOTS:
            continue
        total += sys.getsizeof(obj, 0)
        if isinstance(obj, (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)):
            frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
            if frame is not None:
                roots.extend(frame.f_locals.values())
            awaited = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
            if awaited is not None:
                roots.append(awaited)
            continue
        roots.extend(gc.get_referents(obj))
    return total


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def watching_transitions(into: dict[str, list[str]]) -> Any:
    """Record every final transition `Store` makes (`Store._transition`), per job."""
    from bot.store import Store

    original = Store._transition

    async def recorded(self: Store, job_id: str, to: Any, **changes: Any) -> Any:
        job = await original(self, job_id, to, **changes)
        if to.value in FINAL:
            into.setdefault(job.id, []).append(to.value)
        return job

    Store._transition = recorded  # type: ignore[method-assign]
    try:
        yield
    finally:
        Store._transition = original  # type: ignore[method-assign]


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


def png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, "PNG")
    return buffer.getvalue()


def redis_settings(url: str) -> dict[str, Any]:
    """What an operator sets for remote workers on the fake runner: ENGINE_BACKEND=redis,
    REDIS_URL, and the models the fake worker's Ready names ("fake"; the bot refuses a
    worker that runs other models than its VQGAN_MODEL and CLIP_MODEL)."""
    from engine.redis_url import parse_redis_url

    return {"engine_backend": "redis", "redis_url": parse_redis_url(url),
            "vqgan_model": "fake", "clip_model": "fake"}


class RedisSide:
    """The Redis backend's other end for a soak: a redis-server of its own on 127.0.0.1 and
    `REDIS_WORKERS` fake workers on it (`python -m engine worker --fake --redis`), which the
    faults kill and restart.

    Both come from tests/redis_server.py, which the Redis integration tests use: the bot
    and the workers log in as the ACL user docs/remote-workers.md documents, so the soak
    puts the documented setup under load, not a default-user Redis. Imported here, only
    for this backend (bench runs with the repository root on the path)."""

    def __init__(self, config: SoakConfig, work_dir: Path) -> None:
        from tests.redis_server import LocalRedis, Workers, redis_server_binary

        binary = redis_server_binary()
        if binary is None:
            raise SystemExit("--backend redis needs a redis-server: on PATH, in $REDIS_SERVER, "
                             "or the test extra's beside the venv's python (./test.sh installs it)")
        self.config = config
        self.server = LocalRedis(binary, work_dir / "redis")
        (work_dir / "workers").mkdir(parents=True, exist_ok=True)
        self.workers = Workers(self.server, work_dir / "workers")
        self.names = [f"soak-w{i + 1}" for i in range(REDIS_WORKERS)]
        self._restarts: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> None:
        self.server.start()
        for name in self.names:
            self.start_worker(name)

    def start_worker(self, name: str) -> None:
        self.workers.start(name, seconds_per_iteration=self.config.seconds_per_iteration,
                           heartbeat=WORKER_HEARTBEAT)

    def kill_worker(self, name: str) -> bool:
        """SIGKILL worker `name` (False if it is not running), and start it again under the
        same name after `WORKER_RESTART_DELAY` s, so that the capacity comes back (as a
        supervisor such as Docker's restart policy would)."""
        process = self.workers.processes.get(name)
        if process is None or process.poll() is not None:
            return False
        process.kill()
        task = asyncio.get_running_loop().create_task(self._restart_later(name))
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)
        return True

    async def _restart_later(self, name: str) -> None:
        await asyncio.sleep(WORKER_RESTART_DELAY)
        await asyncio.to_thread(self.workers.processes[name].wait)
        self.start_worker(name)

    def kill_server(self) -> None:
        self.server.kill()

    async def start_server(self) -> None:
        """Start redis-server again on its port (empty: it keeps no data), in a thread: it
        waits until the server answers, and the bot must go on meanwhile."""
        await asyncio.to_thread(self.server.start)

    async def close(self) -> None:
        """Stop the workers (pending restarts first, so none comes back), then the server."""
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)
        await asyncio.to_thread(self.workers.stop)
        await asyncio.to_thread(self.server.stop)

    def logs(self) -> str:
        """The workers' logs and the server's, for a run that failed."""
        server_log = self.server.directory / "redis.log"
        tail = server_log.read_text()[-3000:] if server_log.exists() else ""
        return self.workers.logs() + f"\n--- redis.log\n{tail}"


class Soak:
    """One run: the world, the members, the engine, the bookkeeping."""

    def __init__(self, config: SoakConfig, work_dir: Path, say: Callable[[str], None]) -> None:
        from bot.config import Settings

        self.config = config
        self.rng = random.Random(config.seed)
        self.say = say
        self.work_dir = work_dir
        self.settings = Settings(
            discord_token=FAKE_TOKEN, auto_download=False,
            database_path=work_dir / "bot.sqlite3", results_dir=work_dir / "results",
            default_size=(64, 64), max_size=(96, 96), default_iterations=config.default_iterations,
            max_iterations=max(config.iterations), default_cutn=4, max_cutn=4,
            progress_interval=config.progress_interval, default_daily_quota=config.default_quota,
            max_queued_per_user=config.max_queued_per_user, engine_batch=config.batch,
        )
        self.redis = RedisSide(config, work_dir) if config.backend == "redis" else None
        if self.redis is not None:
            self.settings = replace(self.settings, **redis_settings(self.redis.url))
        self.env: Any = None
        #: Every engine started (closed at the end), the last one the bot's.
        self.clients: list[Any] = []
        self.engine_done: collections.Counter[str] = collections.Counter()
        #: The event streams of the jobs the bot handed the engine and that have not ended:
        #: a remote job's says which worker started it (`RemoteJobStream.worker`).
        self.streams: dict[str, Any] = {}
        self.transitions: dict[str, list[str]] = {}
        self.told_queued: dict[str, tuple[int, int]] = {}
        self.refusals: collections.Counter[str] = collections.Counter()
        self.asked: collections.Counter[str] = collections.Counter()
        self.faults: collections.Counter[str] = collections.Counter()
        self.requests = RequestLog(lambda: self.env.now().timestamp())
        self.memory: list[MemorySample] = []
        self.last_advance = time.perf_counter()
        self.tiny_models: Path | None = None

    # ---- the engine ------------------------------------------------------------------

    def engine_command(self) -> list[str]:
        from bot.engine_client import worker_command

        if not self.config.real_engine:
            return [sys.executable, "-m", "engine", "worker", "--fake", "--batch", str(self.config.batch),
                    "--fake-seconds-per-iteration", str(self.config.seconds_per_iteration)]
        assert self.tiny_models is not None
        return worker_command(vqgan="tiny_vqgan", clip="tiny_clip", model_dir=self.tiny_models,
                              device="cpu", batch=self.config.batch)

    async def start_local_engine(self) -> Any:
        """The engine process (`EngineClient`), started."""
        from bot.engine_client import EngineClient

        environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        client = EngineClient(self.engine_command(), env=environment, ready_timeout=300,
                              restart_delay=0.2, max_restart_delay=2.0)
        self.clients.append(client)
        await client.start()
        return client

    async def start_remote_engine(self) -> Any:
        """The engine the bot builds for ENGINE_BACKEND=redis (`build_engine`: a
        `RedisBackend` with the bot's own timings), started: a worker is live."""
        from bot.services import build_engine

        backend = build_engine(self.settings)
        self.clients.append(backend)
        await backend.start()
        return backend

    async def new_engine(self) -> Any:
        """A started engine, wrapped as the sandbox wraps it (its waits declared to
        SimCord), counting the Done events it hands the bot and keeping the streams of
        jobs in flight. Started here, outside the bot's tasks, so its supervision is not
        the bot's. The wrapper reaches the soak's books through its class's closure, not
        an attribute: the bot's heap walk (`bot_heap_bytes`) enters the engine, not
        classes, and must not count the harness's books as the bot's."""
        from bot.sandbox import ExternallyWaited
        from engine import protocol

        inner = await (self.start_local_engine() if self.redis is None else self.start_remote_engine())
        counts, streams = self.engine_done, self.streams

        class Counted(ExternallyWaited):
            def submit(self, job: protocol.Submit) -> AsyncIterator[protocol.JobEvent]:
                stream = self.inner.submit(job)
                streams[job.job] = stream
                return self._counted(job.job, stream)

            async def _counted(self, job_id: str, stream: AsyncIterator[protocol.JobEvent]
                               ) -> AsyncIterator[protocol.JobEvent]:
                try:
                    async for event in self._events(stream):
                        if isinstance(event, protocol.Done):
                            counts[event.job] += 1
                        yield event
                finally:
                    if streams.get(job_id) is stream:
                        del streams[job_id]

        return Counted(inner)

    # ---- the world ---------------------------------------------------------------------

    async def start(self) -> None:
        import discord
        import simcord

        from bot.app import ImagineBot

        if self.config.real_engine:
            from bot.sandbox import make_tiny_models

            self.tiny_models = self.work_dir / "tiny-models"
            await make_tiny_models(self.tiny_models)
        if self.redis is not None:
            self.redis.start()
        engine = await self.new_engine()
        if self.redis is not None:  # every worker live before the first job
            async with asyncio.timeout(60):
                while engine.free_capacity() < REDIS_WORKERS:
                    await asyncio.sleep(0.05)
        self.env = simcord.Env(ImagineBot(self.settings, engine=engine),
                               approved_intents=discord.Intents.none(), settle_timeout=120.0)
        engine.attach(self.env)
        self.env.backend.http_requests = self.requests
        self.members: list[Any] = []
        self.channels: dict[int, list[Any]] = {}
        for g in range(self.config.guilds):
            guild = self.env.create_guild(f"server-{g + 1}")
            self.channels[guild.id] = [guild.create_text_channel(f"art-{c + 1}")
                                       for c in range(self.config.channels_per_guild)]
            self.members += [(guild, i) for i in range(g, self.config.members, self.config.guilds)]
        await self.env.start()
        actors = []
        for guild, i in self.members:
            actors.append(guild.add_member(self.env.create_user(f"member{i + 1:02d}")))
        self.actors = actors
        self.guild_of = {actor.id: guild.id for actor, (guild, _) in zip(actors, self.members)}
        store = self.bot.services.store
        self.small_quota = set(self.rng.sample([a.id for a in actors], self.config.small_quota_members))
        for actor in actors:
            if actor.id in self.small_quota:
                await store.set_quota_override(self.guild_of[actor.id], actor.id, self.config.small_quota)
        # Some members ask far more than others (and so meet their quota).
        self.weights = [1.0 / (1 + 0.12 * i) for i in range(len(actors))]

    @property
    def bot(self) -> Any:
        return self.env.bot

    async def pump(self, pause: float = 0.0) -> None:
        """Let the bot work for `pause` real seconds, then move SimCord's clock to the wall
        clock (its timers: the queue edits' pace, discord.py's waits)."""
        if pause:
            await asyncio.sleep(pause)
        now = time.perf_counter()
        elapsed, self.last_advance = now - self.last_advance, now
        await self.env.advance_time(max(elapsed, 0.001))

    # ---- members ---------------------------------------------------------------------

    async def jobs(self) -> list[Any]:
        return list(await self.bot.services.store.jobs_with_status())

    def waiting(self) -> int:
        services = self.bot.services
        return len(services.scheduler) + len(services.running)

    def _channel_for(self, actor: Any) -> Any:
        return self.rng.choice(self.channels[self.guild_of[actor.id]])

    def _note(self, kind: str, result: Any, actor: Any) -> bool:
        text = _answer_text(result)
        self.asked[kind] += 1
        match = QUEUED_ANSWER.search(text)
        if match:
            self.told_queued[match.group(1)] = (self.guild_of[actor.id], actor.id)
            return True
        lowered = text.lower()
        reason = ("over quota" if "in the last 24 h" in lowered or "daily quota" in lowered
                  else "queue cap" if "waiting or running" in lowered or "queue is full" in lowered
                  else "job message not posted (Discord error)" if "post" in lowered
                  else text[:60])
        self.refusals[reason] += 1
        return False

    async def ask(self) -> bool:
        """One member asks for one image, one way or another; whether it was queued."""
        actor = self.rng.choices(self.actors, weights=self.weights)[0]
        channel = self._channel_for(actor)
        roll = self.rng.random()
        if roll < 0.25:
            results = [job for job in await self.recent_done(actor)]
            if results:
                job = self.rng.choice(results)
                message = self.message(job.channel_id, job.result_message_id)
                if message is not None:
                    label = self.rng.choice(("Reroll", "Vary"))
                    return self._note(label.lower(), await actor.click(message, label=label), actor)
        if roll < 0.40:
            side = self.rng.choice((48, 64, 80))
            image = png(side, self.rng.choice((48, 64)), (self.rng.randrange(256), 90, 40))
            options: dict[str, Any] = {"prompt": f"edit {self.rng.randrange(10**6)}",
                                       "image": ("source.png", image)}
            if self.rng.random() < 0.7:
                options["iterations"] = self.rng.choice(self.config.iterations)
            return self._note("edit", await actor.slash(channel, "edit", **options), actor)
        options = {"prompt": f"a picture {self.rng.randrange(10**6)} + colour:0.5"}
        shape = self.rng.choice((None, None, "square", "portrait", "landscape", "wide", "tall"))
        if shape:
            options["size"] = shape
        if self.rng.random() < 0.8:
            options["iterations"] = self.rng.choice(self.config.iterations)
        return self._note("imagine", await actor.slash(channel, "imagine", **options), actor)

    async def recent_done(self, actor: Any) -> list[Any]:
        store = self.bot.services.store
        guild = self.guild_of[actor.id]
        done = await store.jobs_with_status("done", guild_id=guild, limit=None)
        return [job for job in done[-30:] if job.result_message_id]

    def message(self, channel_id: int, message_id: int | None) -> Any:
        from simcord.results import to_discord_message

        if message_id is None:
            return None
        stored = self.env.backend.messages.get(channel_id, {}).get(message_id)
        return to_discord_message(self.env, stored) if stored is not None else None

    def actor(self, user_id: int) -> Any:
        return next(a for a in self.actors if a.id == user_id)

    # ---- faults ----------------------------------------------------------------------

    async def unfinished(self) -> list[Any]:
        return list(await self.bot.services.store.jobs_with_status("queued", "running"))

    async def cancel(self, by_button: bool) -> bool:
        jobs = await self.unfinished()
        if not jobs:
            return False
        job = self.rng.choice(jobs)
        actor = self.actor(job.user_id)
        if by_button:
            message = self.message(job.channel_id, job.progress_message_id)
            if message is None:
                return False
            await actor.click(message, label="Cancel")
        else:
            channel = next(c for c in self.channels[job.guild_id] if c.id == job.channel_id)
            await actor.slash(channel, "cancel", job=job.id)
        return True

    def kill_engine(self) -> bool:
        """SIGKILL the engine process (with the Redis backend, a worker) while a job
        computes in it."""
        services = self.bot.services
        computing = [job.job_id for job in services.running.values()
                     if job.started and job.iteration >= 1]
        if not computing:
            return False
        if self.redis is not None:
            return self.kill_worker(computing)
        ready = services.engine.ready_info
        if ready is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(ready.pid, signal.SIGKILL)
        return True

    def kill_worker(self, computing: list[str]) -> bool:
        """SIGKILL the worker that started one of the jobs `computing` (it comes back a
        moment later: `RedisSide.kill_worker`)."""
        assert self.redis is not None
        for job_id in computing:
            worker = getattr(self.streams.get(job_id), "worker", None)
            if worker is not None and self.redis.kill_worker(worker):
                return True
        return False

    async def restart_redis(self) -> bool:
        """Kill redis-server while a job computes, leave it down `REDIS_DOWN_SECONDS` while
        the bot goes on, then start it again on its port, empty (it keeps no data: the
        bot's and the workers' keys, streams and heartbeats are gone)."""
        assert self.redis is not None
        if not any(job.started for job in self.bot.services.running.values()):
            return False
        self.redis.kill_server()
        back_at = time.perf_counter() + REDIS_DOWN_SECONDS
        while time.perf_counter() < back_at:
            await self.pump(0.05)
        await self.redis.start_server()
        return True

    async def restart_bot(self) -> bool:
        """Close the bot (as a shutdown does: running jobs stay `running`) and start a new
        one on the same database and results, with a new engine (with the Redis backend, a
        new `RedisBackend` on the same redis-server and workers), while the queue is full."""
        from bot.app import ImagineBot

        if len(self.bot.services.scheduler) < self.config.restart_min_queue:
            return False
        await self.bot.close()
        old = self.clients[-1]
        await old.close()
        engine = await self.new_engine()
        engine.attach(self.env)
        await self.env.restart_bot(ImagineBot(self.settings, engine=engine))
        return True

    def discord_error(self) -> bool:
        """Discord answers one message send or edit in one channel with 429 or 500."""
        guild = self.rng.choice(list(self.channels))
        channel = self.rng.choice(self.channels[guild])
        status = self.rng.choice((429, 500))
        if self.rng.random() < 0.5:
            method, path = "POST", f"/channels/{channel.id}/messages"
        else:
            method, path = "PATCH", f"/channels/{channel.id}/messages/*"
        message = "You are being rate limited." if status == 429 else "Internal Server Error"
        self.env.inject_error(method, path, status=status, message=message, times=1)
        self.faults[f"discord {status} on {'send' if method == 'POST' else 'edit'}"] += 1
        return True

    async def fault(self, kind: str) -> bool:
        if kind == "cancel_button":
            return await self.cancel(by_button=True)
        if kind == "cancel_command":
            return await self.cancel(by_button=False)
        if kind == "engine_kill":
            return self.kill_engine()
        if kind == "bot_restart":
            return await self.restart_bot()
        if kind == "discord_error":
            return self.discord_error()
        if kind == "redis_restart":
            return await self.restart_redis()
        raise ValueError(kind)

    # ---- the whole run ---------------------------------------------------------------

    async def ended(self) -> int:
        counts = await self.bot.services.store.count_finished_since(0.0)
        return sum(counts.values())

    async def sample_memory(self, force: bool = False) -> None:
        ended = await self.ended()
        step = self.config.memory_step
        if force or not self.memory or ended // step > self.memory[-1].jobs // step:
            gc.collect()
            self.memory.append(MemorySample(ended, bot_heap_bytes(self.bot), rss_bytes()))

    async def run(self) -> None:
        plan = plan_faults(self.config)
        pending: list[str] = []
        accepted = attempts = reported = 0
        started = time.perf_counter()
        while accepted < self.config.jobs:
            if self.waiting() >= self.config.queue_target:
                await self.pump(0.02)
            else:
                attempts += 1
                if await self.ask():
                    accepted += 1
                    pending += plan.get(accepted, [])
                await self.pump()
            still = []
            for kind in pending:
                if await self.fault(kind):
                    if kind != "discord_error":  # counted by its status and method
                        self.faults[kind] += 1
                else:
                    still.append(kind)
            pending = still
            await self.sample_memory()
            if attempts % 100 == 0 and attempts != reported:
                reported = attempts
                self.say(f"  {accepted} jobs queued of {attempts} asked, {await self.ended()} ended, "
                         f"{time.perf_counter() - started:.0f} s")
        self.skipped_faults = collections.Counter(pending)
        deadline = time.perf_counter() + self.config.drain_timeout
        while time.perf_counter() < deadline:
            if self.waiting() == 0 and not await self.unfinished():
                break
            await self.pump(0.05)
            await self.sample_memory()
        # The last paced queue edits and deletions go out.
        for _ in range(3):
            await self.pump(0.05)
        await self.sample_memory(force=True)
        self.elapsed = time.perf_counter() - started

    async def snapshot(self) -> SoakState:
        from bot.interactions import unwrap
        from bot.errors import UserError

        services = self.bot.services
        jobs = await services.store.jobs_with_status()
        records = [JobRecord(j.id, j.guild_id, j.user_id, j.status.value, j.created_at, j.started_at,
                             j.finished_at, j.result_path, j.input_path,
                             j.params.get("image_prompt_path")) for j in jobs]
        usage: dict[tuple[int | None, int], int] = {}
        for actor in self.actors:
            guild = self.guild_of[actor.id]
            usage[(guild, actor.id)] = (await services.quotas.check(guild, actor.id)).used
        me = self.bot.user.id
        results: collections.Counter[str] = collections.Counter()
        for channel_messages in self.env.backend.messages.values():
            for message in channel_messages.values():
                if message.author_id != me:
                    continue
                for attachment in message.attachments:
                    match = RESULT_NAME.match(str(attachment.get("filename", "")))
                    if match:
                        results[match.group(1)] += 1
        root = services.results_dir
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        errors = [repr(e) for e in self.env.errors_since(0) if not isinstance(unwrap(e), UserError)]
        self.env.errors  # acknowledged: they are in the table
        return SoakState(
            jobs=records, told_queued=set(self.told_queued), final_transitions=self.transitions,
            engine_done=dict(self.engine_done), result_messages=dict(results), usage=usage,
            now=services.quotas.clock(), window=services.quotas.window_seconds, files=files,
            queue_length=len(services.scheduler), running=len(services.running),
            requests=list(self.requests.requests), memory=list(self.memory), unexpected_errors=errors,
            memory_base_jobs=self.config.memory_base_jobs,
        )

    async def close(self) -> None:
        if self.env is not None:
            with contextlib.suppress(Exception):
                await self.bot.close()
            with contextlib.suppress(Exception):
                await self.env.shutdown()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.close()

    def engine_name(self) -> str:
        if self.redis is not None:
            return (f"redis: {REDIS_WORKERS} fake workers (one job each) on redis-server "
                    f"{self.redis.server.port}")
        return ("real (tiny models)" if self.config.real_engine else "fake") + f", batch {self.config.batch}"

    def figures(self, state: SoakState) -> dict[str, Any]:
        done = [j for j in state.jobs if j.status == "done"]
        to_start = percentiles(j.started_at - j.created_at for j in done if j.started_at is not None)
        to_done = percentiles(j.finished_at - j.created_at for j in done if j.finished_at is not None)
        faults: dict[str, int] = {kind: self.faults[kind] for kind in fault_kinds(self.config)
                                  if kind != "discord_error"}
        faults.update({k: v for k, v in sorted(self.faults.items()) if k.startswith("discord")})
        kinds = collections.Counter(job_kind for job_kind in self.asked.elements())

        def spread(pair: tuple[float, float] | None) -> str:
            return "n/a" if pair is None else f"p50 {pair[0]:.2f} s, p95 {pair[1]:.2f} s"

        return {
            "engine": self.engine_name(),
            "seed": self.config.seed,
            "wall time": f"{self.elapsed:.1f} s",
            "jobs": f"{len(state.jobs)} stored ({len(state.told_queued)} answered 'Queued')",
            "asked": dict(kinds),
            "refused": dict(self.refusals),
            "faults": faults,
            "faults not injected (no chance before the end)": dict(self.skipped_faults) or "none",
            "time to start": spread(to_start),
            "time to done": spread(to_done),
            "memory (jobs ended: bot's heap KiB / process RSS MiB)": ", ".join(
                f"{m.jobs}: {m.heap / 2**10:.0f} / {m.rss / 2**20:.0f}" for m in state.memory),
        }


def _answer_text(result: Any) -> str:
    response = getattr(result, "response", None)
    if response is not None and response.content:
        return str(response.content)
    for followup in getattr(result, "followups", ()) or ():
        if followup.content:
            return str(followup.content)
    return ""


async def run_soak(config: SoakConfig, say: Callable[[str], None] = print) -> SoakReport:
    """Run the soak and check every invariant; the report holds the table and figures."""
    if config.backend not in BACKENDS:
        raise ValueError(f"backend {config.backend!r}: one of {', '.join(BACKENDS)}")
    if config.backend == "redis" and config.real_engine:
        raise ValueError("--real-engine runs the local engine process; the Redis backend's "
                         "workers run the fake runner")
    with contextlib.ExitStack() as stack:
        work_dir = config.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        soak = Soak(config, work_dir, say)
        stack.enter_context(watching_transitions(soak.transitions))
        try:
            await soak.start()
            await soak.run()
            state = await soak.snapshot()
        except BaseException:
            if soak.redis is not None:
                say(soak.redis.logs())
            raise
        finally:
            await soak.close()
        rows = check_invariants(state)
        return SoakReport(config, rows, soak.figures(state), dict(soak.faults))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--guilds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4,
                        help="jobs the local engine computes at once (a Redis worker takes one)")
    parser.add_argument("--seconds-per-iteration", type=float, default=SoakConfig.seconds_per_iteration,
                        help="the fake engine's or fake workers' pace (--fake-seconds-per-iteration)")
    parser.add_argument("--real-engine", action="store_true",
                        help="real engine processes on the tiny random models (slow: torch on the CPU)")
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: the engine process (default); redis: a redis-server of its "
                             "own and 2 fake workers (ENGINE_BACKEND=redis), with worker kills "
                             "and redis-server restarts among the faults")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="keep the database and results here (default: a temporary folder)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = SoakConfig(jobs=args.jobs, seed=args.seed, members=args.members, guilds=args.guilds,
                        batch=args.batch, real_engine=args.real_engine,
                        seconds_per_iteration=args.seconds_per_iteration,
                        backend=args.backend, work_dir=args.work_dir)
    if args.real_engine and args.backend == "redis":
        parser.error("--real-engine is the local engine process; --backend redis runs fake workers")
    if args.real_engine:
        config = replace(config, iterations=(4, 6, 8), default_iterations=6)
    report = asyncio.run(run_soak(config))
    print(report.table())
    return 0 if report.held else 1


if __name__ == "__main__":
    # Run as a script (`python bench/soak.py`): the repository's packages are one folder up.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())

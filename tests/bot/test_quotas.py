"""Quota policy: rolling window, precedence of the limits, the exceeded message."""

from __future__ import annotations

import asyncio
import re

import pytest

from bot.jobs import JobKind
from bot.quota_status import QuotaSource, QuotaStatus
from bot.quotas import QuotaExceeded, QuotaPolicy
from bot.render import quota_exceeded
from bot.store import Store
from tests.bot.conftest import FakeClock

GUILD = 1001
ALICE = 3003
BOB = 4004
ROLE_VIP = 50
ROLE_OTHER = 60
HOUR = 60 * 60
DAY = 24 * HOUR


@pytest.fixture
def policy(store: Store, clock: FakeClock) -> QuotaPolicy:
    return QuotaPolicy(store, default_daily_quota=3, clock=clock)


async def use(store: Store, n: int = 1, user_id: int = ALICE, guild_id: int | None = GUILD):
    return [
        await store.add_job(
            guild_id=guild_id, channel_id=1, user_id=user_id, kind=JobKind.IMAGINE,
            prompt="p", iterations=10,
        )
        for _ in range(n)
    ]


# ---------------------------------------------------------------- usage and window


async def test_fresh_user_has_the_full_default(policy: QuotaPolicy) -> None:
    status = await policy.check(GUILD, ALICE, [])
    assert status == QuotaStatus(
        limit=3, used=0, remaining=3, resets_at=None, source=QuotaSource.DEFAULT
    )
    assert status.allowed


async def test_used_counts_this_users_jobs_in_this_guild(
    policy: QuotaPolicy, store: Store
) -> None:
    await use(store, 2)
    await use(store, 1, user_id=BOB)
    await use(store, 1, guild_id=GUILD + 1)
    status = await policy.check(GUILD, ALICE, [])
    assert (status.used, status.remaining) == (2, 1)


async def test_failed_and_cancelled_jobs_give_the_slot_back(
    policy: QuotaPolicy, store: Store
) -> None:
    a, b, _c = await use(store, 3)
    await store.mark_cancelled(a.id)
    await store.mark_running(b.id)
    await store.mark_failed(b.id, "engine crashed")
    assert (await policy.check(GUILD, ALICE, [])).used == 1


async def test_jobs_older_than_24_hours_no_longer_count(
    policy: QuotaPolicy, store: Store, clock: FakeClock
) -> None:
    await use(store, 2)
    clock.advance(12 * HOUR)
    await use(store, 1)
    clock.advance(12 * HOUR + 1)
    status = await policy.check(GUILD, ALICE, [])
    assert (status.used, status.remaining) == (1, 2)


async def test_resets_at_is_when_the_oldest_charged_job_ages_out(
    policy: QuotaPolicy, store: Store, clock: FakeClock
) -> None:
    first_at = clock.now
    await use(store)
    clock.advance(HOUR)
    await use(store)
    assert (await policy.check(GUILD, ALICE, [])).resets_at == first_at + DAY


async def test_resets_at_when_over_the_limit_is_when_usage_drops_below_it(
    policy: QuotaPolicy, store: Store, clock: FakeClock
) -> None:
    times = []
    for _ in range(5):  # 5 used, then the limit drops to 3
        times.append(clock.now)
        await use(store)
        clock.advance(HOUR)
    await store.set_quota_override(GUILD, ALICE, 3)
    status = await policy.check(GUILD, ALICE, [])
    assert (status.used, status.remaining) == (5, 0)
    # 3 jobs must age out before usage (2) is below the limit: the third one's time.
    assert status.resets_at == times[2] + DAY


async def test_require_passes_while_quota_remains(policy: QuotaPolicy, store: Store) -> None:
    await use(store, 2)
    status = await policy.require(GUILD, ALICE, [])
    assert status.remaining == 1


async def test_require_raises_when_quota_is_used_up(policy: QuotaPolicy, store: Store) -> None:
    await use(store, 3)
    with pytest.raises(QuotaExceeded) as caught:
        await policy.require(GUILD, ALICE, [])
    assert caught.value.status.remaining == 0


async def test_exceeded_message_says_usage_and_when_the_next_slot_frees(
    policy: QuotaPolicy, store: Store, clock: FakeClock
) -> None:
    first_at = clock.now
    await use(store)
    clock.advance(20 * HOUR + 48 * 60)  # the first job frees in 3 h 12 min
    await use(store, 2)
    with pytest.raises(QuotaExceeded) as caught:
        await policy.require(GUILD, ALICE, [])
    message = str(caught.value)
    assert "used 3 of 3 images in the last 24 h" in message
    assert "3 h 12 min" in message
    assert f"<t:{int(first_at + DAY)}:R>" in message


async def test_limit_zero_means_no_images_at_all(policy: QuotaPolicy, store: Store) -> None:
    await store.set_quota_override(GUILD, ALICE, 0)
    status = await policy.check(GUILD, ALICE, [])
    assert (status.limit, status.remaining, status.allowed) == (0, 0, False)
    with pytest.raises(QuotaExceeded, match="quota is 0"):
        await policy.require(GUILD, ALICE, [])


def test_exceeded_message_uses_singular_for_a_limit_of_one() -> None:
    status = QuotaStatus(1, 1, 0, 1_000_000 + 90.0, QuotaSource.OVERRIDE)
    message = quota_exceeded(status, now=1_000_000.0)
    assert "used 1 of 1 image in" in message
    assert re.search(r"in 2 min \(<t:1000090:R>\)", message)


# ---------------------------------------------------------------- precedence


async def test_guild_default_beats_the_configured_default(
    policy: QuotaPolicy, store: Store
) -> None:
    await store.set_guild_default_quota(GUILD, 10)
    status = await policy.check(GUILD, ALICE, [])
    assert (status.limit, status.source) == (10, QuotaSource.GUILD_DEFAULT)


async def test_guild_default_applies_only_to_its_guild(
    policy: QuotaPolicy, store: Store
) -> None:
    await store.set_guild_default_quota(GUILD + 1, 10)
    assert (await policy.check(GUILD, ALICE, [])).limit == 3


async def test_unlimited_role_beats_the_guild_default(policy: QuotaPolicy, store: Store) -> None:
    await store.set_guild_default_quota(GUILD, 10)
    await store.add_unlimited_role(GUILD, ROLE_VIP)
    status = await policy.check(GUILD, ALICE, [ROLE_OTHER, ROLE_VIP])
    assert status.unlimited and status.source is QuotaSource.ROLE
    assert status.remaining is None and status.allowed


async def test_roles_that_are_not_unlimited_change_nothing(
    policy: QuotaPolicy, store: Store
) -> None:
    await store.add_unlimited_role(GUILD, ROLE_VIP)
    assert (await policy.check(GUILD, ALICE, [ROLE_OTHER])).limit == 3


async def test_user_override_beats_an_unlimited_role(policy: QuotaPolicy, store: Store) -> None:
    await store.add_unlimited_role(GUILD, ROLE_VIP)
    await store.set_quota_override(GUILD, ALICE, 1)
    status = await policy.check(GUILD, ALICE, [ROLE_VIP])
    assert (status.limit, status.source) == (1, QuotaSource.OVERRIDE)


async def test_unlimited_user_override_beats_a_zero_guild_default(
    policy: QuotaPolicy, store: Store
) -> None:
    await store.set_guild_default_quota(GUILD, 0)
    await store.set_quota_override(GUILD, ALICE, None)
    await use(store, 50)
    status = await policy.check(GUILD, ALICE, [])
    assert status.unlimited and status.used == 50 and status.allowed


async def test_resetting_the_override_falls_back_to_the_role(
    policy: QuotaPolicy, store: Store
) -> None:
    await store.add_unlimited_role(GUILD, ROLE_VIP)
    await store.set_quota_override(GUILD, ALICE, 1)
    await store.reset_quota_override(GUILD, ALICE)
    assert (await policy.check(GUILD, ALICE, [ROLE_VIP])).source is QuotaSource.ROLE


async def test_unlimited_configured_default(store: Store, clock: FakeClock) -> None:
    policy = QuotaPolicy(store, default_daily_quota=None, clock=clock)
    await use(store, 100)
    status = await policy.require(GUILD, ALICE, [])
    assert status.unlimited and status.used == 100


async def test_direct_messages_use_the_configured_default(
    policy: QuotaPolicy, store: Store
) -> None:
    await use(store, 3, guild_id=None)
    status = await policy.check(None, ALICE, [])
    assert (status.used, status.remaining, status.source) == (3, 0, QuotaSource.DEFAULT)


# ---------------------------------------------------------------- admit


async def test_admit_runs_enqueue_when_allowed(policy: QuotaPolicy, store: Store) -> None:
    jobs = await policy.admit(GUILD, ALICE, [], lambda: use(store))
    assert len(jobs) == 1 and (await policy.check(GUILD, ALICE, [])).used == 1


async def test_admit_does_not_enqueue_when_exceeded(policy: QuotaPolicy, store: Store) -> None:
    await use(store, 3)
    called = False

    async def enqueue() -> None:
        nonlocal called
        called = True

    with pytest.raises(QuotaExceeded):
        await policy.admit(GUILD, ALICE, [], enqueue)
    assert not called


async def test_concurrent_admits_cannot_overspend(policy: QuotaPolicy, store: Store) -> None:
    async def slow_enqueue():
        await asyncio.sleep(0.01)  # a check-then-add race would let all five through
        return await use(store)

    results = await asyncio.gather(
        *(policy.admit(GUILD, ALICE, [], slow_enqueue) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 3
    assert sum(isinstance(r, QuotaExceeded) for r in results) == 2
    assert (await policy.check(GUILD, ALICE, [])).used == 3


async def test_negative_configured_default_is_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        QuotaPolicy(store, default_daily_quota=-1)

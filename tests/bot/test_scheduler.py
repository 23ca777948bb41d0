"""The fair queue: round-robin order, caps, running jobs, positions, ETAs, waiting, restore."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.jobs import Job, JobKind
from bot.scheduler import QueueFull, Scheduler

A, B, C = 1, 2, 3
_ids = itertools.count()


def job(user_id: int, name: str | None = None, iterations: int = 100) -> Job:
    return Job(
        id=name or f"job{next(_ids)}",
        guild_id=10,
        channel_id=20,
        user_id=user_id,
        kind=JobKind.IMAGINE,
        prompt="p",
        iterations=iterations,
    )


def drain(scheduler: Scheduler) -> list[str]:
    order = []
    while (j := scheduler.pop_nowait()) is not None:
        order.append(j.id)
    return order


# ---------------------------------------------------------------- order


def test_single_user_jobs_run_in_submission_order() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2", "a3"]:
        s.submit(job(A, name))
    assert drain(s) == ["a1", "a2", "a3"]


def test_one_users_many_jobs_do_not_starve_a_later_user() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2", "a3"]:
        s.submit(job(A, name))
    s.submit(job(B, "b1"))
    assert drain(s) == ["a1", "b1", "a2", "a3"]


def test_users_alternate_when_both_have_many_jobs() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2", "a3"]:
        s.submit(job(A, name))
    for name in ["b1", "b2", "b3"]:
        s.submit(job(B, name))
    assert drain(s) == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_a_user_just_served_waits_behind_others() -> None:
    s = Scheduler(max_queued_per_user=None)
    s.submit(job(A, "a1"))
    s.submit(job(B, "b1"))
    assert s.pop_nowait().id == "a1"
    s.submit(job(A, "a2"))  # A was served more recently than B
    assert drain(s) == ["b1", "a2"]


def test_a_newcomer_goes_before_users_already_served() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2", "a3"]:
        s.submit(job(A, name))
    for name in ["b1", "b2"]:
        s.submit(job(B, name))
    assert [s.pop_nowait().id for _ in range(2)] == ["a1", "b1"]
    s.submit(job(C, "c1"))
    assert drain(s) == ["c1", "a2", "b2", "a3"]


def test_pop_on_empty_queue_is_none() -> None:
    assert Scheduler().pop_nowait() is None


# ---------------------------------------------------------------- caps


def test_per_user_cap_refuses_with_a_clear_message() -> None:
    s = Scheduler(max_queued_per_user=2)
    s.submit(job(A))
    s.submit(job(A))
    with pytest.raises(QueueFull, match="already have 2 images waiting or running") as caught:
        s.submit(job(A))
    assert caught.value.user_id == A
    assert len(s) == 2


def test_per_user_cap_does_not_limit_other_users() -> None:
    s = Scheduler(max_queued_per_user=1)
    s.submit(job(A))
    s.submit(job(B))
    assert len(s) == 2


def test_per_user_cap_counts_the_running_job() -> None:
    """MAX_QUEUED_PER_USER is what one member may have waiting *or running*: with a cap
    of 3, one running and two waiting is the most."""
    s = Scheduler(max_queued_per_user=3)
    s.submit(job(A, "a1"))
    assert s.pop_nowait().id == "a1"
    s.submit(job(A))
    s.submit(job(A))
    with pytest.raises(QueueFull, match="already have 3 images waiting or running"):
        s.submit(job(A))
    assert s.queued_count(A) == 2 and s.running_count(A) == 1


def test_finishing_the_running_job_frees_a_slot() -> None:
    s = Scheduler(max_queued_per_user=1)
    s.submit(job(A, "a1"))
    s.pop_nowait()
    with pytest.raises(QueueFull):
        s.check_capacity(A)
    assert s.finish("a1") is not None
    s.submit(job(A))
    assert s.queued_count(A) == 1 and s.running_count(A) == 0


def test_cancelling_a_queued_job_frees_a_slot() -> None:
    s = Scheduler(max_queued_per_user=2)
    s.submit(job(A, "a1"))
    s.pop_nowait()
    s.submit(job(A, "a2"))
    with pytest.raises(QueueFull):
        s.check_capacity(A)
    s.remove("a2")
    s.submit(job(A, "a3"))
    assert s.queued_count(A) == 1 and s.running_count(A) == 1


def test_finish_of_a_job_not_running_is_harmless() -> None:
    """The runner finishes every job it took, whatever became of it; a second call, or
    one for a job never handed out, must change nothing."""
    s = Scheduler(max_queued_per_user=1)
    s.submit(job(A, "a1"))
    assert s.finish("nope") is None
    assert s.finish("a1") is None  # queued, not running: stays queued
    assert s.position("a1") == 1
    s.pop_nowait()
    assert s.finish("a1") is not None
    assert s.finish("a1") is None
    assert s.running_count() == 0


def test_one_user_may_have_several_jobs_running_at_once() -> None:
    """With several engines, a member's jobs may run side by side; each holds a slot
    until it is finished."""
    s = Scheduler(max_queued_per_user=2)
    s.submit(job(A, "a1"))
    s.submit(job(A, "a2"))
    s.pop_nowait()
    s.pop_nowait()
    assert s.running_count(A) == 2
    with pytest.raises(QueueFull):
        s.check_capacity(A)
    s.finish("a2")
    s.check_capacity(A)  # no error
    assert s.running_count(A) == 1


def test_a_running_job_is_not_in_the_queue() -> None:
    s = Scheduler()
    s.submit(job(A, "a1"))
    s.pop_nowait()
    assert "a1" not in s and len(s) == 0 and s.queued_jobs() == []


def test_the_total_cap_counts_waiting_jobs_only() -> None:
    s = Scheduler(max_queued_per_user=None, max_queued_total=1)
    s.submit(job(A))
    s.pop_nowait()
    s.submit(job(B))  # one running, one waiting: the queue holds one
    assert len(s) == 1


def test_total_cap_refuses_when_the_whole_queue_is_full() -> None:
    s = Scheduler(max_queued_per_user=None, max_queued_total=2)
    s.submit(job(A))
    s.submit(job(B))
    with pytest.raises(QueueFull, match="queue is full"):
        s.submit(job(C))


def test_check_capacity_refuses_before_anything_is_stored() -> None:
    s = Scheduler(max_queued_per_user=1)
    s.submit(job(A))
    with pytest.raises(QueueFull):
        s.check_capacity(A)
    s.check_capacity(B)  # no error


def test_submitting_the_same_job_twice_is_an_error() -> None:
    s = Scheduler()
    j = job(A)
    s.submit(j)
    with pytest.raises(ValueError):
        s.submit(j)


# ---------------------------------------------------------------- positions and ETA


def test_submit_returns_the_position() -> None:
    s = Scheduler(max_queued_per_user=None)
    assert [s.submit(job(A)) for _ in range(3)] == [1, 2, 3]
    assert s.submit(job(B)) == 2  # B jumps in after A's first


def test_positions_match_the_actual_run_order() -> None:
    s = Scheduler(max_queued_per_user=None)
    names = ["a1", "a2", "a3", "b1", "b2", "c1"]
    for name in names:
        s.submit(job({"a": A, "b": B, "c": C}[name[0]], name))
    s.pop_nowait()
    positions = {name: s.position(name) for name in names if name in s}
    order = drain(s)
    assert positions == {name: i for i, name in enumerate(order, start=1)}
    assert order == ["b1", "c1", "a2", "b2", "a3"]


def test_position_of_a_job_not_queued_is_none() -> None:
    s = Scheduler()
    s.submit(job(A, "a1"))
    s.pop_nowait()
    assert s.position("a1") is None
    assert s.position("nope") is None


def test_queued_jobs_lists_run_order_without_taking_them() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2"]:
        s.submit(job(A, name))
    s.submit(job(B, "b1"))
    assert [j.id for j in s.queued_jobs()] == ["a1", "b1", "a2"]
    assert len(s) == 3


def test_the_queue_reports_every_move() -> None:
    s = Scheduler(max_queued_per_user=None)
    moves: list[int] = []
    s.on_change = lambda: moves.append(len(s))
    s.submit(job(A, "a1"))
    s.submit(job(A, "a2"))
    s.pop_nowait()
    s.remove("a2")
    s.finish("a1")
    s.finish("a1")  # not running any more: nothing moved
    s.restore([job(B, "b1")])
    assert moves == [1, 2, 1, 0, 0, 1]


# ---------------------------------------------------------------- remove


def test_remove_takes_a_queued_job_out() -> None:
    s = Scheduler(max_queued_per_user=None)
    for name in ["a1", "a2", "a3"]:
        s.submit(job(A, name))
    removed = s.remove("a2")
    assert removed is not None and removed.id == "a2"
    assert "a2" not in s
    assert drain(s) == ["a1", "a3"]


def test_remove_of_an_unknown_job_is_none() -> None:
    s = Scheduler()
    assert s.remove("nope") is None


def test_removing_a_users_last_job_drops_them_from_the_rotation() -> None:
    s = Scheduler(max_queued_per_user=None)
    s.submit(job(A, "a1"))
    s.submit(job(B, "b1"))
    s.remove("a1")
    assert s.position("b1") == 1
    assert drain(s) == ["b1"]


# ---------------------------------------------------------------- restore


def test_restore_keeps_creation_order_per_user_and_round_robin() -> None:
    jobs = [job(A, "a1"), job(A, "a2"), job(B, "b1"), job(A, "a3")]
    s = Scheduler(max_queued_per_user=1)  # restored jobs were already accepted: no cap
    s.restore(jobs)
    assert drain(s) == ["a1", "b1", "a2", "a3"]


def test_restored_jobs_count_towards_the_cap_once_restored() -> None:
    """Restoring ignores the cap (the jobs were accepted before the restart), but a member
    over it may not add more until enough of them have finished."""
    s = Scheduler(max_queued_per_user=1)
    s.restore([job(A, "a1"), job(A, "a2")])
    s.pop_nowait()
    with pytest.raises(QueueFull, match="already have 2 images"):
        s.check_capacity(A)


def test_restoring_twice_does_not_duplicate() -> None:
    jobs = [job(A, "a1"), job(B, "b1")]
    s = Scheduler()
    s.restore(jobs)
    s.restore(jobs)
    assert drain(s) == ["a1", "b1"]


# ---------------------------------------------------------------- next()


async def test_next_returns_at_once_when_a_job_is_queued() -> None:
    s = Scheduler()
    s.submit(job(A, "a1"))
    assert (await asyncio.wait_for(s.next(), 1)).id == "a1"


async def test_next_waits_then_wakes_on_submit() -> None:
    s = Scheduler()
    waiter = asyncio.create_task(s.next())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    s.submit(job(A, "a1"))
    assert (await asyncio.wait_for(waiter, 1)).id == "a1"


async def test_next_keeps_waiting_if_the_job_was_removed_first() -> None:
    s = Scheduler()
    waiter = asyncio.create_task(s.next())
    await asyncio.sleep(0)
    s.submit(job(A, "a1"))
    s.remove("a1")  # cancelled before the worker got to it
    await asyncio.sleep(0.01)
    assert not waiter.done()
    s.submit(job(B, "b1"))
    assert (await asyncio.wait_for(waiter, 1)).id == "b1"


async def test_cancelling_next_takes_no_job() -> None:
    s = Scheduler()
    waiter = asyncio.create_task(s.next())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    s.submit(job(A, "a1"))
    assert s.position("a1") == 1


async def test_two_waiters_each_get_a_different_job() -> None:
    s = Scheduler(max_queued_per_user=None)
    waiters = [asyncio.create_task(s.next()) for _ in range(2)]
    await asyncio.sleep(0)
    s.submit(job(A, "a1"))
    s.submit(job(B, "b1"))
    got = await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert sorted(j.id for j in got) == ["a1", "b1"]


# ---------------------------------------------------------------- property


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 3)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("check"), st.just(0)),
    ),
    max_size=60,
)
# "check" records the run order promised by position(); later pops must follow it until
# a new submit changes the picture. A removal may reorder what is left (a user whose
# first job is cancelled keeps their turn for the next one), but never moves a job later.


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_scheduler_never_loses_or_duplicates_and_keeps_fifo_per_user(ops) -> None:
    s = Scheduler(max_queued_per_user=None)
    submitted: list[Job] = []
    popped: list[Job] = []
    removed: list[Job] = []
    promised: list[str] | None = None  # run order told by position(), until a new submit
    for op, arg in ops:
        if op == "submit":
            j = job(arg, f"j{len(submitted)}")
            s.submit(j)
            submitted.append(j)
            promised = None
        elif op == "pop":
            still_promised = [jid for jid in promised or [] if jid in s]
            j = s.pop_nowait()
            if promised is not None:
                assert (j.id if j else None) == (still_promised[0] if still_promised else None)
                promised = still_promised[1:]
            if j is not None:
                popped.append(j)
        elif op == "remove":
            if submitted and (j := s.remove(submitted[arg % len(submitted)].id)) is not None:
                removed.append(j)
                if promised is not None:
                    before = {jid: place for place, jid in enumerate(promised) if jid in s}
                    promised = [queued.id for queued in s.queued_jobs()]
                    assert all(promised.index(jid) <= place for jid, place in before.items())
        else:
            by_position = {s.position(j.id): j.id for j in submitted if j.id in s}
            assert sorted(by_position) == list(range(1, len(s) + 1))
            promised = [by_position[p] for p in sorted(by_position)]
    remaining_order = [j.id for j in s.queued_jobs()]
    remaining = drain(s)
    assert remaining == remaining_order

    everything = [j.id for j in popped] + [j.id for j in removed] + remaining
    assert sorted(everything) == sorted(j.id for j in submitted)  # none lost, none twice

    run = [j.id for j in popped] + remaining
    seq = {j.id: i for i, j in enumerate(submitted)}
    for user in range(4):
        mine = [jid for jid in run if submitted[seq[jid]].user_id == user]
        assert mine == sorted(mine, key=seq.__getitem__)


_cap_ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(0, 2)),
        st.tuples(st.just("pop"), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 50)),
        st.tuples(st.just("finish"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_cap_ops)
def test_a_user_never_holds_more_jobs_than_the_cap_and_is_refused_only_at_it(ops) -> None:
    cap = 2
    s = Scheduler(max_queued_per_user=cap)
    submitted: list[Job] = []
    running: set[str] = set()  # the model: handed out and not finished
    for op, arg in ops:
        if op == "submit":
            held = s.queued_count(arg) + len({j for j in running if j.startswith(f"u{arg}-")})
            j = job(arg, f"u{arg}-{len(submitted)}")
            if held >= cap:
                with pytest.raises(QueueFull):
                    s.submit(j)
            else:
                s.submit(j)
                submitted.append(j)
        elif op == "pop":
            if (j := s.pop_nowait()) is not None:
                running.add(j.id)
        elif submitted:
            target = submitted[arg % len(submitted)].id
            if op == "remove":
                s.remove(target)
            else:
                assert (s.finish(target) is not None) == (target in running)
                running.discard(target)
        for user in range(3):
            assert s.running_count(user) == len({j for j in running if j.startswith(f"u{user}-")})
            assert s.queued_count(user) + s.running_count(user) <= cap

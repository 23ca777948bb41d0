"""Retry: which failed jobs may run again, at what size, and the request that does it; and
the jobs a long stop interrupted, which are offered a Retry instead of running unasked.

Which failures: those that were not the user's doing. The engine says why a job failed
(`engine.protocol.Failed.reason`) and the store keeps it (`Job.failure`), so the buttons
still know after a restart. An engine crash, running out of memory and an interruption
by a restart get Retry; out of memory also gets "Retry smaller", at the size
`engine.limits.smaller_size` suggests (the function behind the engine's own advice, so
the button and the advice agree; rounded to the bot's 16-pixel blocks). A bad prompt or
image, a refused request, a missing input or a bug gets none: running it again would
fail again.

Interruptions: a job that a restart interrupted resumes by itself at the next start
(`bot.runner`, `Store.requeue_running`), so it needs no button. But after a long stop,
running jobs asked a day ago would surprise their owners and hold up everyone who asks
now; so jobs older than `RESUME_WITHIN` are not resumed: they end as failed (not charged)
with reason `shutdown`, and their message offers Retry, which asks again for the clicker.

A retry is a new job for whoever clicks, with the same request (prompt, size, iterations
within today's limit, the seed asked for, images, replace), charged to the clicker's quota
like Reroll; the failed job stays as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bot import render
from bot.config import MIN_SIDE, SIZE_MULTIPLE, Settings
from bot.jobs import Job, JobKind, JobStatus
from bot.requests import JobRequest, RequestRejected, job_size, stored_input
from bot.services import Services
from bot.store import JobStateError
from engine import protocol
from engine.limits import smaller_size

log = logging.getLogger(__name__)

#: The failures that were not the user's doing: these get a Retry button.
RETRYABLE_FAILURES: frozenset[str] = frozenset(
    {protocol.FAIL_CRASH, protocol.FAIL_OUT_OF_MEMORY, protocol.FAIL_SHUTDOWN}
)
#: Interrupted jobs asked longer ago than this (seconds) are not resumed at start-up.
RESUME_WITHIN = 24 * 3600.0
#: Params a retry builds afresh rather than copies (the request carries them).
_REBUILT_PARAMS = frozenset({"width", "height", "seed", "cutn", "replace", "image_prompt_path",
                             "retry_of"})


def can_retry(job: Job) -> bool:
    """Whether a failed job gets a Retry button: it failed through no fault of the user."""
    return job.status is JobStatus.FAILED and job.failure in RETRYABLE_FAILURES


def smaller_retry_size(settings: Settings, job: Job) -> tuple[int, int] | None:
    """The size "Retry smaller" uses after running out of memory (None for other failures,
    or when the job was already as small as the bot makes images)."""
    if not can_retry(job) or job.failure != protocol.FAIL_OUT_OF_MEMORY:
        return None
    size = job_size(settings, job)
    width, height = (max(MIN_SIDE, side) for side in smaller_size(size, SIZE_MULTIPLE))
    if width * height >= size[0] * size[1]:
        return None
    return width, height


def retry_request(settings: Settings, results_dir: Path, job: Job, *,
                  smaller: bool = False) -> JobRequest:
    """The failed `job`'s request again (see the module docstring); `smaller`: at the
    size `smaller_retry_size` gives. `RequestRejected` if it may not be retried."""
    if not can_retry(job):
        raise RequestRejected(render.not_retryable(job))
    width, height = job_size(settings, job)
    if smaller:
        size = smaller_retry_size(settings, job)
        if size is None:
            raise RequestRejected(render.not_retryable(job))
        width, height = size
    params = job.params
    extra: dict[str, Any] = {k: v for k, v in params.items() if k not in _REBUILT_PARAMS}
    extra["retry_of"] = job.id
    return JobRequest(
        kind=JobKind(job.kind),
        prompt=job.prompt,
        width=width,
        height=height,
        iterations=min(job.iterations, settings.max_iterations),
        seed=params.get("seed"),
        init_image=stored_input(results_dir, job.input_path),
        image_prompt=stored_input(results_dir, params.get("image_prompt_path")),
        replace=params.get("replace"),
        parent_id=job.parent_id,
        extra=extra,
    )


async def fail_unresumed(services: Services) -> list[Job]:
    """At start-up, before the queue is restored: end the waiting and interrupted jobs
    asked longer than `RESUME_WITHIN` ago (failed, reason `shutdown`: Retry), and turn
    their messages into that failure. Returns them."""
    store = services.store
    cutoff = store.clock() - RESUME_WITHIN
    ended: list[Job] = []
    for job in await store.jobs_with_status(JobStatus.RUNNING, JobStatus.QUEUED):
        if job.created_at >= cutoff:
            continue
        try:
            job = await store.mark_failed(job.id, render.NOT_RESUMED_TEXT,
                                          failure=protocol.FAIL_SHUTDOWN)
        except JobStateError:  # pragma: no cover - nothing else runs at start-up
            continue
        await store.message_moved(job, await services.messages.failed(job, render.NOT_RESUMED_TEXT))
        ended.append(job)
    if ended:
        log.info("%d job(s) asked more than %.0f h ago were not resumed (offered Retry)",
                 len(ended), RESUME_WITHIN / 3600)
    return ended

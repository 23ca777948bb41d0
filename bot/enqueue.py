"""A validated request -> a queued job, and the answer to the person who asked.

The order is what makes "a rejected request costs nothing" true:

1. everything checkable without side effects (`bot.requests`: prompt, sizes, images) was
   checked by the caller;
2. the server's blocklist (`bot.blocklist.check_request`), here rather than in the callers,
   so that no way of asking can skip it;
3. `scheduler.check_capacity` (too many jobs waiting or running -> refused, nothing stored);
4. `quotas.admit(...)`, which atomically re-checks the quota and runs the enqueue step:
   save input images, store the job, post its message, put it in the queue.
A refusal raises a `UserError` (`PromptBlocked`, `QueueFull`, `QuotaExceeded`,
`RequestRejected`), which the one error handler shows privately; nothing is queued and no
quota is used then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import discord

from bot import render
from bot.attachments import save_input
from bot.blocklist import check_request
from bot.engine_status import EngineState
from bot.eta import estimate_at, seconds_per_iteration
from bot.interactions import answer, defer, services_of
from bot.jobs import JOB_QUEUED_EVENT, Job, new_job_id
from bot.permissions import member_role_ids
from bot.requests import InputImage, JobRequest, RequestRejected, StoredImage
from bot.services import Services

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Queued:
    """A job that was queued, with where it stood right after."""

    job: Job
    position: int | None
    ready_in: float | None


async def enqueue(services: Services, interaction: discord.Interaction, request: JobRequest) -> Queued:
    """Check queue and quota, store the job, post its message, queue it; see the module
    docstring for the order and what a refusal leaves behind."""
    user_id = interaction.user.id
    guild_id = interaction.guild_id
    channel: Any = interaction.channel
    if channel is None or not hasattr(channel, "send"):
        channel = interaction.client.get_partial_messageable(interaction.channel_id or 0, guild_id=guild_id)
    await check_request(services.store, guild_id, request)
    services.scheduler.check_capacity(user_id)

    async def add() -> Queued:
        # Inside the per-user quota lock: check the queue again (a second command from the
        # same member may have filled it while we validated).
        services.scheduler.check_capacity(user_id)
        job_id = new_job_id()
        params: dict[str, Any] = {
            "width": request.width,
            "height": request.height,
            "seed": request.seed,
            "cutn": services.settings.default_cutn,
            **request.extra,
        }
        if request.replace:
            params["replace"] = request.replace
        input_path = _store_image(services, request.init_image, job_id)
        prompt_path = _store_image(services, request.image_prompt, f"{job_id}-prompt")
        if prompt_path is not None:
            params["image_prompt_path"] = prompt_path
        job = await services.store.add_job(
            job_id=job_id, guild_id=guild_id, channel_id=interaction.channel_id or channel.id,
            user_id=user_id, kind=request.kind, prompt=request.prompt,
            iterations=request.iterations, params=params, input_path=input_path,
            parent_id=request.parent_id,
        )
        try:
            message = await services.messages.post(channel, job)
        except discord.HTTPException as error:
            log.warning("job %s: cannot post its message in channel %s: %s",
                        job.id, job.channel_id, error)
            await services.store.mark_failed(job.id, render.JOB_NOT_POSTED)
            # Only a 403 is a missing permission; a 500 or a rate limit is Discord's failing.
            refusal = (render.CANNOT_POST_JOB if isinstance(error, discord.Forbidden)
                       else render.DISCORD_FAILED_TO_POST_JOB)
            raise RequestRejected(refusal) from None
        job = await services.store.update_job(job.id, progress_message_id=message.id)
        speed = await seconds_per_iteration(services)
        # From queueing to waking the runner, no await: a job the runner can take at once
        # is taken before `bot.queue_notes` (woken by the same move, which reads the speed
        # first) could number it "#1" only to be overwritten by "Starting", an edit of the
        # channel's five in five seconds spent on nothing. Otherwise the notes fill in this
        # message's place and time (and renumber those behind it), paced, never two at one place.
        services.scheduler.submit(job)
        where = estimate_at(services, job.id, speed)
        interaction.client.dispatch(JOB_QUEUED_EVENT, job.id)
        return Queued(job, where.position, where.ready_in)

    roles = member_role_ids(interaction.user, guild_id)
    return await services.quotas.admit(guild_id, user_id, roles, add)


def _store_image(services: Services, image: InputImage | None, name: str) -> str | None:
    if image is None:
        return None
    if isinstance(image, StoredImage):
        return image.path
    return save_input(services.results_dir, name, image)


async def submit_and_answer(interaction: discord.Interaction, request: JobRequest) -> Job:
    """Queue `request` for the interaction's user and tell them where it stands. Refusals
    raise (see `enqueue`) for the one error handler to answer."""
    services = services_of(interaction)
    await defer(interaction)
    queued = await enqueue(services, interaction, request)
    down = services.engine.status.state is EngineState.DOWN
    await answer(interaction, render.queued_answer(queued.job, queued.position, queued.ready_in,
                                                   engine_down=down),
                 embed=render.source_embed(request.source) if request.source else None)
    return queued.job

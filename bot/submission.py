"""Turning a user's request into a queued job: validate, check the queue and quota, store,
post the progress message, queue, answer.

Shared by every way of asking (`/imagine`, `/edit`, the "Edit image" context menu, the
Reroll and Edit buttons), so they all refuse bad input the same way and none of them can
forget a check. The order is what makes "a rejected request costs nothing" true:

1. everything that can be checked without side effects (prompt, sizes, the image);
2. `scheduler.check_capacity` (queue full -> refused, nothing stored);
3. `quotas.admit(...)`, which atomically re-checks the quota and runs the enqueue step:
   save input images, store the job, post the progress message, put it in the queue.
Every refusal raises `RequestRejected` (or `QueueFull`/`QuotaExceeded`) whose text is
shown ephemerally, i.e. only to the person who asked.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot import render
from bot.attachments import CheckedImage, save_input
from bot.config import MIN_SIDE, SIZE_MULTIPLE, Settings
from bot.jobs import Job, JobKind, new_job_id
from bot.quotas import QuotaExceeded
from bot.scheduler import QueueFull
from engine.errors import PromptError
from engine.prompts import TextPrompt, parse_prompt

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

#: The custom event that wakes the job runner when a job is queued (`bot.dispatch`).
JOB_QUEUED_EVENT = "vqc_job_queued"
#: The answer to an interaction that arrives before the bot's services are up.
STARTING_MESSAGE = "The bot is still starting; try again in a moment."
#: Longest source phrase for a masked edit (`replace:`).
MAX_REPLACE_CHARS = 100
#: Size shapes offered by `/imagine size:`; the aspect ratio is width / height.
SHAPES: dict[str, float] = {
    "square": 1.0,
    "portrait": 3 / 4,
    "landscape": 4 / 3,
    "wide": 16 / 9,
    "tall": 9 / 16,
}


class RequestRejected(Exception):
    """A request refused before anything was queued; `str(e)` tells the user the fix."""


@dataclass(frozen=True)
class StoredImage:
    """An image already on disk under RESULTS_DIR (a previous result or input)."""

    path: str  # relative to RESULTS_DIR


InputImage = StoredImage | CheckedImage


@dataclass
class JobRequest:
    """Everything one job needs, validated except for the queue and quota checks."""

    kind: JobKind
    prompt: str
    width: int
    height: int
    iterations: int
    seed: int | None = None
    init_image: InputImage | None = None
    image_prompt: InputImage | None = None
    replace: str | None = None
    parent_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Queued:
    job: Job
    position: int | None
    eta_seconds: float | None


# --------------------------------------------------------------------------- validation


def validate_prompt(prompt: str) -> list[TextPrompt]:
    """Parse with the engine's grammar; a `PromptError` becomes a refusal with the fix."""
    try:
        return parse_prompt(prompt)
    except PromptError as error:
        raise RequestRejected(
            f"Your prompt can't be used: {error}.\n"
            "Examples: `a forest rendered in low poly`, `a watercolor painting + a baseball "
            "game`, `a lighthouse:2 + fog`, `a city street + cars:-1`. See `/help`."
        ) from None


def validate_replace(replace: str | None) -> str | None:
    """The source phrase of a masked edit: plain text, no grammar (it names what to change)."""
    if replace is None:
        return None
    text = " ".join(replace.split())
    if not text:
        return None
    if len(text) > MAX_REPLACE_CHARS:
        raise RequestRejected(
            f"`replace` is {len(text)} characters; keep it under {MAX_REPLACE_CHARS}: name the "
            "thing to change, e.g. `replace:flowers`."
        )
    return text


def validate_iterations(settings: Settings, iterations: int | None) -> int:
    if iterations is None:
        return settings.default_iterations
    if iterations < 1 or iterations > settings.max_iterations:
        raise RequestRejected(
            f"`iterations` must be between 1 and {settings.max_iterations} on this server "
            f"(you asked for {iterations}). Leave it out for the default of "
            f"{settings.default_iterations}."
        )
    return iterations


def _round_down(value: float) -> int:
    return max(MIN_SIDE, int(value // SIZE_MULTIPLE) * SIZE_MULTIPLE)


def shape_size(settings: Settings, shape: str | None) -> tuple[int, int]:
    """The pixel size of a shape: about as many pixels as DEFAULT_SIZE, never above MAX_SIZE
    in either side, both sides multiples of 16 (the VQGAN block size).

    No shape means exactly DEFAULT_SIZE.
    """
    if shape is None:
        return settings.default_size
    aspect = SHAPES[shape]
    default_w, default_h = settings.default_size
    max_w, max_h = settings.max_size
    area = default_w * default_h
    height = math.sqrt(area / aspect)
    width = aspect * height
    scale = min(1.0, max_w / width, max_h / height)
    return min(max_w, _round_down(width * scale)), min(max_h, _round_down(height * scale))


def fit_size(settings: Settings, width: int, height: int) -> tuple[int, int]:
    """The working size for editing a `width`×`height` image: its aspect ratio, about as
    many pixels as DEFAULT_SIZE (never more than the image has), within MAX_SIZE."""
    aspect = max(0.25, min(4.0, width / max(1, height)))
    default_w, default_h = settings.default_size
    max_w, max_h = settings.max_size
    area = min(default_w * default_h, max(width * height, MIN_SIDE * MIN_SIDE))
    new_h = math.sqrt(area / aspect)
    new_w = aspect * new_h
    scale = min(1.0, max_w / new_w, max_h / new_h)
    return min(max_w, _round_down(new_w * scale)), min(max_h, _round_down(new_h * scale))


def job_size(settings: Settings, job: Job) -> tuple[int, int]:
    """The size a stored job asked for (`width`/`height` in its params); DEFAULT_SIZE for
    a side its params lack."""
    return (int(job.params.get("width") or settings.default_size[0]),
            int(job.params.get("height") or settings.default_size[1]))


# --------------------------------------------------------------------------- queueing


async def estimate(services: Services, job_id: str) -> tuple[int | None, float | None]:
    """(position, seconds until the job is done), from the running job's measured speed
    when there is one, else the median of recent jobs."""
    running = services.running
    spi = running.seconds_per_iteration if running is not None else None
    if spi is None:
        spi = await services.store.seconds_per_iteration_estimate()
    remaining = 0.0
    if running is not None and spi is not None:
        remaining = running.remaining_seconds or max(0, running.total - running.iteration) * spi
    position = services.scheduler.position(job_id)
    eta = services.scheduler.eta_seconds(job_id, spi, remaining, include_self=True)
    return position, eta


def role_ids(user: discord.abc.User) -> list[int]:
    return [role.id for role in getattr(user, "roles", ())]


async def enqueue(
    bot: Any, services: Services, interaction: discord.Interaction, request: JobRequest
) -> Queued:
    """Check queue and quota, store the job, post its progress message, queue it.

    Raises `QueueFull`, `QuotaExceeded` or `RequestRejected`; then nothing is queued and
    no quota is used.
    """
    user_id = interaction.user.id
    guild_id = interaction.guild_id
    channel = interaction.channel
    if channel is None or not hasattr(channel, "send"):
        channel = bot.get_partial_messageable(interaction.channel_id, guild_id=guild_id)
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
        from bot.views import progress_view  # here: views import this module

        try:
            message = await channel.send(embed=render.queued_embed(job, None, None),
                                         view=progress_view(job.id))
        except discord.HTTPException as error:
            log.warning("job %s: cannot post its progress message in channel %s: %s",
                        job.id, job.channel_id, error)
            await services.store.mark_failed(job.id, "the progress message could not be posted")
            raise RequestRejected(
                "I can't post in this channel. Ask a server admin to give me the **Send "
                "Messages**, **Embed Links** and **Attach Files** permissions here, or use "
                "another channel."
            ) from None
        job = await services.store.update_job(job.id, progress_message_id=message.id)
        services.scheduler.submit(job)
        position, eta = await estimate(services, job.id)
        # Only while it still waits: once the runner has taken it, its edits win (checked
        # right before sending, so this edit is never sent after the runner's first one).
        if job.id in services.scheduler:
            try:
                await message.edit(embed=render.queued_embed(job, position, eta))
            except discord.HTTPException as error:  # cosmetic: the queued text stays generic
                log.warning("job %s: cannot update its queued message: %s", job.id, error)
        bot.dispatch(JOB_QUEUED_EVENT, job.id)
        return Queued(job, position, eta)

    return await services.quotas.admit(guild_id, user_id, role_ids(interaction.user), add)


def _store_image(services: Services, image: InputImage | None, name: str) -> str | None:
    if image is None:
        return None
    if isinstance(image, StoredImage):
        return image.path
    return save_input(services.results_dir, name, image)


async def answer(interaction: discord.Interaction, text: str) -> None:
    """Answer only the person who asked: the first response, or the deferred one."""
    if interaction.response.is_done():
        await interaction.edit_original_response(content=text, embed=None, view=None)
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def defer(interaction: discord.Interaction) -> None:
    """Acknowledge within Discord's 3 seconds before slow work (downloads, the database)."""
    if not interaction.response.is_done():
        await interaction.response.defer(ephemeral=True, thinking=True)


async def submit_and_answer(interaction: discord.Interaction, request: JobRequest) -> Job | None:
    """Queue `request` for the interaction's user and answer them; None if refused."""
    bot = interaction.client
    services: Services | None = getattr(bot, "services", None)
    if services is None:
        await answer(interaction, STARTING_MESSAGE)
        return None
    await defer(interaction)
    try:
        queued = await enqueue(bot, services, interaction, request)
    except (RequestRejected, QueueFull, QuotaExceeded) as error:
        await answer(interaction, str(error))
        return None
    await answer(interaction, render.queued_answer(queued.job, queued.position, queued.eta_seconds))
    return queued.job

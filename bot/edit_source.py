"""Which image an edit starts from, and where it was found (named in the queued answer).

`/edit` takes its attachment, or else the newest image in the channel that the bot can
see: one of its own results (edited from the PNG on disk) or an image in a member's
message. The "Edit image" context menu takes the message it was used on.

What the bot can see: it never asks for the privileged Message Content intent, so Discord
blanks the content, attachments, embeds and components of other members' (and other
bots') messages it reads in the channel's history, unless they mention it. Such a message
arrives as a user message with nothing in it (`looks_hidden`); a real one always holds
something (text, a file, an embed, a sticker, a poll or a forwarded message). The bot
cannot tell a hidden photo from a hidden "nice!", so when a hidden message is newer than
every image it can see, `/edit` says so, with the newest image it can see to edit
instead, rather than silently editing an older image than the one meant. (With the
intent approved in the developer portal nothing looks hidden, and the newest image wins.)

A job still being made shows a preview JPEG in its message: the context menu on it is
refused until the job is done (then the result PNG is edited), never the preview.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import discord

from bot import render
from bot.attachments import CheckedImage, fetch_image, first_image_attachment
from bot.errors import UserError
from bot.jobs import ImageSource, Job, JobStatus
from bot.requests import InputImage, StoredImage, fit_size, job_size
from bot.services import Services

log = logging.getLogger(__name__)

#: How far back `/edit` without an image looks for "the latest image in the channel".
HISTORY_LIMIT = 50


@dataclass(frozen=True)
class Found:
    """An image to edit: the image, its working size, the job it is the result of (if
    any), and where it was found."""

    image: InputImage
    size: tuple[int, int]
    parent_id: str | None
    source: ImageSource


def looks_hidden(message: discord.Message, me_id: int) -> bool:
    """Whether Discord hid this message's content from the bot (see the module docstring):
    someone else's user message with no text, file, embed, sticker, poll, component or
    forwarded content at all."""
    if message.author.id == me_id or message.is_system():
        return False
    if message.content or message.attachments or message.embeds or message.stickers:
        return False
    if message.components or message.poll is not None:
        return False
    return not any(snapshot.content or snapshot.attachments or snapshot.embeds
                   for snapshot in message.message_snapshots)


def stored_result(services: Services, job: Job | None,
                  message: discord.Message | None = None) -> Found | None:
    """A finished job's result as an image to edit, if its PNG is still on disk; `message`
    is the result's message when at hand (its link and picture name the source)."""
    if job is None or job.status is not JobStatus.DONE or not job.result_path:
        return None
    if not os.path.isfile(services.results_dir / job.result_path):
        return None
    if message is not None:
        thumbnail = message.attachments[0].url if message.attachments else None
        source = ImageSource(jump_url=message.jump_url, thumbnail_url=thumbnail, job_id=job.id)
    else:
        source = ImageSource(jump_url=render.job_link(job), job_id=job.id)
    return Found(StoredImage(job.result_path), job_size(services.settings, job), job.id, source)


async def from_upload(services: Services, attachment: discord.Attachment) -> Found:
    """The image attached to the command itself."""
    checked = await fetch_image(attachment, max_bytes=services.settings.max_image_bytes)
    return Found(checked, fit_size(services.settings, checked.width, checked.height), None,
                 ImageSource(thumbnail_url=attachment.url, filename=attachment.filename))


async def latest_image(services: Services, interaction: discord.Interaction, me_id: int) -> Found:
    """The newest image in the channel the bot can see (see the module docstring); a
    `UserError` when the newest messages are hidden from it, or when there is none.

    Looks through the last HISTORY_LIMIT messages, newest first: the bot's result messages
    map to their PNG on disk (its other messages, progress previews among them, are
    skipped); a member's image is downloaded and checked. If the history can't be read at
    all (no Read Message History), the bot's latest result in the channel (from the store)
    is used.
    """
    store = services.store
    channel = interaction.channel
    hidden = False
    if channel is not None and hasattr(channel, "history"):
        try:
            async for message in channel.history(limit=HISTORY_LIMIT):
                if message.author.id == me_id:
                    found = stored_result(services, await store.job_by_result_message(message.id), message)
                    if found is None:
                        continue  # a progress message or a notice, not an image to edit
                    if hidden:
                        raise UserError(render.hidden_images(message.jump_url, is_result=True))
                    return found
                attachment = first_image_attachment(message)
                if attachment is not None:
                    if hidden:
                        raise UserError(render.hidden_images(message.jump_url))
                    return await _from_message(services, message, attachment)
                hidden = hidden or looks_hidden(message, me_id)
        except discord.HTTPException as error:
            log.warning("cannot read the history of channel %s: %s", interaction.channel_id, error)
    if hidden:
        raise UserError(render.hidden_images())
    found = stored_result(services, await store.latest_done_job(interaction.channel_id or 0))
    if found is None:
        raise UserError(render.NO_IMAGE_MESSAGE)
    return found


async def _from_message(services: Services, message: discord.Message,
                        attachment: discord.Attachment) -> Found:
    checked: CheckedImage = await fetch_image(attachment, max_bytes=services.settings.max_image_bytes)
    return Found(checked, fit_size(services.settings, checked.width, checked.height), None,
                 ImageSource(jump_url=message.jump_url, thumbnail_url=attachment.url,
                             author_id=message.author.id))


async def menu_target(services: Services, message: discord.Message,
                      me_id: int) -> Found | tuple[discord.Attachment, ImageSource]:
    """What the "Edit image" menu edits in `message`: a result of the bot's (stored, with
    its size), or an attachment (checked and downloaded only once the modal is sent). A
    job's message while the job is not done is refused: its picture is a preview."""
    if message.author.id == me_id:
        job = await services.store.job_by_message(message.id)
        if job is not None and not job.status.is_finished:
            raise UserError(render.preview_not_editable(job))
        found = stored_result(services, job, message)
        if found is not None:
            return found
        if job is not None and job.status is not JobStatus.DONE:
            raise UserError(render.NO_IMAGE_IN_MESSAGE)
    attachment = first_image_attachment(message)
    if attachment is None:
        raise UserError(render.NO_IMAGE_IN_MESSAGE)
    return attachment, ImageSource(jump_url=message.jump_url, thumbnail_url=attachment.url,
                                   author_id=message.author.id)

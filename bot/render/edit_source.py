"""Which image an edit starts from (`bot.edit_source`): the source named under the queued
answer, and the refusals when there is none the bot can use.
"""

from __future__ import annotations

import discord

from bot.jobs import ImageSource, Job
from bot.render.text import COLOUR_QUEUED, quoted

NO_IMAGE_MESSAGE = (
    "I found no image to edit in this channel. Attach one: `/edit prompt:withered flowers "
    "image:<file>`, or right-click a message with an image -> Apps -> **Edit image**, or "
    "make one first with `/imagine`."
)
NO_IMAGE_IN_MESSAGE = (
    "That message has no image I can edit (PNG, JPEG, WebP or GIF). "
    "Pick a message with a picture, or use `/edit` with `image:`."
)
HIDDEN_IMAGES_MESSAGE = (
    "I can't see other members' images here: attach it (`/edit prompt:withered flowers "
    "image:<file>`), or right-click it -> Apps -> **Edit image**. "
    "(Without Discord's Message Content permission I can't tell whether the newest messages "
    "here hold an image, so I won't guess an older one.)"
)


def source_embed(source: ImageSource) -> discord.Embed:
    """Under the queued answer of an edit: which image it edits, with a link to its message
    and a small picture of it (an embed thumbnail, which Discord shows small)."""
    if source.job_id is not None:
        what = f"the result of job `{source.job_id}`"
    elif source.author_id is not None:
        what = f"the image in <@{source.author_id}>'s message"
    else:
        what = f"your attachment {quoted(source.filename, 80)}" if source.filename else "your attachment"
    text = f"[{what}]({source.jump_url})" if source.jump_url else what
    embed = discord.Embed(description=f"Editing {text}.", colour=COLOUR_QUEUED)
    if source.thumbnail_url:
        embed.set_thumbnail(url=source.thumbnail_url)
    return embed


def hidden_images(newest_visible: str | None = None, *, is_result: bool = False) -> str:
    """`/edit` without an image when the newest messages are hidden from the bot; with a
    link to the newest image it can see, if any, and how to edit that one instead."""
    if newest_visible is None:
        return HIDDEN_IMAGES_MESSAGE
    how = "press its **Edit** button" if is_result else "right-click it -> Apps -> **Edit image**"
    return (f"{HIDDEN_IMAGES_MESSAGE}\nTo edit the newest image I can see, "
            f"[this one]({newest_visible}), {how}.")


def preview_not_editable(job: Job) -> str:
    """The "Edit image" menu on a job still being made: its picture is only a preview."""
    return (f"Job `{job.id}` is not finished: this message shows a preview, not its image. "
            "Once it is done, use **Edit** on the result (or this menu again).")

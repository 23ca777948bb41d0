"""Refusals of requests (`RequestRejected`, `QueueFull`, `NotAllowed`), whatever the way of
asking, and the one error handler's apology for a bug (`bot.interactions`).

Each says what was wrong and how to fix it; nothing was queued or charged.
"""

from __future__ import annotations

from bot.render.text import user_text

# ---- what the request says (`bot.requests`)


def prompt_unusable(error: str) -> str:
    """The engine's prompt grammar refused the prompt (`error` says why, and may quote it)."""
    return (
        f"Your prompt can't be used: {user_text(error)}.\n"
        "Examples: `a forest rendered in low poly`, `a watercolor painting + a baseball "
        "game`, `a lighthouse:2 + fog`, `a city street + cars:-1`. See `/help`."
    )


REPLACE_ONLY_SPACES = (
    "`replace` is only spaces. Name the thing to change (e.g. `replace:flowers`), or "
    "leave `replace` out to edit the whole image."
)


def replace_too_long(length: int, limit: int) -> str:
    return (f"`replace` is {length} characters; keep it under {limit}: name the "
            "thing to change, e.g. `replace:flowers`.")


def iterations_out_of_range(asked: int, maximum: int, default: int) -> str:
    return (f"`iterations` must be between 1 and {maximum} on this server "
            f"(you asked for {asked}). Leave it out for the default of {default}.")


def seed_unusable(error: str) -> str:
    """The engine's seed range refused it (`error` says the range)."""
    return f"That seed can't be used: {error}. Leave it out for a random one."


#: Reroll, Vary or Retry of a job whose stored starting image is gone from disk.
STORED_IMAGE_GONE = (
    "The image this job started from is no longer on the bot's disk; attach it again "
    "with `/edit` or the **Edit image** context menu."
)

# ---- where the job would go (`bot.enqueue`, `bot.scheduler`)

#: The job's message could not be posted because Discord refused the bot the permission
#: (403): nobody could follow or cancel the job.
CANNOT_POST_JOB = (
    "I can't post in this channel. Ask a server admin to give me the **Send Messages**, "
    "**Embed Links** and **Attach Files** permissions here, or use another channel."
)
#: The job's message could not be posted because Discord failed (a 500, a rate limit, an
#: outage): no permission is missing, so none is asked for; trying again is the remedy.
DISCORD_FAILED_TO_POST_JOB = (
    "Discord didn't let me post your image's message just now (it answered with an error "
    "on its side). Nothing was counted against your quota; please try again in a moment."
)


def queue_full_for_user(held: int) -> str:
    """The member has as many jobs waiting or running as one person may (`held`)."""
    noun = "image" if held == 1 else "images"
    return (f"You already have {held} {noun} waiting or running, the most one person "
            "can have. Wait for one to finish, or cancel one, then try again.")


def queue_full(waiting: int) -> str:
    """The whole queue is at its cap."""
    return f"The queue is full ({waiting} images waiting). Please try again in a few minutes."


# ---- who may (`bot.permissions`)

NOT_ADMIN = (
    "You need the **Manage Server** permission for this. "
    "Use `/usage` to see your own quota and `/queue` to see the queue."
)
GUILD_ONLY = "This command belongs to a server: use it in a server channel."

# ---- a bug (`bot.interactions.report_error`)


def apology(ref: str) -> str:
    """The answer to an unexpected error; `ref` is also in the log with the traceback."""
    return ("Sorry, something went wrong on my side; please try again. If it keeps happening, "
            f"tell the server admin the reference `{ref}`.")

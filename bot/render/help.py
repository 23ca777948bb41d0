"""`/help`: how to ask for an image, the commands a member has, and (for admins only) the
admin commands. The README quotes the same examples, and `tests/test_command_docs.py`
checks that every registered command appears here (issue 11's rule); the prompt grammar
itself is `engine/prompts.py`.
"""

from __future__ import annotations

import discord

HELP_TITLE = "How to ask for an image"
HELP_DESCRIPTION = (
    "Describe the picture you want with `/imagine`. The bot draws it step by step: one "
    "message shows it forming, then the finished image arrives with its seed."
)
#: (field name, field value) pairs of the help embed, in order.
HELP_FIELDS: tuple[tuple[str, str], ...] = (
    (
        "Make an image",
        "`/imagine a forest rendered in low poly`",
    ),
    (
        "Mix ideas with `+`",
        "`/imagine a watercolor painting + a baseball game`\n"
        "Each part pulls the image toward itself. `|` separates parts too: "
        "`a castle | sunset`.",
    ),
    (
        "Weight a part with `text:weight`",
        "`/imagine a lighthouse:2 + fog` makes the lighthouse count twice as much.\n"
        "A negative weight steers away: `a city street + cars:-1`.",
    ),
    (
        "Edit an image",
        "`/edit withered flowers` edits the latest image in this channel.\n"
        "Or attach one: `/edit prompt:withered flowers image:<file>`, or right-click an "
        "image -> Apps -> **Edit image**.",
    ),
    (
        "Buttons on a finished image",
        "**Reroll**: the same prompt with a new seed. **Vary**: a short re-run of this image "
        "with a new seed (a quarter of its iterations): the same picture, other details. "
        "**Edit**: change it with a new prompt. Each is a new image for whoever clicks.\n"
        "**Info** (only you see it): seed, size, models, and the `vqgan-clip` command that "
        "makes the same image. **Timelapse**: posts an animation of the image forming.",
    ),
    (
        "Tips",
        "Concrete nouns and styles work best (`oil painting`, `pixel art`, "
        "`trending on artstation`). The same prompt with the same seed gives the same image.",
    ),
    (
        "Where you stand",
        "`/queue` shows your place in the queue and when your image should start.\n"
        "`/usage` shows your daily quota: how many images you have left and when the "
        "next one frees up.",
    ),
    (
        "Your jobs",
        "`/jobs` lists your waiting and recent images here, with links and Cancel buttons.\n"
        "`/cancel` stops your newest waiting or running image; `/cancel job:k3q7xm2a` a given "
        "one. An image that failed on the bot's side gets a **Retry** button.",
    ),
    (
        "Your defaults",
        "`/settings shape:wide iterations:300` sets your own default shape and iterations on "
        "this server, used whenever you leave them out. `/settings` alone shows them; "
        "`reset:` puts the server's back.",
    ),
)
#: Shown only to members with Manage Server (the only ones who can use its commands).
HELP_ADMIN_FIELD: tuple[str, str] = (
    "For admins: `/quota`, `/status`, `/blocklist`, `/stats`",
    "`/quota set @member images:20` (or `unlimited:True`; `images:0` = may not make images), "
    "`/quota reset @member`, `/quota default images:10` (or `unlimited:True`), "
    "`/quota reset-default`, `/quota unlimited @role` (`remove:True` to undo), "
    "`/quota show [@member]`.\n"
    "`/status`: the image engine (state, device, models, last error), the queue and "
    "today's jobs.\n"
    "`/blocklist add gore, blood bath` refuses prompts with those words or phrases (whole "
    "words, any case); `/blocklist remove`, `/blocklist list`.\n"
    "`/stats`: this server's last 7 days: images per day, top members, GPU time, waits, "
    "failures. All of these need Manage Server.",
)


def help_embed(*, admin: bool = False) -> discord.Embed:
    """The embed `/help` answers with; `admin` adds the field of the admin commands."""
    embed = discord.Embed(title=HELP_TITLE, description=HELP_DESCRIPTION, colour=discord.Colour.blurple())
    fields = HELP_FIELDS + ((HELP_ADMIN_FIELD,) if admin else ())
    for name, value in fields:
        embed.add_field(name=name, value=value, inline=False)
    return embed

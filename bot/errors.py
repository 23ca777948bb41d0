"""The one base class for errors a user is meant to read.

Raise a `UserError` (or a subclass) wherever a problem is found, below the cogs or in them;
`bot.interactions.report_error`, the one handler, answers it privately to the person who
asked, as a followup when the interaction was already deferred. Its text is shown as is,
so it must say what was wrong and how to fix it, and never hold a secret or a server path.
Every other exception is a bug: the user gets a short apology with a reference id, and the
log gets the traceback under the same id.
"""

from __future__ import annotations

from discord import app_commands


class UserError(Exception):
    """A refusal or failure whose `str()` is fit to show the user as is."""


class NotAllowed(UserError, app_commands.CheckFailure):
    """A check refused the command (e.g. not an admin). A `CheckFailure` too, so discord.py
    routes it from a check or an `interaction_check` to the tree's error handler."""

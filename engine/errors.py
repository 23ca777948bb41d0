"""Errors the engine raises on purpose, each carrying a message a person can act on.

Callers (CLI, worker, bot) show `str(error)` as is: it must say what went wrong and how to
fix it, and never contain a secret.
"""

from __future__ import annotations


class EngineError(Exception):
    """A failure with a message fit to show a user or operator as is."""


class ModelFileError(EngineError):
    """A model file is missing, corrupt, truncated, unsafe or of the wrong kind."""


class PromptError(EngineError):
    """A prompt that the grammar rejects (empty part, bad weight, too long, ...)."""


class InputImageError(EngineError):
    """An init image, image prompt or mask that cannot be used (not an image, too large, ...)."""


class OutOfMemoryError(EngineError):
    """The device ran out of memory for the requested size; the message suggests a smaller one."""


class Cancelled(Exception):
    """The job was cancelled by its caller. Not an error: no message is shown."""

"""Limits on what a request may contain, defined once for the CLI, the engine and the bot.

Stdlib only: the bot imports this module (it never imports torch), so a limit it checks
before queueing is the very number the engine checks again, and a request the bot accepts
is never refused later by the engine.
"""

from __future__ import annotations

from engine.errors import EngineError

#: Default largest input image file (init image, image prompt, mask), in bytes. The bot's
#: MAX_IMAGE_MB setting overrides it for both the bot and the engine process it starts.
DEFAULT_MAX_IMAGE_BYTES = 8 * 1024 * 1024

#: Seeds are 0..MAX_SEED. Discord's largest integer option is 2**53, and torch accepts any
#: seed in [0, 2**64); the smaller range is the one every surface (CLI, bot) can express.
MIN_SEED = 0
MAX_SEED = 2**53


def check_seed(seed: int) -> int:
    """`seed` if it is in MIN_SEED..MAX_SEED, else an `EngineError` naming the range."""
    if not MIN_SEED <= seed <= MAX_SEED:
        raise EngineError(f"the seed must be a whole number from {MIN_SEED} to {MAX_SEED:,}, not {seed}")
    return seed

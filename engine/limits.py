"""Limits on what a request may contain, defined once for the CLI, the engine and the bot.

Stdlib only: the bot imports this module (it never imports torch), so a limit it checks
before queueing is the very number the engine checks again, and a request the bot accepts
is never refused later by the engine. The advice after running out of memory lives here
too, so that every path that meets it (generator, worker) suggests the same size.
"""

from __future__ import annotations

import math
from typing import Union

from engine.errors import EngineError
from engine.protocol import MAX_CAPACITY

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


#: After running out of memory, a size with about this share of the pixels is suggested:
#: memory grows with the pixel count, and a step this large usually fits at once.
OUT_OF_MEMORY_PIXEL_SHARE = 0.4


def smaller_size(size: tuple[int, int], factor: int = 16) -> tuple[int, int]:
    """A (width, height) with about OUT_OF_MEMORY_PIXEL_SHARE of the pixels of `size`, each
    side rounded down to a multiple of the VQGAN `factor` and at least one token."""
    scale = math.sqrt(OUT_OF_MEMORY_PIXEL_SHARE)
    width, height = (max(factor, int(side * scale) // factor * factor) for side in size)
    return width, height


def out_of_memory_advice(size: tuple[int, int], factor: int = 16, memory: str = "GPU") -> str:
    """What to tell a user whose image at `size` did not fit in `memory` ("GPU", "host")."""
    width, height = size
    small_width, small_height = smaller_size(size, factor)
    return (f"out of {memory} memory at {width}x{height}; try {small_width}x{small_height} "
            "or smaller, or fewer cutouts")


# -- the engine's throughput settings (issue 13); the worker's --batch and --compile ---------

#: `ENGINE_BATCH` (`vqgan-clip worker --batch auto|N`): how many jobs the engine optimises at
#: once, as one batch; 1 turns batching off. The engine advertises it in `ready.capacity`,
#: so the most is the protocol's.
MAX_BATCH = MAX_CAPACITY
BATCH_AUTO = "auto"
BatchSetting = Union[int, str]  # 1..MAX_BATCH, or BATCH_AUTO
DEFAULT_BATCH: BatchSetting = BATCH_AUTO
#: What `auto` means on each device (engine.batching.capacity_for). The CPU: one at a time,
#: as on a quiet CPU a batch computed no faster per image (bench/benchmark.py), so each job
#: gets its result sooner. CUDA: 4, where one job leaves the GPU mostly idle; not measured
#: yet (docs/ARCHITECTURE.md, "Several jobs at once"); the memory guard keeps it in memory.
AUTO_BATCH_CPU = 1
AUTO_BATCH_CUDA = 4


def parse_batch(text: str) -> BatchSetting:
    """`--batch`'s value: "auto" or a whole number 1..MAX_BATCH (ValueError otherwise)."""
    if text.strip().lower() == BATCH_AUTO:
        return BATCH_AUTO
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BATCH:
        raise ValueError(f"the batch must be {BATCH_AUTO} or a whole number from 1 to {MAX_BATCH}, not {text!r}")
    return value


#: `ENGINE_COMPILE` (`vqgan-clip worker --compile`): compile the loop (engine/compiling.py).
#: `auto` compiles on CUDA, where the loop is launch-bound; `on` on any device; `off` never.
COMPILE_MODES = ("auto", "off", "on")
DEFAULT_COMPILE = "auto"

"""A finished job's recipe: the `vqgan-clip` command line that makes the same image.

What the engine used is read from the result itself: the engine writes every setting it
ran with into the PNG's text chunks (`engine.generate.Generator._metadata`: seed, size,
iterations, cutn, models, lr, l2, l2_decay, device and CPU threads, and for edits
keep_structure and original_weight). The bot adds what only it knows: the prompt as the
member typed it, `replace`, and where the input images are stored. So the command holds
every parameter that decides the image, with the values that engine version used, not
today's defaults:

- the prompt exactly as typed (the CLI parses it with the same grammar as the bot);
- `--seed`, `--size`, `--iterations`, `--cutn`, `--lr`, `--l2`, `--l2-decay`;
- `--vqgan` and `--clip` by name (the files come from the reader's own MODEL_DIR, as
  `vqgan-clip download NAME` places them);
- `--device cpu`, and `--threads N` when the engine ran on the CPU: there the bytes depend
  on the number of threads (reductions split across threads round differently), and on the
  CPU's kind and the PyTorch build, which no option can set. An image the engine made on a
  GPU (bf16/fp16 there) comes out close on the CPU, not the same (`render.info_embed` says
  which, from the PNG's `device`);
- edits (a job with an image to start from, which includes Vary and `/imagine
  init_image:`): `vqgan-clip edit SOURCE PROMPT`, SOURCE being the stored input's path
  relative to RESULTS_DIR, plus `--keep-structure`, and `--replace` with
  `--original-weight` for masked edits; `--image-prompt` the same way.

Not in it, because they do not change the image: how often the engine reports progress
and the preview size (reporting only reads the loss and a downscaled copy of the image),
and `cut_pow`, which the bot never sets (the worker and the CLI share the default, and the
PNG does not record it).

Verified by `tests/bot/test_e2e_results.py`: a job run by the real engine process and the
command run by the CLI write the same PNG file, byte for byte, metadata included.
"""

from __future__ import annotations

import io
import shlex
from collections.abc import Mapping
from pathlib import Path

from PIL import Image

from bot.jobs import Job

#: The CLI's program name, as `pyproject.toml` installs it.
PROGRAM = "vqgan-clip"
#: PNG text chunk -> CLI option, for the settings the engine records, in command order.
RECORDED_OPTIONS: tuple[tuple[str, str], ...] = (
    ("seed", "--seed"),
    ("size", "--size"),
    ("iterations", "--iterations"),
    ("cutn", "--cutn"),
    ("lr", "--lr"),
    ("l2", "--l2"),
    ("l2_decay", "--l2-decay"),
    ("keep_structure", "--keep-structure"),
    ("original_weight", "--original-weight"),
    ("vqgan", "--vqgan"),
    ("clip", "--clip"),
)


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks of a PNG (empty for a PNG without any)."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as image:
        image.load()
        return {str(key): str(value) for key, value in getattr(image, "text", {}).items()}


def reproduce_argv(job: Job, metadata: Mapping[str, str]) -> list[str]:
    """The command (as a list of arguments, program first) that remakes `job`'s result
    from its PNG's `metadata`; see the module docstring for what it holds and why."""
    source = job.input_path
    argv = [PROGRAM, "edit" if source else "imagine"]
    for key, option in RECORDED_OPTIONS:
        if key in metadata:
            argv += _option(option, metadata[key])
    replace = job.params.get("replace")
    if replace:
        argv += _option("--replace", replace)
    prompt_image = job.params.get("image_prompt_path")
    if prompt_image:
        argv += _option("--image-prompt", prompt_image)
    argv += ["--device", "cpu"]
    if "threads" in metadata:
        argv += ["--threads", metadata["threads"]]
    argv += ["-o", f"remade-{job.id}.png"]
    positionals = [source, job.prompt] if source else [job.prompt]
    if any(value.startswith("-") for value in positionals):
        argv.append("--")  # what follows is not an option, even if it starts with "-"
    return argv + positionals


def _option(option: str, value: str) -> list[str]:
    """`--flag value`, or `--flag=value` when the value starts with "-" (argparse would
    take it for an option)."""
    return [f"{option}={value}"] if value.startswith("-") else [option, value]


def shell_command(argv: list[str]) -> str:
    """`argv` as one line for a POSIX shell, quoted with `shlex`, and never holding three
    backticks in a row, so that it sits in a Discord code block unchanged. Every backtick
    is inside a single-quoted word (`shlex.quote` quotes any word that holds one), where
    `''` ends and reopens the quote without changing the word: `''` between each two
    adjacent backticks leaves runs of two at most."""
    line = shlex.join(argv)
    return line.replace("``", "`''`") if "```" in line else line

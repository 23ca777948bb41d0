"""`vqgan-clip worker`: the engine process the bot spawns (frames on stdin/stdout).

Not meant to be run by hand: it speaks `engine.protocol` frames, not text. The bot's
`bot/engine_client.py` builds this command line from its settings. Torch is imported only
when the command runs, so `vqgan-clip --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.framing import MAX_BLOB_SIZE
from engine.limits import (
    AUTO_BATCH_CPU,
    AUTO_BATCH_CUDA,
    BATCH_AUTO,
    COMPILE_MODES,
    DEFAULT_BATCH,
    DEFAULT_COMPILE,
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_BATCH,
    BatchSetting,
    parse_batch,
)
from engine.registry import DEFAULT_CLIP, DEFAULT_VQGAN, default_model_dir


def _image_bytes(text: str) -> int:
    """`--max-image-bytes`; argparse type. Above MAX_BLOB_SIZE no image could arrive anyway."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BLOB_SIZE:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of bytes from 1 to {MAX_BLOB_SIZE} (the largest frame "
            f"blob), not {text!r}")
    return value


def _batch(text: str) -> BatchSetting:
    """`--batch`; argparse type."""
    try:
        return parse_batch(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `worker` sub-command to the `vqgan-clip` parser."""
    parser = subparsers.add_parser(
        "worker",
        help="run the engine process for the bot (binary frames on stdin/stdout)",
        description=(
            "Load the models once and serve generation jobs as length-prefixed frames on "
            "stdin/stdout (see engine/protocol.py). Logs go to stderr. The bot starts this "
            "itself; you only need it to debug the engine."
        ),
    )
    parser.add_argument("--vqgan", default=DEFAULT_VQGAN,
                        help=f"VQGAN model name in the model folder (default: {DEFAULT_VQGAN})")
    parser.add_argument("--vqgan-config", type=Path, default=None,
                        help="VQGAN yaml config file (overrides --vqgan's file)")
    parser.add_argument("--vqgan-checkpoint", type=Path, default=None,
                        help="VQGAN checkpoint file (overrides --vqgan's file)")
    parser.add_argument("--clip", default=DEFAULT_CLIP,
                        help=f"CLIP model name or .pt path (default: {DEFAULT_CLIP})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="folder for model files (default: $MODEL_DIR, else ./models)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                        help="where to compute (default: auto = cuda if available)")
    parser.add_argument("--max-image-bytes", type=_image_bytes, default=DEFAULT_MAX_IMAGE_BYTES,
                        metavar="N",
                        help="largest input image (init image, image prompt, mask) in bytes; "
                             f"a job with a larger one fails (default: {DEFAULT_MAX_IMAGE_BYTES}, "
                             "8 MiB)")
    parser.add_argument("--batch", type=_batch, default=DEFAULT_BATCH, metavar="auto|N",
                        help=f"how many jobs of one size to optimise at once, as one batch, 1 to "
                             f"{MAX_BATCH} (1: one at a time); the bot's ENGINE_BATCH (default: "
                             f"{DEFAULT_BATCH} = {AUTO_BATCH_CUDA} on CUDA, {AUTO_BATCH_CPU} on the CPU)")
    parser.add_argument("--compile", choices=COMPILE_MODES, default=DEFAULT_COMPILE,
                        help="compile the loop with torch.compile (CUDA graphs on CUDA); the bot's "
                             f"ENGINE_COMPILE (default: {DEFAULT_COMPILE} = on for CUDA, off on the CPU); "
                             "a loop that fails to compile runs eager")
    # For tests of the bot: no torch, no models, solid-colour images after a short sleep
    # (it does not decode images, so --max-image-bytes does not apply to it).
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fake-seconds-per-iteration", type=float, default=0.01,
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until stdin ends or `shutdown` arrives; exit 0 then, 1 if the models can't load."""
    from engine.worker import serve_stdio

    if args.fake:
        from engine.fake_runner import FakeJobRunner

        # The fake has no device: `auto` is one job at a time, as the bot's tests expect.
        capacity = 1 if args.batch == BATCH_AUTO else int(args.batch)
        return serve_stdio(lambda: FakeJobRunner(args.fake_seconds_per_iteration, capacity))

    def load():
        from engine.generator_runner import load_generator_runner
        from engine.models import ModelSpec

        spec = ModelSpec(
            vqgan=args.vqgan, clip=args.clip,
            model_dir=args.model_dir if args.model_dir is not None else default_model_dir(),
            device=args.device, vqgan_config=args.vqgan_config,
            vqgan_checkpoint=args.vqgan_checkpoint,
        )
        return load_generator_runner(spec, args.max_image_bytes, args.batch, args.compile)

    return serve_stdio(load)


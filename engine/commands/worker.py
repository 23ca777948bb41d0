"""`vqgan-clip worker`: the engine process the bot spawns (frames on stdin/stdout), or, with
`--redis`, a remote worker that takes the bot's jobs from Redis (`engine/redis_worker.py`).

Without `--redis` it is not meant to be run by hand: it speaks `engine.protocol` frames,
not text; the bot's `bot/engine_client.py` builds this command line from its settings.
With `--redis` an operator starts it on a GPU machine (docs/remote-workers.md). Torch is
imported only when the command runs, so `vqgan-clip --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from engine.serving import BatchRunner, JobRunner


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


def _device(text: str) -> str:
    """`--device`; argparse type: auto, cpu, cuda or cuda:N (one GPU of several)."""
    value = text.strip().lower()
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, not {text!r}")
    return value


def _seconds(text: str) -> float:
    """`--heartbeat`; argparse type: 0.05 to 10 seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.05 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"expected seconds from 0.05 to 10, not {text!r}")
    return value


def default_worker_name(device: str) -> str:
    """This machine's host name and the device (`gpu-box-cuda-0`), as a worker name."""
    host = re.sub(r"[^A-Za-z0-9._-]+", "-", socket.gethostname()).strip("-.") or "worker"
    return f"{host[:40]}-{device.replace(':', '-')}"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `worker` sub-command to the `vqgan-clip` parser."""
    parser = subparsers.add_parser(
        "worker",
        help="run the engine for the bot: its child process, or with --redis a remote worker",
        description=(
            "Load the models once and serve generation jobs. By default as length-prefixed "
            "frames on stdin/stdout (see engine/protocol.py): the bot starts this itself. "
            "With --redis, as a remote worker that takes the bot's jobs from Redis "
            "(docs/remote-workers.md). Logs go to stderr."
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
    parser.add_argument("--device", default="auto", type=_device,
                        help="where to compute: auto (cuda if available), cpu, cuda or cuda:N "
                             "(default: auto)")
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
    remote = parser.add_argument_group(
        "remote worker", "serve the bot's jobs from Redis instead of stdin/stdout")
    remote.add_argument("--redis", nargs="?", const="", default=None, metavar="URL",
                        help="redis:// or rediss:// URL of the bot's Redis; without a URL, "
                             "$REDIS_URL (which keeps the password out of the process list)")
    remote.add_argument("--name", default=None,
                        help="this worker's name, unique among the bot's workers (default: "
                             "host name and device, e.g. gpu-box-cuda-0)")
    remote.add_argument("--prefix", default=None,
                        help="the key prefix the bot uses (default: $REDIS_PREFIX, else "
                             "vqgan-clip:)")
    remote.add_argument("--heartbeat", type=_seconds, default=5.0, metavar="SECONDS",
                        help="seconds between heartbeats; the bot declares the worker dead "
                             "after three missed (default: 5)")
    # For tests of the bot: no torch, no models, solid-colour images after a short sleep
    # (it does not decode images, so --max-image-bytes does not apply to it).
    parser.add_argument("--fake", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fake-seconds-per-iteration", type=float, default=0.01,
                        help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until stdin ends or `shutdown` arrives (with --redis: until drained); exit 0
    then, 1 if the models can't load or the bot refuses the worker, 2 for a bad --redis,
    --name or --prefix."""
    from engine.serving import BatchRunner, JobRunner
    from engine.worker import serve_stdio

    def load() -> JobRunner | BatchRunner:
        if args.fake:
            from engine.fake_runner import FakeJobRunner

            # The fake has no device: `auto` is one job at a time, as the bot's tests expect.
            capacity = 1 if args.batch == BATCH_AUTO else int(args.batch)
            return FakeJobRunner(args.fake_seconds_per_iteration, capacity)
        return _load_models(args)

    if args.redis is not None:
        return _serve_redis(args, load)
    return serve_stdio(load)


def _load_models(args: argparse.Namespace) -> JobRunner:
    from engine.generator_runner import load_generator_runner
    from engine.models import ModelSpec

    spec = ModelSpec(
        vqgan=args.vqgan, clip=args.clip,
        model_dir=args.model_dir if args.model_dir is not None else default_model_dir(),
        device=args.device, vqgan_config=args.vqgan_config,
        vqgan_checkpoint=args.vqgan_checkpoint,
    )
    return load_generator_runner(spec, args.max_image_bytes, args.batch, args.compile)


def _serve_redis(args: argparse.Namespace, load: Callable[[], JobRunner | BatchRunner]) -> int:
    """`--redis`: check the URL, name and prefix here (exit 2 with the reason, the password
    never shown), then serve (`engine.redis_worker`, imported only now: it needs redis-py)."""
    from engine.redis_layout import DEFAULT_PREFIX, LayoutError, RedisLayout
    from engine.redis_url import RedisUrlError, parse_redis_url
    from engine.redis_worker import RemoteWorkerConfig, serve_redis

    url = args.redis or os.environ.get("REDIS_URL", "")
    try:
        if not url:
            raise RedisUrlError("give --redis URL, or set REDIS_URL and give --redis alone")
        target = parse_redis_url(url)
    except RedisUrlError as error:
        print(f"error: --redis: {error}", file=sys.stderr)
        return 2
    try:
        config = RemoteWorkerConfig(
            target=target, name=args.name or default_worker_name(args.device),
            layout=RedisLayout(args.prefix or os.environ.get("REDIS_PREFIX") or DEFAULT_PREFIX),
            heartbeat_interval=args.heartbeat)
    except LayoutError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return serve_redis(config, load)

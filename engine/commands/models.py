"""`vqgan-clip make-test-models DIR`: write tiny random models in the real file formats.

For trying the bot and the engine end to end without downloading gigabytes: the files load
through the same code as the real checkpoints (see `engine.models.tiny`). Torch is imported
only when the command runs, so `vqgan-clip --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `make-test-models` sub-command to the `vqgan-clip` parser."""
    parser = subparsers.add_parser(
        "make-test-models",
        help="write tiny random VQGAN and CLIP models (for tests and trying things out)",
        description=(
            "Write tiny random models with the real architectures in the real file formats: "
            "tiny_vqgan.yaml/.ckpt (VQModel, factor 16), tiny_gumbel.yaml/.ckpt (GumbelVQ, "
            "factor 8) and tiny_clip.pt (ViT CLIP). Use them by name (tiny_vqgan or "
            "tiny_gumbel, and tiny_clip) with DIR as the model folder. Their images are "
            "noise: they only exercise the machinery."
        ),
    )
    parser.add_argument("directory", type=Path, metavar="DIR", help="folder to write into (created if needed)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the files and print their paths, one per line."""
    from engine.models.tiny import make_test_models

    models = make_test_models(args.directory, seed=args.seed)
    for path in (
        models.vqgan_config, models.vqgan_checkpoint,
        models.gumbel_config, models.gumbel_checkpoint,
        models.clip,
    ):
        print(path)
    return 0

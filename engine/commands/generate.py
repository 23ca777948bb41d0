"""`vqgan-clip imagine` and `vqgan-clip edit`: the method from the command line.

    vqgan-clip imagine "a forest rendered in low poly" -o forest.png
    vqgan-clip edit photo.jpg "withered flowers" --replace flowers -o withered.png

Torch and the model code are imported only inside `run_*`, so `vqgan-clip --help` stays
instant. Errors the user can fix (missing model files, bad prompts, unreadable images) are
`EngineError`s, which `engine.cli.main` prints and turns into exit code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from engine import registry
from engine.errors import EngineError
from engine.limits import check_seed
from engine.method import (
    G2_ORIGINAL_WEIGHT,
    KEEP_STRUCTURE,
    L2_ALPHA,
    L2_DECAY,
    L2_DECAYS,
    NOTEBOOK_STEP_EVERY,
    NOTEBOOK_STEPS,
    PAPER_ITERATIONS,
    PAPER_LR,
)

DEFAULT_SIZE = 512
TIMELAPSE_FORMATS = {".webp": "WEBP", ".gif": "GIF"}


def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` or one number for a square; argparse type."""
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT or one number, e.g. 512x384 or 512; not {text!r}")
    return parts[0], parts[1]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return value


def _seed(text: str) -> int:
    """A seed in the range every surface shares (engine.limits); argparse type."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    except EngineError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
    return value


def _positive_number(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, not {text!r}")
    return value


def _non_negative_number(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive number, not {text!r}")
    return value


def _phrase(text: str) -> str:
    """`--replace`: a blank phrase would match nothing, so it is refused rather than run."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "the phrase is empty; name the part of the image to change, e.g. --replace flowers")
    return text


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path("output.png"), help="PNG to write (default output.png)")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="WIDTHxHEIGHT or one number for a square, rounded down to the VQGAN's factor "
                             f"(default {DEFAULT_SIZE}; for edit, the image's aspect with the long side {DEFAULT_SIZE})")
    parser.add_argument("--iterations", type=_positive_int, default=PAPER_ITERATIONS,
                        help=f"optimisation steps (default {PAPER_ITERATIONS}, the paper's)")
    parser.add_argument("--seed", type=_seed, default=None,
                        help="random seed, 0 to 2**53 (default: a new one, printed)")
    parser.add_argument("--cutn", type=_positive_int, default=32, help="cutouts per step (default 32)")
    parser.add_argument("--cut-pow", type=_positive_number, default=1.0, help="cutout size power; >1 favours small crops (default 1)")
    parser.add_argument("--lr", type=_positive_number, default=PAPER_LR,
                        help=f"Adam learning rate (default {PAPER_LR:g}, the paper's)")
    parser.add_argument("--l2", type=_non_negative_number, default=L2_ALPHA, metavar="ALPHA",
                        help="weight α of the paper's L2 penalty α·mean(z²) on the latent (section 2.4), "
                             f"for generations and edits alike (default {L2_ALPHA:g}, the authors' notebook's; "
                             "0 = off)")
    parser.add_argument("--l2-decay", choices=L2_DECAYS, default=L2_DECAY,
                        help="how α falls over the run: linear, from α to 0 over the run; "
                             f"step, α/{NOTEBOOK_STEPS} off every {NOTEBOOK_STEP_EVERY} iterations, 0 from "
                             f"iteration {NOTEBOOK_STEPS * NOTEBOOK_STEP_EVERY} (the authors' notebook); "
                             f"inverse, α/(2i+1) (default {L2_DECAY})")
    parser.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:WEIGHT]",
                        help="an image the result should resemble (negative weight: not resemble); repeatable")
    parser.add_argument("--vqgan", default=registry.DEFAULT_VQGAN,
                        help=f"VQGAN name in the model folder (default {registry.DEFAULT_VQGAN})")
    parser.add_argument("--vqgan-config", type=Path, default=None, help="VQGAN yaml outside the model folder")
    parser.add_argument("--vqgan-checkpoint", type=Path, default=None, help="VQGAN .ckpt outside the model folder")
    parser.add_argument("--clip", default=registry.DEFAULT_CLIP,
                        help=f"CLIP name in the model folder, or a path to a CLIP file (default {registry.DEFAULT_CLIP})")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="model folder (default: $MODEL_DIR, else ./models)")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu (default auto)")
    parser.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                        help="CPU threads PyTorch computes with (default: its own choice, about one "
                             "per core); on the CPU the exact bytes of the image depend on it")
    parser.add_argument("--save-every", type=_positive_int, default=None, metavar="N",
                        help="also write every Nth frame next to the output (out_0010.png, ...)")
    parser.add_argument("--timelapse", type=Path, default=None, metavar="PATH",
                        help="write an animation of the progress frames (.webp or .gif)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `imagine` and `edit` to the `vqgan-clip` parser."""
    imagine = subparsers.add_parser(
        "imagine", help="make an image from a text prompt",
        description="Make an image from text. Prompt grammar: 'a + b' mixes prompts, "
                    "'text:2' weights one, 'text:-1' steers away from it.",
    )
    imagine.add_argument("prompt", help="what to draw, e.g. 'a forest rendered in low poly'")
    _add_common(imagine)
    imagine.set_defaults(func=run_imagine)

    edit = subparsers.add_parser(
        "edit", help="change an image to match a text prompt",
        description="Edit an image towards a text prompt, the whole image or only a masked part.",
    )
    edit.add_argument("image", type=Path, help="the image to edit (PNG, JPEG, WEBP, GIF or BMP)")
    edit.add_argument("prompt", help="what the image should become, e.g. 'withered flowers'")
    target = edit.add_mutually_exclusive_group()
    target.add_argument("--replace", type=_phrase, default=None, metavar="PHRASE",
                        help="change only where CLIP sees PHRASE (e.g. 'flowers')")
    target.add_argument("--mask", type=Path, default=None,
                        help="change only the white (or opaque) area of this mask image")
    edit.add_argument("--keep-structure", type=_non_negative_number, default=KEEP_STRUCTURE, metavar="WEIGHT",
                      help="opt-in: also penalise WEIGHT·mean((z - z0)²), keeping the result's latent near "
                           "the original's; with --replace or --mask, inside the mask "
                           f"(default {KEEP_STRUCTURE:g}: off, as in the paper)")
    edit.add_argument("--original-weight", type=_non_negative_number, default=None, metavar="WEIGHT",
                      help="with --replace or --mask: weight of each cutout's distance to the original "
                           "image, beside the prompt's (paper appendix G.2; "
                           f"default {G2_ORIGINAL_WEIGHT:g}; 0 = prompt only)")
    _add_common(edit)
    edit.set_defaults(func=run_edit)


def run_imagine(args: argparse.Namespace) -> int:
    return _run(args, init_path=None)


def run_edit(args: argparse.Namespace) -> int:
    return _run(args, init_path=args.image)


def _edit_size(image_size: tuple[int, int], long_side: int = DEFAULT_SIZE) -> tuple[int, int]:
    width, height = image_size
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _run(args: argparse.Namespace, init_path: Path | None) -> int:
    from engine.images import load_image
    from engine.prompts import ImagePrompt, parse_prompt, parse_weighted_path

    # Everything the user typed is checked before the (slow) model load.
    prompts = parse_prompt(args.prompt)
    if args.timelapse is not None and args.timelapse.suffix.lower() not in TIMELAPSE_FORMATS:
        raise EngineError(f"--timelapse {args.timelapse} must end in .webp or .gif")
    image_prompts = []
    for spec in args.image_prompt:
        path, weight = parse_weighted_path(spec)
        image_prompts.append(ImagePrompt(load_image(Path(path), what=f"image prompt {path}"), weight))
    init_image = load_image(init_path, what="init image") if init_path is not None else None
    mask_image = None
    if getattr(args, "mask", None) is not None:
        mask_image = load_image(args.mask, what="mask", keep_alpha=True)
    original_weight = getattr(args, "original_weight", None)
    if original_weight is not None and getattr(args, "replace", None) is None and mask_image is None:
        raise EngineError("--original-weight weighs the original image in masked edits: "
                          "add --replace PHRASE or --mask IMAGE, or leave it out")
    output: Path = args.output
    if output.is_dir():
        raise EngineError(f"the output {output} is a folder; name the PNG to write, e.g. "
                          f"-o {output / 'image.png'}")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise EngineError(f"cannot create the folder for {output}: {error.strerror or error}") from None
    if args.size is not None:
        size = args.size
    elif init_image is not None:
        size = _edit_size(init_image.size)
    else:
        size = (DEFAULT_SIZE, DEFAULT_SIZE)

    import torch

    from engine.generate import GenerationRequest, Generator
    from engine.models import ModelSpec, load_models

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = ModelSpec(
        vqgan=args.vqgan, clip=args.clip,
        model_dir=args.model_dir if args.model_dir is not None else registry.default_model_dir(),
        device=args.device, vqgan_config=args.vqgan_config, vqgan_checkpoint=args.vqgan_checkpoint,
    )
    models = load_models(spec)
    frames_wanted = args.save_every is not None or args.timelapse is not None
    request = GenerationRequest(
        prompts=prompts, image_prompts=image_prompts, init_image=init_image, size=size,
        iterations=args.iterations, seed=args.seed, cutn=args.cutn, lr=args.lr, cut_pow=args.cut_pow,
        l2_weight=args.l2, l2_decay=args.l2_decay,
        replace=getattr(args, "replace", None), mask_image=mask_image,
        keep_structure=getattr(args, "keep_structure", KEEP_STRUCTURE),
        original_weight=original_weight if original_weight is not None else G2_ORIGINAL_WEIGHT,
        progress_every=args.save_every or min(10, args.iterations),
        preview_size=max(size) if frames_wanted else 256,
    )
    frames = []

    from tqdm import tqdm

    bar = tqdm(total=args.iterations, unit="it", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)

    def on_progress(progress) -> None:
        bar.update(progress.iteration - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4f}")
        if args.save_every is not None and progress.iteration % args.save_every == 0:
            progress.preview.save(output.with_name(f"{output.stem}_{progress.iteration:04d}.png"))
        if args.timelapse is not None:
            frames.append(progress.preview)

    try:
        result = Generator(models).run(request, on_progress=on_progress)
    finally:
        bar.close()
    output.write_bytes(result.png)
    if args.timelapse is not None:
        _write_timelapse(args.timelapse, [*frames, result.image])
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    print(f"{output} (seed {result.seed}, {result.size[0]}x{result.size[1]}, {result.seconds:.1f}s)")
    return 0


def _write_timelapse(path: Path, frames: list) -> None:
    """An animated WEBP or GIF, 10 frames a second, holding the last frame a little longer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.convert("RGB").resize(frames[-1].size) for f in frames]
    durations = [100] * (len(frames) - 1) + [1000]
    frames[0].save(path, format=TIMELAPSE_FORMATS[path.suffix.lower()], save_all=True,
                   append_images=frames[1:], duration=durations, loop=0)

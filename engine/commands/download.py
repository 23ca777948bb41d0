"""`vqgan-clip download`: fetch the known checkpoints into MODEL_DIR, or list them.

Imports only the stdlib registry at module level (the downloader, which pulls in tqdm, is
imported when the command runs), so `vqgan-clip --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.registry import DEFAULT_CLIP, DEFAULT_VQGAN, KNOWN_MODELS, default_model_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `download` sub-command to the `vqgan-clip` parser."""
    parser = subparsers.add_parser(
        "download",
        help="download model checkpoints into the model folder",
        description=(
            "Download VQGAN and CLIP checkpoints into the model folder, resuming interrupted "
            "downloads and verifying them. With no NAME: the defaults "
            f"({DEFAULT_VQGAN} and {DEFAULT_CLIP}). Files already present are skipped."
        ),
        epilog="known models: " + ", ".join(KNOWN_MODELS),
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="model to download (see --list)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="folder for model files (default: $MODEL_DIR, else ./models)",
    )
    parser.add_argument(
        "--list", action="store_true", help="show the known models, their sizes and which are present"
    )
    parser.add_argument("--all", action="store_true", help="download every known model")
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (it is off anyway when not a terminal)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List or download; EngineError (unknown name, network, checksum) becomes exit code 1."""
    from engine.download import ensure_models, missing_files
    from engine.errors import EngineError
    from engine.registry import get_model

    model_dir: Path = args.model_dir if args.model_dir is not None else default_model_dir()
    if args.list:
        print(list_models(model_dir))
        return 0
    if args.all and args.names:
        raise EngineError("give model names or --all, not both")
    if args.all:
        names = list(KNOWN_MODELS)
    else:
        names = list(dict.fromkeys(args.names)) or [DEFAULT_VQGAN, DEFAULT_CLIP]
        for name in names:
            get_model(name)  # a name we cannot download is an error before any transfer
    todo = missing_files(names, model_dir)
    if not todo:
        print(f"all present in {model_dir.absolute()}: {', '.join(names)}")
        return 0
    print(
        f"downloading {len(todo)} file(s) into {model_dir.absolute()}: "
        + ", ".join(file.filename for _, file in todo)
    )
    fetched = ensure_models(names, model_dir, progress=not args.no_progress)
    for path in fetched:
        print(f"saved {path}")
    return 0


def list_models(model_dir: Path) -> str:
    """A table of the known models: kind, size, whether each is in `model_dir`."""
    from engine.download import file_status

    defaults = {DEFAULT_VQGAN, DEFAULT_CLIP}
    rows = [("NAME", "KIND", "SIZE", "STATUS", "DESCRIPTION")]
    for name, model in KNOWN_MODELS.items():
        statuses = [file_status(f, model_dir) for f in model.files]
        if all(s == "present" for s in statuses):
            status = "present"
        elif all(s == "missing" for s in statuses):
            status = "missing"
        else:
            status = ", ".join(f"{f.filename}: {s}" for f, s in zip(model.files, statuses))
        size = _size(model.size)
        label = name + (" *" if name in defaults else "")
        rows.append((label, model.kind, size, status, model.description))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths)) + "  " + row[4]
        for row in rows
    ]
    lines.append("")
    lines.append(f"model folder: {Path(model_dir).absolute()}   (* = default)")
    return "\n".join(lines)


def _size(size: int | None) -> str:
    if size is None:
        return "unknown"
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size / 1024:.1f} KiB"

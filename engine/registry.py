"""The known checkpoints, and resolving a model name or path to files in MODEL_DIR.

Standard library only: the bot process imports this module (to download the configured
models before it starts, and to validate settings) and must never pull in torch.

Files live flat in MODEL_DIR under fixed names, so that an operator can place them by hand
and every part of the program finds them the same way:

- a VQGAN `NAME` is `NAME.yaml` (taming config) + `NAME.ckpt` (Lightning checkpoint);
- a CLIP model `ViT-B/32` is `ViT-B-32.pt` (the name with `/` replaced by `-`).

A name that is not in the registry but whose files are in MODEL_DIR is accepted: that is how
custom checkpoints and the tiny test models (`tiny_vqgan.yaml` + `tiny_vqgan.ckpt`,
`tiny_clip.pt`) are used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.errors import EngineError, ModelFileError

ModelKind = Literal["vqgan", "clip"]

DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
DEFAULT_CLIP = "ViT-B/32"

#: Used when neither `--model-dir` nor the MODEL_DIR environment variable says otherwise.
DEFAULT_MODEL_DIR = Path("models")

# A VQGAN name becomes two file names in MODEL_DIR; anything that could climb out of it
# (`..`, separators) or hide (a leading dot) is refused rather than joined onto the path.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: where it comes from and what it must be.

    `size` (bytes) and `sha256` (lower-case hex) are None where no trustworthy value is
    known; the downloader then verifies only what is known.
    """

    filename: str
    url: str
    size: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        # The file name is joined onto MODEL_DIR: it must not be able to point elsewhere.
        if (
            not self.filename
            or self.filename in (".", "..")
            or "/" in self.filename
            or "\\" in self.filename
        ):
            raise ValueError(f"model file name must be a plain file name, got {self.filename!r}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"size of {self.filename} must be >= 0, got {self.size}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 of {self.filename} must be 64 lower-case hex digits")


@dataclass(frozen=True)
class KnownModel:
    """A checkpoint the program knows how to fetch: one CLIP `.pt`, or a VQGAN yaml + ckpt."""

    name: str
    kind: ModelKind
    description: str
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int | None:
        """Total bytes of all files, or None when any file's size is unknown."""
        sizes = [f.size for f in self.files]
        if any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    def paths(self, model_dir: Path) -> list[Path]:
        """Where this model's files live in `model_dir` (whether or not they exist)."""
        return [Path(model_dir) / f.filename for f in self.files]


def clip_filename(name: str) -> str:
    """The file name a CLIP model is stored under: `ViT-B/32` -> `ViT-B-32.pt`."""
    return name.replace("/", "-") + ".pt"


def _clip(name: str, sha256: str, size: int | None, description: str) -> KnownModel:
    # OpenAI's own URLs (as in openai-clip's `clip._MODELS`); the path component before the
    # file name is the file's SHA-256, which is how openai-clip verifies it too.
    filename = clip_filename(name)
    url = f"https://openaipublic.azureedge.net/clip/models/{sha256}/{filename}"
    return KnownModel(name, "clip", description, (ModelFile(filename, url, size, sha256),))


def _vqgan(
    name: str,
    description: str,
    config: tuple[str, int | None, str | None],
    checkpoint: tuple[str, int | None, str | None],
) -> KnownModel:
    return KnownModel(
        name,
        "vqgan",
        description,
        (ModelFile(f"{name}.yaml", *config), ModelFile(f"{name}.ckpt", *checkpoint)),
    )


_HEIBOX = "https://heibox.uni-heidelberg.de/d/{share}/files/?p=%2F{path}&dl=1"

# Sources: the taming-transformers authors' Heidelberg share (heibox) for the ImageNet and
# Gumbel models, as listed by the VQGAN-CLIP notebooks and nerdyrodent/VQGAN-CLIP's
# download_models.sh. WikiArt 16384 was trained by EleutherAI and published on
# eaidata.bmk.sh, which no longer answers; pixray's GitHub release carries it.
# Checksums and sizes: vqgan_imagenet_f16_16384 is confirmed by two independent published
# lists; vqgan_gumbel_f8_8192 by a published mirror manifest of the same heibox files.
# Unknown values are None rather than guesses: a wrong checksum would reject a good file.
# (Candidates for wikiart_16384 from the eaidata original, not confirmed for pixray's copy:
# yaml 920 B sha256 6e78241d...499a, ckpt 1005327541 B sha256 bd08bb46...2c36.)
KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        _vqgan(
            "vqgan_imagenet_f16_16384",
            "VQGAN f=16, 16384 codes, trained on ImageNet (the default; ~935 MiB)",
            (
                _HEIBOX.format(share="a7530b09fed84f80a887", path="configs%2Fmodel.yaml"),
                692,
                "00e2c6189926f1d89ecfef73e9598db77981c1982f0555fbade963ffd16143c7",
            ),
            (
                _HEIBOX.format(share="a7530b09fed84f80a887", path="ckpts%2Flast.ckpt"),
                980092370,
                "845a68805098cb666420d5db93df53f3a3b6dd443e6dd85c05759c5b998cd663",
            ),
        ),
        _vqgan(
            "vqgan_imagenet_f16_1024",
            "VQGAN f=16, 1024 codes, trained on ImageNet (~915 MiB)",
            (
                _HEIBOX.format(share="8088892a516d4e3baf92", path="configs%2Fmodel.yaml"),
                None,
                None,
            ),
            (
                _HEIBOX.format(share="8088892a516d4e3baf92", path="ckpts%2Flast.ckpt"),
                None,
                None,
            ),
        ),
        _vqgan(
            "wikiart_16384",
            "VQGAN f=16, 16384 codes, fine-tuned on WikiArt paintings (~960 MiB)",
            (
                "https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.yaml",
                None,
                None,
            ),
            (
                "https://github.com/pixray/pixray/releases/download/v1.7.1/vqgan_wikiart_16384.ckpt",
                None,
                None,
            ),
        ),
        _vqgan(
            "vqgan_gumbel_f8_8192",
            "Gumbel VQGAN f=8, 8192 codes, trained on Open Images (~360 MiB)",
            (
                _HEIBOX.format(share="2e5662443a6b4307b470", path="configs%2Fmodel.yaml"),
                745,
                "91110bab325067b37f85d1e75895a837d59c292bae4f3097f80c518714d5caff",
            ),
            (
                _HEIBOX.format(share="2e5662443a6b4307b470", path="ckpts%2Flast.ckpt"),
                376581823,
                "5cd6c74810ab97e00e942c25403f73afc081e8b19987b31ec0d9ff5b68e7ab14",
            ),
        ),
        _clip(
            "ViT-B/32",
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            353976522,
            "OpenAI CLIP ViT-B/32, 224 px (the default; ~340 MiB)",
        ),
        _clip(
            "ViT-B/16",
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            350837078,
            "OpenAI CLIP ViT-B/16, 224 px: slower, finer detail (~335 MiB)",
        ),
    )
}


def default_model_dir() -> Path:
    """MODEL_DIR from the environment, else `./models`: the one default every entry point uses."""
    value = os.environ.get("MODEL_DIR", "").strip()
    return Path(value) if value else DEFAULT_MODEL_DIR


def known_names(kind: ModelKind | None = None) -> list[str]:
    """Registry names, optionally of one kind, in registry order."""
    return [n for n, m in KNOWN_MODELS.items() if kind is None or m.kind == kind]


def get_model(name: str) -> KnownModel:
    """The registry entry for `name`; EngineError listing the known names otherwise."""
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise EngineError(
            f"unknown model {name!r}; known models: {', '.join(known_names())}"
        ) from None


def _missing_message(
    kind: ModelKind,
    name: str,
    missing: list[tuple[Path, ModelFile | None]],
    known: KnownModel | None,
) -> str:
    """What is missing, where it must go, and how to get it (command and manual URLs).

    `missing` pairs each absent path with its registry entry (None for a custom model's
    file or a path given explicitly, which have no known source).
    """
    label = "VQGAN" if kind == "vqgan" else "CLIP"
    lines = [
        f"{label} model {name!r} is missing: "
        + ", ".join(str(p) for p, _ in missing)
        + (" not found." if len(missing) > 1 else " does not exist.")
    ]
    downloadable = [(p, f) for p, f in missing if f is not None]
    if known is not None and downloadable:
        lines.append(f"Run `vqgan-clip download {name}` to fetch it, or download by hand:")
        for path, file in downloadable:
            lines.append(f"  {file.url}\n    and save it as {path}")
    elif known is None:
        lines.append(
            f"{name!r} is not a known {label} model (known: {', '.join(known_names(kind))}; "
            f"fetch one with `vqgan-clip download NAME`). For a custom model, place "
            + ("its files at the paths above." if len(missing) > 1 else "the file at the path above.")
        )
    return "\n".join(lines)


def resolve_vqgan(
    name: str,
    model_dir: Path,
    config: Path | None = None,
    checkpoint: Path | None = None,
) -> tuple[Path, Path]:
    """The (yaml, ckpt) paths of VQGAN `name`, checked to exist.

    Explicit `config`/`checkpoint` paths win over MODEL_DIR (for checkpoints kept elsewhere);
    otherwise the files are `MODEL_DIR/NAME.yaml` and `MODEL_DIR/NAME.ckpt`. Raises
    ModelFileError naming every missing file, where to put it and how to fetch it.
    """
    model_dir = Path(model_dir)
    known = KNOWN_MODELS.get(name)
    if known is not None and known.kind != "vqgan":
        raise ModelFileError(
            f"{name!r} is a CLIP model, not a VQGAN; "
            f"VQGAN models: {', '.join(known_names('vqgan'))}"
        )
    if (config is None or checkpoint is None) and not _SAFE_NAME.match(name or ""):
        raise ModelFileError(
            f"invalid VQGAN model name {name!r}: use letters, digits, '.', '_', '-', '+' "
            f"(its files are NAME.yaml and NAME.ckpt in the model folder)"
        )
    registry_files = {f.filename: f for f in known.files} if known else {}
    paths: list[Path] = []
    missing: list[tuple[Path, ModelFile | None]] = []
    for explicit, suffix in ((config, ".yaml"), (checkpoint, ".ckpt")):
        if explicit is not None:
            path, source = Path(explicit).expanduser().absolute(), None
        else:
            filename = f"{name}{suffix}"
            path, source = (model_dir / filename).absolute(), registry_files.get(filename)
        paths.append(path)
        if not path.is_file():
            missing.append((path, source))
    if missing:
        raise ModelFileError(_missing_message("vqgan", name, missing, known))
    return paths[0], paths[1]


def resolve_clip(name_or_path: str, model_dir: Path) -> Path:
    """The `.pt` file of CLIP model `name_or_path`, checked to exist.

    Accepts a known name (`ViT-B/32` -> `MODEL_DIR/ViT-B-32.pt`), a custom name whose
    `NAME.pt` is in MODEL_DIR (`tiny_clip`), a file name in MODEL_DIR (`tiny_clip.pt`), or a
    path to an existing `.pt` file. Raises ModelFileError saying where to put the file.
    """
    model_dir = Path(model_dir)
    known = KNOWN_MODELS.get(name_or_path)
    if known is not None:
        if known.kind != "clip":
            raise ModelFileError(
                f"{name_or_path!r} is a VQGAN model, not a CLIP model; "
                f"CLIP models: {', '.join(known_names('clip'))}"
            )
        file = known.files[0]
        path = (model_dir / file.filename).absolute()
        if path.is_file():
            return path
        raise ModelFileError(_missing_message("clip", name_or_path, [(path, file)], known))

    candidates: list[Path] = []
    if _SAFE_NAME.match(name_or_path or ""):
        # A bare name: MODEL_DIR first, as NAME.pt (`tiny_clip`) or as given (`tiny_clip.pt`).
        if name_or_path.endswith(".pt"):
            candidates.append(model_dir / name_or_path)
        else:
            candidates.append(model_dir / clip_filename(name_or_path))
    if name_or_path.endswith(".pt"):
        candidates.append(Path(name_or_path).expanduser())
    for path in candidates:
        if path.is_file():
            return path.absolute()
    if not candidates:
        raise ModelFileError(
            f"unknown CLIP model {name_or_path!r}: known models are "
            f"{', '.join(known_names('clip'))}; a custom model is a name whose NAME.pt is in "
            f"{model_dir.absolute()}, or a path to a .pt file"
        )
    missing: list[tuple[Path, ModelFile | None]] = [
        (p.absolute(), None) for p in dict.fromkeys(candidates)
    ]
    raise ModelFileError(_missing_message("clip", name_or_path, missing, None))

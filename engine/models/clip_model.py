"""CLIP through openai-clip, wrapped as the `Perceptor` the generation loop talks to.

A CLIP file comes in one of two formats: OpenAI's TorchScript archives (the official
downloads), which go through `clip.load(path, jit=False)`, and plain state-dict files (what
`engine.models.tiny` writes), which go through our safe checkpoint reader and openai-clip's
`build_model` (the same steps `clip.load` takes for them). No pickled code runs either way:
TorchScript archives are read by torch's own restricted unpickler.

The wrapper exists so callers never have to remember CLIP's input normalisation, its dtype
(fp16 on CUDA, fp32 on CPU) or that text goes through the tokenizer with truncation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch import Tensor, nn

from engine.errors import ModelFileError
from engine.models.checkpoint import download_hint, read_state_dict

__all__ = ["CLIP_MEAN", "CLIP_STD", "Perceptor", "is_torchscript_archive", "load_clip"]

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Perceptor:
    """A frozen CLIP model with the inputs and outputs the generation loop wants.

    `encode_image` keeps the autograd graph (the loop differentiates through it);
    `encode_text` does not (text is never optimised).
    """

    def __init__(self, model: nn.Module, device: torch.device, source: Path | None = None) -> None:
        self.model = model
        self.device = torch.device(device)
        self.source = source
        # openai-clip's CLIP, through which its methods and attributes are reached: they are
        # not typed (nn.Module's __getattr__ would make each one a Tensor | Module).
        self._clip = clip = cast(Any, model)
        self.dtype: torch.dtype = clip.dtype
        self.input_resolution: int = int(clip.visual.input_resolution)
        self.embed_dim: int = int(clip.text_projection.shape[1])
        self.context_length: int = int(clip.context_length)
        self._mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def normalize(self, x: Tensor) -> Tensor:
        """[0, 1] RGB -> CLIP's normalised input, in CLIP's dtype."""
        return ((x - self._mean.to(x.dtype)) / self._std.to(x.dtype)).to(self.dtype)

    def encode_image(self, x: Tensor) -> Tensor:
        """(B, 3, R, R) in [0, 1] -> (B, embed_dim) float32 image embeddings (not unit norm)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"encode_image wants (B, 3, R, R), got {tuple(x.shape)}")
        return self._clip.encode_image(self.normalize(x)).float()

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> Tensor:
        """Texts -> (N, embed_dim) float32 embeddings; over-long texts are truncated."""
        clip = import_clip()
        tokens = clip.tokenize(list(texts), context_length=self.context_length,
                               truncate=True).to(self.device)
        return self._clip.encode_text(tokens).float()



def import_clip() -> ModuleType:
    """The openai-clip package, imported without its start-up warning.

    openai-clip 1.0.1 does `from pkg_resources import packaging`, and setuptools warns on
    every import of pkg_resources that it is deprecated: a line operators can do nothing
    about, printed on every CLI run. The pin `setuptools<81` keeps the import working.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import clip
        import clip.model
    return clip


def is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (OpenAI's official CLIP files); False for a state dict."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist()
            )
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _build_from_state_dict(path: Path, device: torch.device) -> nn.Module:
    """openai-clip's own non-JIT path (`build_model` -> device -> fp32 on CPU), fed by our
    safe reader. `clip.load` cannot be used for state dicts with this torch: after its
    `torch.jit.load` attempt fails the file is left at EOF, and `torch.load` then reads
    nothing."""
    state = read_state_dict(path)
    try:
        model = import_clip().model.build_model(dict(state))
    except Exception as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelFileError(
            f"CLIP model file {path} is not a CLIP state dict ({type(error).__name__}: "
            f"{detail[:200]}); {download_hint(path)}"
        ) from None
    return model.to(device)


def load_clip(path: Path, device: torch.device | str = "cpu") -> Perceptor:
    """Load a CLIP file (TorchScript archive or state dict) onto `device` as a Perceptor.

    Half precision on CUDA (openai-clip's own choice, and what the weights were trained in),
    float32 on CPU where half is slow or unsupported. Raises ModelFileError naming the file.
    """
    clip = import_clip()
    path = Path(path)
    device = torch.device(device)
    if not path.is_file():
        raise ModelFileError(f"CLIP model file {path} does not exist")
    if path.stat().st_size == 0:
        raise ModelFileError(f"CLIP model file {path} is empty; {download_hint(path)}")
    if is_torchscript_archive(path):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                model, _preprocess = clip.load(str(path), device=device, jit=False)
        except Exception as error:
            detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ModelFileError(
                f"CLIP model file {path} cannot be loaded: it is truncated, corrupt or not a "
                f"CLIP model ({type(error).__name__}: {detail[:200]}); {download_hint(path)}"
            ) from None
    else:
        model = _build_from_state_dict(path, device)
    model.eval()
    model.requires_grad_(False)
    if device.type != "cuda":
        model.float()
    return Perceptor(model, device, source=path)

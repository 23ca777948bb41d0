"""`ModelSpec` -> `Models`: the one place the CLI and the worker turn names into models.

Kept separate from the model classes so that choosing a device and resolving files through
the registry (names, MODEL_DIR, explicit paths) happens the same way everywhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import EngineError
from engine.models.clip_model import Perceptor, load_clip
from engine.models.vqgan import VQGAN, load_vqgan

__all__ = ["ModelSpec", "Models", "load_models", "pick_device"]

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    """Which models to load and where: names (or custom names) resolved in `model_dir`.

    `vqgan_config`/`vqgan_checkpoint` point at files kept outside MODEL_DIR; when both are
    given they are used as they are.
    """

    vqgan: str
    clip: str
    model_dir: Path
    device: str = "auto"
    vqgan_config: Path | None = None
    vqgan_checkpoint: Path | None = None


@dataclass
class Models:
    """The loaded, frozen models on one device, plus the names they were asked for by."""

    vqgan: VQGAN
    perceptor: Perceptor
    device: torch.device
    vqgan_name: str
    clip_name: str


def pick_device(name: str = "auto") -> torch.device:
    """"auto" -> the GPU when there is one, else the CPU; anything else as given, checked.

    Asking for CUDA on a machine without one is an operator error worth a plain message,
    not a stack trace from deep inside the first `.to()`.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise EngineError(
            f"unknown device {name!r}: use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EngineError(
                f"device {name!r} was asked for but no CUDA GPU is available "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
                f"use device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EngineError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise EngineError(f"device {name!r} was asked for but MPS is not available")
    elif device.type != "cpu":
        raise EngineError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def load_models(spec: ModelSpec) -> Models:
    """Resolve the files, then load the VQGAN and CLIP onto the chosen device.

    Raises ModelFileError (missing, corrupt, mismatched or unsafe files, each named) or
    EngineError (a device that is not there).
    """
    from engine import registry  # imported here: a sibling module, resolved at call time

    device = pick_device(spec.device)
    if spec.vqgan_config is not None and spec.vqgan_checkpoint is not None:
        config, checkpoint = Path(spec.vqgan_config), Path(spec.vqgan_checkpoint)
    else:
        config, checkpoint = registry.resolve_vqgan(
            spec.vqgan, Path(spec.model_dir), spec.vqgan_config, spec.vqgan_checkpoint
        )
    clip_path = registry.resolve_clip(spec.clip, Path(spec.model_dir))

    started = time.perf_counter()
    vqgan = load_vqgan(config, checkpoint, device)
    log.info("loaded VQGAN %s from %s in %.1fs", spec.vqgan, checkpoint, time.perf_counter() - started)
    started = time.perf_counter()
    perceptor = load_clip(clip_path, device)
    log.info("loaded CLIP %s from %s in %.1fs", spec.clip, clip_path, time.perf_counter() - started)
    return Models(vqgan=vqgan, perceptor=perceptor, device=device, vqgan_name=spec.vqgan,
                  clip_name=spec.clip)

"""The model layer: VQGAN and CLIP loaded safely from their official file formats.

Imports are lazy (PEP 562) so that `import engine.models.checkpoint` or a sub-command's
`--help` does not pull in taming, clip and omegaconf before they are needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VQGAN": "engine.models.vqgan",
    "load_vqgan": "engine.models.vqgan",
    "Perceptor": "engine.models.clip_model",
    "load_clip": "engine.models.clip_model",
    "ModelSpec": "engine.models.loading",
    "Models": "engine.models.loading",
    "load_models": "engine.models.loading",
    "pick_device": "engine.models.loading",
    "TestModels": "engine.models.tiny",
    "make_test_models": "engine.models.tiny",
    "read_state_dict": "engine.models.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

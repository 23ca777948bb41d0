"""Reading a checkpoint's `state_dict` without ever running pickled code.

Official VQGAN checkpoints are PyTorch Lightning pickles. Besides the tensors they name
classes we do not have or want to import (`pytorch_lightning.callbacks...ModelCheckpoint`,
numpy scalars, `torch.torch_version.TorchVersion`, omegaconf configs ...), so
`torch.load(weights_only=True)` refuses them, and `weights_only=False` would execute whatever
the file says. A model file is untrusted input (an operator may drop in a file from
anywhere), so we go a third way: `torch.load` keeps doing the tensor plumbing (zip or legacy
format, storages, `map_location`), but every global the pickle names goes through
`RestrictedUnpickler.find_class`:

* torch's own weights-only allowlist (tensor rebuild functions, storages, dtypes,
  `OrderedDict`, ...) resolves to the real thing, because those are what tensors are made of
  and torch vets them for exactly this use;
* names that are a known way to run code (`os.system`, `builtins.eval`, `subprocess.*`, ...)
  make the whole file refused at once, with a message saying so;
* anything else becomes an inert stand-in class that records its arguments and does
  nothing, so Lightning's metadata loads as harmless placeholders and no unknown module is
  ever imported.

Nothing callable that the file names can do anything but build tensors and containers, which
is the property `weights_only=True` promises. Only the `state_dict` is handed on.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from engine.errors import ModelFileError

__all__ = [
    "RestrictedUnpickler",
    "UnsafeCheckpoint",
    "StandIn",
    "read_state_dict",
    "safe_torch_load",
    "download_hint",
]

# Modules whose globals are a way to run code, read or write files, or reach the network.
# A checkpoint naming any of these is refused outright (stand-ins would also keep it inert,
# but a file that tries this is hostile or broken, and the operator should hear so).
_DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil",
        "importlib", "runpy", "pty", "socket", "ctypes", "pickle", "_pickle", "marshal",
        "code", "codeop", "webbrowser", "multiprocessing", "signal", "types", "operator",
        "_operator", "pdb", "bdb", "timeit", "platform", "asyncio", "_thread", "tempfile",
        "pathlib", "io", "_io", "glob", "urllib", "http", "zipimport", "__main__", "site",
        "torch.hub", "torch.jit", "torch.package", "torch.utils.cpp_extension",
        "torch.serialization",
    }
)
# builtins that are plain data constructors; every other builtin (eval, exec, getattr,
# __import__, open, compile, ...) is refused.
_SAFE_BUILTINS = frozenset(
    {
        "set", "frozenset", "bytearray", "bytes", "complex", "slice", "range", "list",
        "dict", "tuple", "int", "float", "bool", "str",
    }
)


class UnsafeCheckpoint(pickle.UnpicklingError):
    """The pickle names a global that can run code; loading stops before anything runs."""

    def __init__(self, qualified_name: str) -> None:
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


class StandIn:
    """An inert placeholder for a class or function the pickle names but we will not import.

    It accepts whatever the pickle does with it (call, `__new__`, `__setstate__`, item and
    attribute updates) and only remembers the arguments, so metadata such as Lightning's
    callback states loads as data instead of as code.
    """

    _qualified_name = "?"
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        instance = object.__new__(cls)
        object.__setattr__(instance, "args", args)
        object.__setattr__(instance, "kwargs", kwargs)
        object.__setattr__(instance, "state", None)
        object.__setattr__(instance, "items", {})
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: D401 - inert
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<stand-in for {self._qualified_name}>"


_stand_in_classes: dict[str, type[StandIn]] = {}


def _stand_in(module: str, name: str) -> type[StandIn]:
    qualified = f"{module}.{name}"
    cls = _stand_in_classes.get(qualified)
    if cls is None:
        safe_name = "".join(ch if ch.isalnum() else "_" for ch in name) or "StandIn"
        cls = type(safe_name, (StandIn,), {"_qualified_name": qualified,
                                           "__module__": __name__})
        _stand_in_classes[qualified] = cls
    return cls


def _allowed_globals() -> dict[str, Any]:
    """torch's weights-only allowlist: what tensors, storages and state dicts are made of."""
    allowed: dict[str, Any] = {}
    try:
        from torch import _weights_only_unpickler as wou

        allowed.update(wou._get_allowed_globals())
    except Exception:  # pragma: no cover - private API moved; fall back to the essentials
        from collections import OrderedDict

        allowed.update(
            {
                "collections.OrderedDict": OrderedDict,
                "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
                "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
                "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
                "torch.nn.parameter.Parameter": torch.nn.Parameter,
                "torch.Size": torch.Size,
                "torch.device": torch.device,
            }
        )
    from collections import OrderedDict

    allowed.setdefault("collections.OrderedDict", OrderedDict)
    for name in _SAFE_BUILTINS:
        allowed.setdefault(f"builtins.{name}", getattr(__import__("builtins"), name))
    return allowed


_ALLOWED: dict[str, Any] | None = None


def _is_dangerous(module: str, name: str) -> bool:
    if module in ("builtins", "__builtin__"):
        return name not in _SAFE_BUILTINS
    root = module.split(".")[0]
    if root in _DANGEROUS_MODULES or module in _DANGEROUS_MODULES:
        return True
    return any(module == m or module.startswith(m + ".") for m in _DANGEROUS_MODULES)


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from an allowlist or are inert stand-ins.

    Used as the `Unpickler` of the pickle module handed to `torch.load`, so torch's own
    storage handling (`persistent_load`) still works, while no global the file names can be
    imported or run unless it is one of torch's tensor-building functions.
    """

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        # Python 2 era names (`__builtin__.set`, `copy_reg._reconstructor`), as pickle's own
        # find_class maps them for old protocols.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        found = _ALLOWED.get(qualified)
        if found is not None:
            return found
        if _is_dangerous(module, name):
            raise UnsafeCheckpoint(qualified)
        return _stand_in(module, name)


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data: bytes, **kwargs: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# The "pickle module" torch.load uses: the standard one with a restricted Unpickler.
_restricted_pickle = types.ModuleType("engine_restricted_pickle")
vars(_restricted_pickle).update(Unpickler=RestrictedUnpickler, load=_restricted_load,
                                loads=_restricted_loads, UnpicklingError=pickle.UnpicklingError)
_restricted_pickle.__name__ = "engine_restricted_pickle"


def _first_sentence(error: BaseException) -> str:
    """The gist of a library error, short enough for a one-line message."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    first = text.splitlines()[0]
    return first.split(". ")[0].rstrip(".")[:200]


def download_hint(path: Path) -> str:
    """How to get a good copy of `path`: the download command when the registry knows it."""
    try:
        from engine import registry

        for model in registry.KNOWN_MODELS.values():
            if any(f.filename == path.name for f in model.files):
                return f"delete it and run `vqgan-clip download {model.name}`"
    except Exception:  # the registry is optional here; a hint must never fail
        pass
    return "replace it with a good copy"


def safe_torch_load(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` that never runs pickled code; unknown classes come back as `StandIn`s.

    Raises ModelFileError naming the file for a missing, empty, truncated, corrupt or unsafe
    file.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ModelFileError(f"model file {path} does not exist") from None
    except OSError as error:
        raise ModelFileError(f"cannot read model file {path}: {error}") from None
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a directory, not a checkpoint")
    if size == 0:
        raise ModelFileError(f"model file {path} is empty; {download_hint(path)}")
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        # torch then refuses a custom pickle module; its own weights-only loader is also safe.
        loader: dict[str, Any] = {"weights_only": True}
    else:
        loader = {"weights_only": False, "pickle_module": _restricted_pickle}
    try:
        return torch.load(str(path), map_location=map_location, mmap=False, **loader)
    except UnsafeCheckpoint as error:
        raise ModelFileError(
            f"refusing to load {path}: its pickle calls {error.qualified_name}, which could run "
            f"code on this machine. Nothing was executed. Use only checkpoints from a source "
            f"you trust; {download_hint(path)}"
        ) from None
    except MemoryError:
        raise ModelFileError(f"not enough memory to load {path} ({size} bytes)") from None
    except Exception as error:
        detail = _first_sentence(error)
        if "was not an allowed global" in detail or "Unsupported global" in detail:
            raise ModelFileError(
                f"refusing to load {path}: it needs a pickled global that is not allowed "
                f"({detail[:200]})"
            ) from None
        raise ModelFileError(
            f"{path} is truncated or corrupt ({type(error).__name__}: {detail[:200]}); "
            f"{download_hint(path)}"
        ) from None


def _is_tensor_mapping(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) for k in value)
        and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def read_state_dict(path: Path, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The `state_dict` of a Lightning or plain torch checkpoint, read without running code.

    Accepts a Lightning checkpoint (a dict with a `state_dict` entry) or a file that is a
    state dict itself. Everything else in the file is dropped. Raises ModelFileError naming
    the file when it is not a checkpoint of either shape.
    """
    path = Path(path)
    loaded = safe_torch_load(path, map_location=map_location)
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        state = loaded["state_dict"]
        if not isinstance(state, Mapping):
            raise ModelFileError(
                f"{path} is not a usable checkpoint: its `state_dict` is a "
                f"{type(state).__name__}, not a mapping of tensors; {download_hint(path)}"
            )
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad or not all(isinstance(k, str) for k in state):
            raise ModelFileError(
                f"{path} is not a usable checkpoint: its `state_dict` holds entries that are "
                f"not tensors ({', '.join(map(str, bad[:5]))}); {download_hint(path)}"
            )
        if not state:
            raise ModelFileError(f"{path} has an empty `state_dict`; {download_hint(path)}")
        return dict(state)
    if _is_tensor_mapping(loaded):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        keys = ", ".join(map(str, list(loaded)[:8]))
        raise ModelFileError(
            f"{path} is not a model checkpoint: it has no `state_dict` (top-level keys: "
            f"{keys or 'none'}); {download_hint(path)}"
        )
    raise ModelFileError(
        f"{path} is not a model checkpoint: it holds a {type(loaded).__name__}, not a "
        f"state dict; {download_hint(path)}"
    )


def _debug_main(argv: list[str]) -> int:  # pragma: no cover - a developer's aid
    for name in argv:
        state = read_state_dict(Path(name))
        for key, value in state.items():
            print(key, tuple(value.shape), value.dtype)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_debug_main(sys.argv[1:]))

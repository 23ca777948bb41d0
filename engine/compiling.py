"""torch.compile for the loop's two heavy calls, with a clean way back to eager (issue 13).

Why: one iteration issues about 2,100 small kernels (the decoder, CLIP's forward and both
backward passes, the cutouts, Adam). On a GPU at 512² that makes the loop launch-bound:
launching costs about as long as computing. Compiled in a mode that uses CUDA graphs
("reduce-overhead"), the decode and the CLIP forward, which hold nearly all of those
kernels, and their backward passes are replayed as graphs: one launch each.

What is compiled: `Generator._synth` (quantise, decode, clamp) and `Generator._embed` (CLIP
on the cutouts), as the loop calls them. The cutouts stay eager (kornia draws its
parameters on the host, per job, from the job's own seed), and so do the loss and Adam
(fused into one kernel on CUDA already).

- `ENGINE_COMPILE` (`vqgan-clip worker --compile`): `auto` compiles on CUDA only, where the
  loop is launch-bound; `on` compiles on any device (on the CPU with inductor's C++ code,
  no CUDA graphs: minutes of warm-up per shape, and a C++ compiler); `off` never does.
- Shapes: compiling is lazy, once per new input shape (a batch of B jobs at one size is one
  shape). torch's automatic dynamic shapes compile a second shape with dynamic sizes, so
  later shapes reuse it; CUDA graphs are recorded per shape, which is cheap next to
  compiling. The first step of each shape is the warm-up: it is timed, logged and kept in
  `Compiler.warmups`.
- Falling back: whatever a compiled step raises, other than running out of memory, turns
  compiling off for good, with a log line; the caller (engine/batching.py) puts the jobs'
  random generators back and runs the same step eagerly, so the images are what eager
  mode makes.
- CUDA graphs replay into fixed output buffers: `step_begin` tells torch a new iteration
  starts, so the previous one's outputs may be overwritten. Nothing reads them after that:
  previews are taken before the next step, and the final image is decoded eagerly.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

from engine.limits import COMPILE_MODES

__all__ = ["Compiler", "compile_wanted"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def compile_wanted(setting: str, device: torch.device) -> bool:
    """`ENGINE_COMPILE` on this device: `auto` is on for CUDA only."""
    if setting not in COMPILE_MODES:
        raise ValueError(f"compile setting {setting!r}: use one of {', '.join(COMPILE_MODES)}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class Compiler:
    """Compiles the functions it `wrap`s while `enabled`; eager once it `fall_back`s.

    `backend` is torch.compile's (default inductor); tests pass "aot_eager" or one that
    raises. CUDA graphs are used with inductor on CUDA ("reduce-overhead").
    """

    def __init__(self, setting: str, device: torch.device, backend: str | Callable[..., Any] | None = None) -> None:
        self.device = torch.device(device)
        self.setting = setting
        self.enabled = compile_wanted(setting, self.device)
        self.backend = backend
        self.cuda_graphs = self.enabled and backend is None and self.device.type == "cuda"
        self.failure: str | None = None  # why it fell back, once it did
        self.warmups: dict[Hashable, float] = {}  # seconds of the first step of each shape

    @property
    def mode(self) -> str:
        """What the loop runs: "eager", "compiled" or "compiled with CUDA graphs"."""
        if not self.enabled:
            return "eager"
        return "compiled with CUDA graphs" if self.cuda_graphs else "compiled"

    def wrap(self, function: F) -> F:
        """`function`, compiled (lazily, at its first call) while this compiler is enabled."""
        compiled: Callable[..., Any] | None = None

        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal compiled
            if not self.enabled:
                return function(*args, **kwargs)
            if compiled is None:
                if self.backend is not None:
                    compiled = torch.compile(function, backend=self.backend)
                else:
                    compiled = torch.compile(function, mode="reduce-overhead" if self.cuda_graphs else None)
            return compiled(*args, **kwargs)

        return call  # type: ignore[return-value]

    def step_begin(self) -> None:
        """Before each compiled step: with CUDA graphs, the last step's outputs may now be
        overwritten (torch would otherwise keep them alive, or refuse to replay)."""
        if self.enabled and self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def is_warm(self, shape: Hashable) -> bool:
        return not self.enabled or shape in self.warmups

    def warmed_up(self, shape: Hashable, seconds: float) -> None:
        """The first step at `shape` took `seconds` (compiling included)."""
        self.warmups[shape] = seconds
        log.info("compiled loop warmed up for %s in %.1f s (%s)", shape, seconds, self.mode)

    def fall_back(self, error: BaseException) -> None:
        """Compiling or running the compiled step failed: eager from now on."""
        self.enabled = self.cuda_graphs = False
        self.failure = f"{type(error).__name__}: {error}"[:2000]
        log.warning("the compiled loop failed, running eager from now on: %s", self.failure)
        log.debug("the compiled loop's failure", exc_info=error)

    def time_first_step(self, shape: Hashable, step: Callable[[], None]) -> None:
        """Run `step`; if it is the first at `shape`, time it (waiting for the GPU once)."""
        if self.is_warm(shape):
            step()
            return
        started = time.perf_counter()
        step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmed_up(shape, time.perf_counter() - started)

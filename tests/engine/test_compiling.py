"""engine/compiling.py: the loop compiled with torch.compile makes the image eager mode makes,
and a loop that fails to compile runs eager, from the same random state.

Compiled-vs-eager tolerance: PSNR >= 40 dB on 8-bit RGB (`MIN_PSNR_DB`), as for batching.

Which compiler: `aot_eager` (torch.compile's graph capture and AOTAutograd, run by torch's
own kernels) always runs: it needs no C++ compiler and takes seconds. Inductor, what the
engine uses, builds C++ on the CPU: about 70 kernels, each a g++ run, over a minute cold on
2 cores (seconds once inductor's cache holds them). Its test runs where a C++ compiler is
found and ENGINE_TEST_INDUCTOR=1 is set; the suite skips it otherwise, saying why.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from engine.compiling import Compiler, compile_wanted
from engine.generate import GenerationRequest, Generator
from engine.prompts import parse_prompt
from tests.engine.loop_helpers import fresh_dynamo, psnr, run_batch  # noqa: F401 (fresh_dynamo: a fixture)

MIN_PSNR_DB = 40.0
#: Each test compiles from scratch.
pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.fixture(scope="module")
def models(tiny_models):
    from engine.models import ModelSpec, load_models

    return load_models(ModelSpec(vqgan=tiny_models.gumbel_name, clip=tiny_models.clip_name,
                                 model_dir=tiny_models.directory, device="cpu"))


def _requests() -> list[GenerationRequest]:
    return [GenerationRequest(prompts=parse_prompt(text), size=(32, 32), iterations=4, seed=seed, cutn=3)
            for text, seed in (("a red apple", 1), ("a blue sea", 2))]


class CountingBackend:
    """aot_eager, counting the graphs it was given: proof that the loop really compiled."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        from torch._dynamo.backends.debugging import aot_eager

        self.graphs += 1
        return aot_eager(graph_module, example_inputs)


def compare_with_eager(models, compiler: Compiler, caplog) -> list[float]:
    requests = _requests()
    with caplog.at_level(logging.INFO, logger="engine.compiling"):
        compiled = run_batch(Generator(models, compiler=compiler), requests)
    assert compiler.enabled and compiler.failure is None and compiler.mode == "compiled"
    assert list(compiler.warmups) == [(2, (32, 32), (3, 3))]
    assert "compiled loop warmed up for (2, (32, 32), (3, 3)) in" in caplog.text
    eager = [Generator(models).run(request) for request in _requests()]
    return [psnr(a.image, b.image) for a, b in zip(compiled, eager)]


def test_compiling_is_on_for_cuda_only_by_default_and_on_or_off_when_asked() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert (compile_wanted("auto", cpu), compile_wanted("auto", cuda)) == (False, True)
    assert compile_wanted("on", cpu) and not compile_wanted("off", cuda)
    with pytest.raises(ValueError, match="use one of auto, off, on"):
        compile_wanted("yes", cpu)
    assert Compiler("auto", cpu).mode == "eager"
    assert Compiler("on", cuda).mode == "compiled with CUDA graphs"


def test_the_compiled_loop_makes_the_eager_image(models, caplog) -> None:
    backend = CountingBackend()
    figures = compare_with_eager(models, Compiler("on", torch.device("cpu"), backend=backend), caplog)
    print(f"PSNR compiled (aot_eager) vs eager: {', '.join(f'{x:.2f} dB' for x in figures)}")
    assert min(figures) >= MIN_PSNR_DB


def test_each_compiled_call_is_one_whole_graph(models, caplog) -> None:
    """The decode and the CLIP forward compile to one graph each, with no graph break: a break
    would split the CUDA graph and put eager kernels (and their launches) back in the loop."""
    backend = CountingBackend()
    compare_with_eager(models, Compiler("on", torch.device("cpu"), backend=backend), caplog)
    assert backend.graphs == 2


def _cpp_compiler() -> str | None:
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception:
        return None


@pytest.mark.skipif(_cpp_compiler() is None, reason="no C++ compiler: inductor builds C++ kernels on the CPU")
@pytest.mark.skipif(os.environ.get("ENGINE_TEST_INDUCTOR") != "1",
                    reason="inductor's cold C++ build of the tiny models takes over a minute on 2 cores; "
                           "set ENGINE_TEST_INDUCTOR=1 to run it")
def test_the_inductor_compiled_loop_makes_the_eager_image(models, caplog) -> None:
    figures = compare_with_eager(models, Compiler("on", torch.device("cpu")), caplog)
    print(f"PSNR compiled (inductor) vs eager: {', '.join(f'{x:.2f} dB' for x in figures)}")
    assert min(figures) >= MIN_PSNR_DB


def test_a_loop_that_fails_to_compile_runs_eager_and_makes_the_eager_image(models, caplog) -> None:
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler today")

    compiler = Compiler("on", torch.device("cpu"), backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="engine.compiling"):
        fell_back = run_batch(Generator(models, compiler=compiler), _requests())
    assert not compiler.enabled and compiler.mode == "eager"
    assert compiler.failure is not None and "no C++ compiler today" in compiler.failure
    assert "the compiled loop failed, running eager from now on" in caplog.text
    # Undone and run again eagerly from the same random state: the very bytes eager makes.
    eager = [Generator(models).run(request) for request in _requests()]
    assert [result.png for result in fell_back] == [result.png for result in eager]

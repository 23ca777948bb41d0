#!/usr/bin/env python
"""Throughput of the real loop: seconds per iteration and images per hour for batches of
jobs (1, 2, 4, 8), eager and compiled, with peak memory and warm-up time.

Builds the real architectures with random weights, so it needs no downloads: the VQGAN
f16/16384 ImageNet model (taming's config, written out below) and CLIP ViT-B/32
(clip.model.CLIP with its real dimensions). Random weights cost the same FLOPs as trained
ones, so the timings are those of real jobs. It runs `engine.batching.Batch` over
`engine.generate.Generator` itself, so what it measures is what the worker runs.

    python bench/benchmark.py --size 512 --cutn 32 --iterations 10            # on the GPU
    python bench/benchmark.py --device cpu --size 128 --cutn 4 --iterations 3 --compile off,on

Each row runs B jobs (different prompts and seeds) together. Within a compile mode, one
generator serves every row, as one worker would: the rows start in order and run their
`--warmup` iterations (`warm-up` is the first step, compiling included where compiled: the
first batch size compiles for its shape, the second recompiles with dynamic shapes, later
ones reuse that). Then `--rounds` timed rounds of `--iterations` go round all the rows, of
every mode, in turn, so a spell of other load on the machine falls on every row alike.

`s/iteration` is one step of the batch (every job advances one iteration) in the row's best
round (other load only ever slows a round down); `s/image` is what one 400-iteration image
costs at that pace (s/iteration * 400 / B); `vs eager 1` is the row's images per hour over
eager batch 1's, so a batch pays where it is above 1: against the same jobs run one after
another; `median vs eager 1` is the same from each row's median round (on a shared machine
the best round can be luck; the two agreeing is a clean reading). `psnr` compares the first job's image with the same job run eagerly alone (inf:
the same pixels). `peak MiB`, taken over the row's warm-up: on CUDA the caching
allocator's peak (other rows' jobs hold only their latents and Adam state); on the CPU the
process's peak RSS (VmHWM, reset per row where Linux allows; it keeps what the allocator
kept from earlier rows).

Not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.method import L2_ALPHA, L2_DECAY, L2_DECAYS, PAPER_ITERATIONS  # noqa: E402 (stdlib only: --help stays instant)

DECODER_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
PROMPTS = ("a forest rendered in low poly", "a lighthouse in a storm", "a bowl of ramen, studio photo",
           "a cathedral made of glass", "an owl reading a newspaper", "a red sports car at dusk",
           "a watercolour of mountains", "a robot tending a garden")

# taming's vqgan_imagenet_f16_16384 config (model.yaml), as a dict.
VQGAN_F16_16384 = {
    "model": {
        "base_learning_rate": 4.5e-06,
        "target": "taming.models.vqgan.VQModel",
        "params": {
            "embed_dim": 256,
            "n_embed": 16384,
            "monitor": "val/rec_loss",
            "ddconfig": {
                "double_z": False, "z_channels": 256, "resolution": 256, "in_channels": 3,
                "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                "attn_resolutions": [16], "dropout": 0.0,
            },
        },
    }
}

# CLIP ViT-B/32's dimensions (what clip.model.build_model reads from the official file).
CLIP_VIT_B_32 = dict(
    embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
)


def build_models(device):
    """The real architectures with random weights, set up as `load_models` sets up real ones."""
    import torch

    from engine.models.clip_model import Perceptor, import_clip
    from engine.models.loading import Models
    from engine.models.vqgan import VQGAN, read_config_dict

    torch.manual_seed(0)
    vqgan = VQGAN(read_config_dict(VQGAN_F16_16384, source="benchmark f16/16384"))
    with torch.no_grad():
        vqgan.codebook.normal_(0.0, 1.0)  # distinct codes, as in a trained codebook
    vqgan = vqgan.to(device).freeze()
    clip_module = import_clip().model
    clip_model = clip_module.CLIP(**CLIP_VIT_B_32)
    if device.type == "cuda":
        clip_module.convert_weights(clip_model)  # fp16, as openai-clip loads the official files on CUDA
    else:
        clip_model.float()
    clip_model = clip_model.to(device).eval().requires_grad_(False)
    perceptor = Perceptor(clip_model, device)
    return Models(vqgan=vqgan, perceptor=perceptor, device=device,
                  vqgan_name="vqgan_imagenet_f16_16384 (random weights)", clip_name="ViT-B/32 (random weights)")


def build_tiny_models(device):
    """The tiny test models (engine/models/tiny.py): for a quick run of this script."""
    import tempfile

    from engine.models import ModelSpec, load_models
    from engine.models.tiny import make_test_models

    directory = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    tiny = make_test_models(directory)
    return load_models(ModelSpec(vqgan=tiny.vqgan_name, clip=tiny.clip_name, model_dir=directory,
                                 device=str(device)))


class PeakMemory:
    """The peak for one row: CUDA's allocator counter, or the process's peak RSS (VmHWM),
    which Linux resets on writing 5 to /proc/self/clear_refs."""

    def __init__(self, device) -> None:
        self.device = device
        self.resettable = False

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "GPU max_memory_allocated"
        return "process peak RSS" + ("" if self.resettable else " (since start: not resettable here)")

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.resettable = True
        except OSError:
            self.resettable = False

    def read(self) -> int:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Row:
    """One batch size in one compile mode: its jobs, its warm-up, its timed rounds."""

    def __init__(self, compile_mode: str, batch_size: int) -> None:
        self.compile_mode, self.batch_size = compile_mode, batch_size
        self.batch: Any = None
        self.results: list[Any] = [None] * batch_size
        self.warmup = math.nan
        self.peak = 0
        self.rounds: list[float] = []
        self.out_of_memory = False

    def report(self, compiler, args, reference: dict[int, Any]) -> dict[str, Any]:
        if self.out_of_memory:
            return {"compile": self.compile_mode, "batch": self.batch_size, "out_of_memory": True}
        failed = [outcome for outcome in self.results if not hasattr(outcome, "image")]
        if failed:
            raise RuntimeError(f"a job failed: {failed[0]!r}")
        per_iteration = min(self.rounds)  # other load on the machine only ever slows a round down
        per_image = per_iteration * args.image_iterations / self.batch_size
        # The median too: on a shared machine the best round can be luck, the median shows it.
        median_per_image = statistics.median(self.rounds) * args.image_iterations / self.batch_size
        image = self.results[0].image
        return {
            "compile": self.compile_mode, "loop": compiler.mode, "batch": self.batch_size,
            "out_of_memory": False, "seconds_per_iteration": per_iteration,
            "seconds_per_image": per_image, "images_per_hour": 3600.0 / per_image,
            "median_images_per_hour": 3600.0 / median_per_image,
            "warmup_seconds": self.warmup, "peak_memory_mib": self.peak / 2**20,
            "psnr_vs_alone_db": _psnr(image, reference[0]) if 0 in reference else math.nan,
            "compile_failure": compiler.failure,
        }


def start_rows(models, numerics, compile_mode: str, args, memory: PeakMemory) -> tuple[Any, list[Row]]:
    """Every batch size in one compile mode, with one generator (and compiler), as one worker
    would: the rows start in order and run their warm-up iterations (their peak memory is
    taken then). Returns the compiler and the rows; a row out of memory ends the list."""
    from engine.batching import Batch, BatchJob, MemoryGuard
    from engine.compiling import Compiler
    from engine.generate import GenerationRequest, Generator
    from engine.prompts import parse_prompt

    device = models.device
    compiler = Compiler(compile_mode, device)
    generator = Generator(models, numerics, compiler)
    total = args.warmup + args.rounds * args.iterations
    rows: list[Row] = []
    for batch_size in args.batches:
        row = Row(compile_mode, batch_size)
        rows.append(row)
        # All at once, without the memory guard: the batch size is what is measured.
        row.batch = Batch(generator, capacity=batch_size, memory=MemoryGuard(None))
        memory.reset()
        for k in range(batch_size):
            request = GenerationRequest(prompts=parse_prompt(PROMPTS[k % len(PROMPTS)]), size=args.size,
                                        cutn=args.cutn, iterations=total, seed=k, l2_weight=args.l2,
                                        l2_decay=args.l2_decay)
            row.batch.join(BatchJob(request, lambda outcome, row=row, k=k: row.results.__setitem__(k, outcome)))
        synchronize(device)
        started = time.perf_counter()
        row.batch.step()  # the warm-up: compiling, where compiled, happens here
        synchronize(device)
        row.warmup = time.perf_counter() - started
        for _ in range(args.warmup - 1):
            row.batch.step()
        synchronize(device)
        row.peak = memory.read()
        print(f"  compile {compile_mode}, batch {batch_size}: warm-up {row.warmup:.1f} s",
              file=sys.stderr, flush=True)
        if row.batch.limits:  # out of memory: the batch set jobs aside, it is not B jobs
            row.out_of_memory, row.batch = True, None
            print(f"  compile {compile_mode}, batch {batch_size}: out of memory; no larger batch is tried",
                  file=sys.stderr, flush=True)
            free_memory(device)
            break
    return compiler, rows


def time_rounds(rows: list[Row], args, device) -> None:
    """The timed rounds go round all the rows (every mode, every batch size) in turn, so a
    spell of other load on the machine falls on every row alike."""
    for round_number in range(args.rounds):
        for row in rows:
            if row.out_of_memory:
                continue
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.iterations):  # nothing syncs inside a round, as in the worker's loop
                row.batch.step()
            synchronize(device)
            row.rounds.append((time.perf_counter() - started) / args.iterations)
            if row.batch.limits:
                row.out_of_memory, row.batch = True, None
                free_memory(device)
        print(f"  timed round {round_number + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    for row in rows:
        if not row.out_of_memory and row.batch.busy:
            raise RuntimeError(f"batch {row.batch_size} has not finished its iterations")


def _psnr(a, b) -> float:
    import numpy as np

    x, y = (np.asarray(image, dtype=np.float64) for image in (a, b))
    mse = float(((x - y) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def _table(rows: list[dict[str, Any]]) -> str:
    base = next((row for row in rows if row["compile"] == "off" and row["batch"] == 1
                 and not row["out_of_memory"]), None)
    header = ("compile", "batch", "s/iteration", "s/image", "images/h", "vs eager 1",
              "median vs eager 1", "warm-up s", "peak MiB", "psnr dB")
    lines = [header]
    for row in rows:
        if row["out_of_memory"]:
            lines.append((row["compile"], str(row["batch"]), "out of memory", *[""] * (len(header) - 3)))
            continue
        ratio = row["images_per_hour"] / base["images_per_hour"] if base else math.nan
        median_ratio = (row["median_images_per_hour"] / base["median_images_per_hour"]
                        if base else math.nan)
        lines.append((row["compile"] + (" (fell back to eager)" if row["compile_failure"] else ""), str(row["batch"]),
                      f"{row['seconds_per_iteration']:.3f}", f"{row['seconds_per_image']:.1f}",
                      f"{row['images_per_hour']:.1f}", f"{ratio:.2f}x", f"{median_ratio:.2f}x",
                      f"{row['warmup_seconds']:.1f}",
                      f"{row['peak_memory_mib']:.0f}", f"{row['psnr_vs_alone_db']:.1f}"))
    widths = [max(len(line[k]) for line in lines) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in lines)


def _list(kind, choices=None):
    def parse(text: str) -> list:
        values = [kind(part) for part in text.split(",") if part.strip()]
        if not values or (choices is not None and any(value not in choices for value in values)):
            raise argparse.ArgumentTypeError(f"a comma-separated list{f' of {choices}' if choices else ''}")
        return values
    return parse


def main(argv: list[str] | None = None) -> int:
    from engine.commands.generate import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="WIDTHxHEIGHT or one number (default 512)")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per job and iteration (default 32)")
    parser.add_argument("--batches", type=_list(int), default=[1, 2, 4, 8], help="batch sizes (default 1,2,4,8)")
    parser.add_argument("--compile", type=_list(str, ("off", "on")), default=["off", "on"],
                        help="compile modes to measure: off, on (default off,on)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per row; the best is kept (default 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2, at least 1)")
    parser.add_argument("--image-iterations", type=int, default=PAPER_ITERATIONS,
                        help=f"iterations of one image, for s/image and images/h (default {PAPER_ITERATIONS})")
    parser.add_argument("--l2", type=float, default=L2_ALPHA, help=f"the loop's α (default {L2_ALPHA:g})")
    parser.add_argument("--l2-decay", choices=L2_DECAYS, default=L2_DECAY, help=f"α's schedule (default {L2_DECAY})")
    parser.add_argument("--decoder-dtype", choices=("auto", *DECODER_DTYPES), default="auto",
                        help="the decoder's precision in the loop (default auto: bf16 where the GPU computes "
                             "it natively, else fp16; fp32 on the CPU); the loss is scaled wherever fp16 is used")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="the tiny test models instead (a quick try)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    args.warmup = max(1, args.warmup)
    args.iterations = max(1, args.iterations)
    args.rounds = max(1, args.rounds)

    import torch

    from engine.generate import Numerics
    from engine.models.loading import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    started = time.perf_counter()
    models = build_tiny_models(device) if args.tiny else build_models(device)
    build_seconds = time.perf_counter() - started
    numerics = None
    if args.decoder_dtype != "auto":
        numerics = Numerics.with_decoder(getattr(torch, DECODER_DTYPES[args.decoder_dtype]), models.perceptor.dtype)
    numerics = numerics or Numerics.for_models(models)
    memory = PeakMemory(device)
    reference: dict[int, Any] = {}
    rows = []
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="  %(name)s: %(message)s")
    logging.getLogger("engine.compiling").setLevel(logging.INFO)  # the warm-up of each shape
    torch._dynamo.reset()
    modes = [(compile_mode, *start_rows(models, numerics, compile_mode, args, memory))
             for compile_mode in args.compile]
    time_rounds([row for _, _, mode_rows in modes for row in mode_rows], args, device)
    eager_one = next((mode_rows[0] for compile_mode, _, mode_rows in modes if compile_mode == "off"
                      and mode_rows[0].batch_size == 1 and not mode_rows[0].out_of_memory), None)
    if eager_one is not None:
        reference[0] = eager_one.results[0].image
    rows = [row.report(compiler, args, reference) for _, compiler, mode_rows in modes for row in mode_rows]
    del modes
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "models": f"{models.vqgan_name} + {models.clip_name}",
        "size": f"{args.size[0]}x{args.size[1]}", "cutn": args.cutn,
        "decoder_dtype": str(numerics.decoder_dtype).removeprefix("torch."),
        "scaled_gradients": numerics.scale_gradients,
        "timed_iterations": f"{args.rounds} rounds of {args.iterations} (the best round kept)",
        "warmup_iterations": args.warmup,
        "peak_memory_kind": memory.kind,
        "model_build_seconds": round(build_seconds, 1),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    for key, value in report.items():
        if key != "rows":
            print(f"{key:>20}: {value}")
    print(_table(rows))
    for row in rows:
        if row.get("compile_failure"):
            print(f"compile {row['compile']} batch {row['batch']} fell back to eager: {row['compile_failure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

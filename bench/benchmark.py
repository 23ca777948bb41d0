#!/usr/bin/env python
"""Seconds per iteration, per 400-iteration image, and peak memory of the real loop.

Builds the real architectures with random weights, so it needs no downloads: the VQGAN
f16/16384 ImageNet model (taming's config, written out below) and CLIP ViT-B/32
(clip.model.CLIP with its real dimensions). Random weights cost the same FLOPs as trained
ones, so the timings are those of real jobs. It runs `engine.generate.Generator` itself,
so what it measures is what the bot runs.

    python bench/benchmark.py --size 512 --cutn 32 --iterations 20          # on the GPU
    python bench/benchmark.py --device cpu --size 128 --cutn 4 --iterations 3

Not a test: it prints numbers and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.method import L2_ALPHA, L2_DECAY, L2_DECAYS  # noqa: E402 (stdlib only: --help stays instant)

DECODER_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

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


def peak_memory_bytes(device) -> tuple[int, str]:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "GPU max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def main(argv: list[str] | None = None) -> int:
    from engine.commands.generate import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--size", type=parse_size, default=(512, 512), help="WIDTHxHEIGHT or one number (default 512)")
    parser.add_argument("--cutn", type=int, default=32, help="cutouts per iteration (default 32)")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations first (default 2)")
    parser.add_argument("--l2", type=float, default=L2_ALPHA, help=f"the loop's α (default {L2_ALPHA:g})")
    parser.add_argument("--l2-decay", choices=L2_DECAYS, default=L2_DECAY, help=f"α's schedule (default {L2_DECAY})")
    parser.add_argument("--decoder-dtype", choices=("auto", *DECODER_DTYPES), default="auto",
                        help="the decoder's precision in the loop (default auto: bf16 where the GPU computes "
                             "it natively, else fp16; fp32 on the CPU); the loss is scaled wherever fp16 is used")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    import torch

    from engine.generate import GenerationRequest, Generator, Numerics
    from engine.models.loading import pick_device
    from engine.prompts import parse_prompt

    device = pick_device(args.device)
    started = time.perf_counter()
    models = build_models(device)
    build_seconds = time.perf_counter() - started
    numerics = None
    if args.decoder_dtype != "auto":
        numerics = Numerics.with_decoder(getattr(torch, DECODER_DTYPES[args.decoder_dtype]), models.perceptor.dtype)
    generator = Generator(models, numerics)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    warmup = max(1, args.warmup)
    stamps: list[tuple[int, float]] = []
    request = GenerationRequest(
        prompts=parse_prompt("a forest rendered in low poly"), size=args.size, cutn=args.cutn,
        iterations=warmup + args.iterations, seed=0, progress_every=warmup, preview_size=64,
        l2_weight=args.l2, l2_decay=args.l2_decay,
    )
    # Progress points sync with the device (loss.item()), so the stamps are honest.
    result = generator.run(request, on_progress=lambda p: stamps.append((p.iteration, time.perf_counter())))
    (first_it, first_t), (last_it, last_t) = stamps[0], stamps[-1]
    per_iteration = (last_t - first_t) / max(1, last_it - first_it)
    memory, memory_kind = peak_memory_bytes(device)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "size": f"{result.size[0]}x{result.size[1]}",
        "decoder_dtype": str(generator.numerics.decoder_dtype).removeprefix("torch."),
        "scaled_gradients": generator.numerics.scale_gradients,
        "cutn": args.cutn,
        "timed_iterations": last_it - first_it,
        "seconds_per_iteration": round(per_iteration, 4),
        "seconds_per_400_iteration_image": round(per_iteration * 400, 1),
        "peak_memory_mib": round(memory / 2**20, 1),
        "peak_memory_kind": memory_kind,
        "model_build_seconds": round(build_seconds, 1),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>32}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

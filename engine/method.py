"""The method's numbers, each named for where it comes from: the paper or the authors' notebooks.

The paper is Crowson et al. 2022, "VQGAN-CLIP: Open Domain Image Generation and Editing with
Natural Language Guidance". docs/ARCHITECTURE.md ("Choices the paper leaves open") says why
each default is what it is where the paper gives no number.

Stdlib only: the CLI shows these in `--help` without importing torch, and the loop
(`engine.generate`) uses the same ones.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "PAPER_LR",
    "PAPER_BETAS",
    "PAPER_ITERATIONS",
    "L2Decay",
    "L2_DECAYS",
    "L2_ALPHA",
    "L2_DECAY",
    "NOTEBOOK_STEP_EVERY",
    "NOTEBOOK_STEPS",
    "G2_ORIGINAL_WEIGHT",
    "KEEP_STRUCTURE",
    "l2_weight",
]

# Section 2: "We use Adam [...], a learning rate of 0.15, β = (0.9, 0.999), and run for 400
# iterations".
PAPER_LR = 0.15
PAPER_BETAS = (0.9, 0.999)
PAPER_ITERATIONS = 400

# Section 2.4: Loss = L_CLIP + α · mean(z²), and "we decay the regularization term [...] over
# the course of generation". The paper gives no α and no schedule beyond that.
L2Decay = Literal["linear", "step", "inverse"]
L2_DECAYS: tuple[L2Decay, ...] = get_args(L2Decay)
L2_ALPHA = 0.75  # the authors' MSE notebook: init_weight 1.5, applied as mse_loss(z, 0) * w / 2
L2_DECAY: L2Decay = "linear"  # to 0 over the run: the paper's words, for any number of iterations
NOTEBOOK_STEP_EVERY = 50  # "step": the MSE notebook takes α/5 off every 50 iterations ...
NOTEBOOK_STEPS = 5  # ... five times, so the term is gone from iteration 250

# Appendix G.2: a masked edit minimises "a weighted sum" of each cutout's distance to the
# target phrase and to the original image. The paper gives no weights.
G2_ORIGINAL_WEIGHT = 0.5

# Not in the paper: an opt-in pull of an edit's latent towards its source, mean((z - z0)²).
KEEP_STRUCTURE = 0.0


def l2_weight(alpha: float, decay: L2Decay, iteration: int, iterations: int) -> float:
    """The weight of mean(z²) at 0-based `iteration` of `iterations` (section 2.4's α, decayed).

    - ``linear``: α · (1 - i / T), from α at the first step towards 0 at the last;
    - ``step``: α · (1 - ⌊i / 50⌋ / 5), floored at 0: the MSE notebook's staircase, 0 from
      iteration 250 whatever T is;
    - ``inverse``: α / (2i + 1): the z+quantize notebooks' ``init_weight / (2i + 1)``.

    A plain float: the loop multiplies a tensor by it, so it costs the device nothing.
    """
    if decay == "linear":
        return alpha * (1.0 - iteration / iterations)
    if decay == "step":
        return alpha * max(0.0, 1.0 - (iteration // NOTEBOOK_STEP_EVERY) / NOTEBOOK_STEPS)
    if decay == "inverse":
        return alpha / (2 * iteration + 1)
    raise ValueError(f"unknown L2 decay {decay!r}: use one of {', '.join(L2_DECAYS)}")

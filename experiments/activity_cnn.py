"""Activity perturbation and local losses on the CNN, each method at its own best learning rate,
at a length that fits a 2-core CPU (beyond the paper; the MLP's comparison is
``experiments/activity.py``).

Run:
  python experiments/activity_cnn.py --preset cpu    # 5 methods × 3 rates (seed 0), then seed 1
                                                     #   at each method's best rate: 20 runs of
                                                     #   470 steps (half an epoch), ~30 min
                                                     #   → results/cpu/activity_cnn
  python experiments/activity_cnn.py --preset paper  # 10 epochs, seeds 0-2, 3 more at the best

The CNN of the paper (four 3×3 convolutions with 64 channels, 2×2 max-pool after the 2nd and 4th,
dense 1024, dense 10), PyTorch's initialisation; Adam for every method, η_i = η₀·e^(−ik) with
k = 1e-4, batch 64, test error after every 235 steps (paper preset: every 940). The best η₀ of
a method is the one with the lowest final training loss of the sweep's seeds (the test set is
never used to choose). Local
losses: a block per conv pair + pool, each but the last with a linear classifier on its globally
average-pooled features, gradients stopped between the blocks.
"""

import sys

from fgrad.lab.config import experiment, local_loss_variants

STEPS, EVAL = 470, 235  # half an epoch (30,080 examples), test error twice: what fits
PRESETS = {
    "cpu": {"seeds": [0], "best_rate_seeds": [1], "learning_rates": [1e-4, 3e-4, 1e-3]},
    "paper": {"seeds": [0, 1, 2], "best_rate_seeds": [3, 4, 5], "steps": 9_400,
              "eval_every": 940, "learning_rates": [3e-4, 1e-3, 3e-3]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="activity_cnn", order=78, group="beyond",
                      report="activity",
                      title="Activity perturbation and local losses on the CNN, each method at "
                      "its best rate (beyond the paper)",
                      model="cnn", optimizer="adam",
                      variants=local_loss_variants({}), steps=STEPS, eval_every=EVAL)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

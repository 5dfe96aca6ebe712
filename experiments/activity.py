"""Activity perturbation and local losses (Ren, Kornblith, Liao and Hinton, ICLR 2023) against
backprop and weight perturbation (the paper's forward gradient) on the MLP 784-1024-1024-10, each
at its own best learning rate (beyond the paper).

Run:
  python experiments/activity.py --preset cpu    # 5 methods × 3 rates (seed 0), then seed 1 at
                                                 #   each method's best rate: 20 runs of 10
                                                 #   epochs, ~40 min on a 2-core CPU
                                                 #   → results/cpu/activity
  python experiments/activity.py --preset paper  # seeds 0-2 at every rate, 3 more at the best

Adam for every method, η_i = η₀·e^(−ik) with k = 1e-4, batch 64, 9,400 steps (10.03 epochs),
test error after every 940 steps; PyTorch's initialisation. The best η₀ of a method is the one
with the lowest final training loss of the sweep's seeds (fgrad._results.best_learning_rate;
the test set is never used to choose). Methods: backprop; weight-perturbed forward gradient
(one normal tangent); activity-perturbed forward gradient (one normal perturbation per example,
ReLU-masked); both again with local losses (a linear classifier on the first hidden layer,
gradients stopped between the blocks: backprop so becomes local greedy backprop).
"""

import sys

from fgrad.lab.config import experiment, local_loss_variants

MODEL = {"width": 1024, "depth": 2}
VARIANTS = local_loss_variants(MODEL)

PRESETS = {
    "cpu": {"seeds": [0], "best_rate_seeds": [1]},
    "paper": {"seeds": [0, 1, 2], "best_rate_seeds": [3, 4, 5]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="activity", order=77, group="beyond",
                      report="activity",
                      title="Activity perturbation and local losses, each method at its best "
                      "rate (beyond the paper)",
                      model="mlp", model_kwargs=MODEL, optimizer="adam",
                      learning_rates=[3e-4, 1e-3, 3e-3], variants=VARIANTS, steps=9_400,
                      eval_every=940)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

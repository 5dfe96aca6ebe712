"""Multinomial logistic regression (784→10) on MNIST, forward gradient vs backprop.

Run:
  python experiments/logreg.py --preset cpu     # 25,000 iterations (the paper's), 2 seeds,
                                                #   ~20 s on a 2-core CPU → results/cpu/logreg
  python experiments/logreg.py --preset full    # 3 seeds → results/full/logreg
  python experiments/logreg.py --preset paper   # 5 seeds

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4. The paper's η₀ for this model is not stated in
the sources we had; we use 2e-4, the larger of the MLP's two rates (the same for both methods,
as in the paper's protocol).
"""

import sys

from fgrad.lab.config import experiment

PRESETS = {
    "cpu": {"seeds": [0, 1]},
    "full": {"seeds": [0, 1, 2]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="logreg", order=20,
                      title="Logistic regression on MNIST", model="logreg",
                      learning_rates=[2e-4], steps=25_000, eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

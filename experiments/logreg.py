"""Multinomial logistic regression (784→10) on MNIST, forward gradient vs backprop.

Run:
  python experiments/logreg.py --preset cpu     # ~10 s on a 2-core CPU → results/cpu/logreg
  python experiments/logreg.py --preset paper   # 25,000 iterations, 5 seeds

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4. The paper's η₀ for this model is not stated in
the sources we had; we use 2e-4, the larger of the MLP's two rates (the same for both methods,
as in the paper's protocol).
"""

import sys

from fgrad.lab.config import defaults, finalize

PRESETS = {
    "cpu": {"steps": 5_000, "seeds": [0, 1], "eval_every": 1_000},
    "paper": {"steps": 25_000, "seeds": [0, 1, 2, 3, 4], "eval_every": 1_000},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("mnist")
    cfg.update(name="logreg", title="Logistic regression on MNIST", order=20, model="logreg",
               learning_rates=[2e-4], **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

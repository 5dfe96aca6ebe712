"""CNN on MNIST: four 3×3 convolutions with 64 channels ("SAME" padding) and
ReLU, 2×2 max-pool after the 2nd and 4th, dense 1024 + ReLU, dense 10.

Run:
  python experiments/cnn.py --preset cpu     # ~2 min on a 2-core CPU → results/cpu/cnn
  python experiments/cnn.py --preset paper   # 20,000 iterations, 5 seeds (a GPU job)

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4; η₀ = 2e-4 (our choice: the paper's CNN rate is not
stated in the sources we had).
"""

import sys

from fgrad.lab.config import defaults, finalize

PRESETS = {
    "cpu": {"steps": 300, "seeds": [0], "eval_every": 100, "eval_examples": 2_000},
    "paper": {"steps": 20_000, "seeds": [0, 1, 2, 3, 4], "eval_every": 1_000},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("mnist")
    cfg.update(name="cnn", title="CNN on MNIST", order=40, model="cnn", learning_rates=[2e-4],
               **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

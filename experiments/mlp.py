"""MLP 784-1024-1024-10 (ReLU) on MNIST, forward gradient vs backprop.

Run:
  python experiments/mlp.py --preset cpu      # ~2 min on a 2-core CPU → results/cpu/mlp
  python experiments/mlp.py --preset paper    # 20,000 iterations, η₀ ∈ {2e-5, 2e-4}, 5 seeds
  python experiments/mlp.py --help            # every config key, e.g. --steps --lr --seeds

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4, normal tangents, one tangent per step.
"""

import sys

from fgrad.lab.config import defaults, finalize

PRESETS = {
    "cpu": {"steps": 2_000, "seeds": [0, 1], "eval_every": 500},
    "paper": {"steps": 20_000, "seeds": [0, 1, 2, 3, 4], "eval_every": 1_000},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("mnist")
    cfg.update(name="mlp", title="MLP on MNIST", order=30, model="mlp",
               model_kwargs={"width": 1024, "depth": 2}, learning_rates=[2e-5, 2e-4],
               **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

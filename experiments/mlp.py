"""MLP 784-1024-1024-10 (ReLU) on MNIST, forward gradient vs backprop, at the paper's 20,000
iterations with PyTorch's initialisation (the paper's code).

Run:
  python experiments/mlp.py --preset cpu      # η₀ = 2e-4 × 2 seeds, 2e-5 × 1 seed: 6 runs,
                                              #   ~13 min on a 2-core CPU → results/cpu/mlp
  python experiments/mlp.py --preset full     # both rates × 2 seeds (~17 min) → results/full/mlp
  python experiments/mlp.py --preset paper    # both rates × 5 seeds
  python experiments/mlp.py --help            # every config key, e.g. --steps --lr --seeds

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4, normal tangents, one tangent per step.
"""

import sys

from fgrad.lab.config import experiment

MODEL = {"width": 1024, "depth": 2}


def _both(learning_rate: float, seeds: list[int]) -> list[dict]:
    """Both methods at one η₀ over ``seeds`` (variants named after the method)."""
    return [{"name": m, "method": m, "learning_rates": [learning_rate], "seeds": seeds}
            for m in ("forward", "backprop")]


PRESETS = {
    "cpu": {"seeds": [0, 1], "variants": _both(2e-5, [0]) + _both(2e-4, [0, 1])},
    "full": {"seeds": [0, 1]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="mlp", order=30, title="MLP on MNIST",
                      model="mlp", model_kwargs=MODEL, learning_rates=[2e-5, 2e-4],
                      steps=20_000, eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

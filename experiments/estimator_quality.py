"""Estimator quality: cosine similarity with the true gradient and per-entry variance of forward
gradients vs K and tangent distribution, beside theory, for logistic regression, MLP and CNN at
initialisation and after some backprop training (beyond the paper).

Run:
  python experiments/estimator_quality.py --preset cpu     # → results/cpu/estimator_quality
  python experiments/estimator_quality.py --preset paper

Theory (see fgrad/_quality.py): Var[g_i] = (‖∇‖² ± ∇_i²)/K (+ normal, − Rademacher);
E[cos²] = K/n for projection (normal), ≈ K/(n+K−1) for the mean.
"""

import sys

from fgrad import experiment_cli

# (tangent distribution, combination) pairs.
ALL = [["normal", "mean"], ["rademacher", "mean"], ["normal", "projection"],
       ["rademacher", "projection"]]
PRESETS = {
    "cpu": {"logreg": {"estimators": ALL[:3], "num_tangents": [1, 4, 16], "samples": 256},
            "mlp": {"estimators": ALL[:3], "num_tangents": [1, 4, 16], "samples": 32},
            "cnn": {"estimators": ALL[:1], "num_tangents": [1, 4], "samples": 8}},
    "paper": {"logreg": {"estimators": ALL, "num_tangents": [1, 2, 4, 16, 64], "samples": 1024},
              "mlp": {"estimators": ALL, "num_tangents": [1, 2, 4, 16, 64], "samples": 256},
              "cnn": {"estimators": ALL, "num_tangents": [1, 2, 4, 16], "samples": 64}},
}


def get_config(preset: str = "cpu") -> dict:
    return {
        "name": "estimator_quality",
        "kind": "estimator_quality",
        "models": PRESETS[preset],
        "batch_size": 64,
        "seed": 0,
        "train_steps": 20 if preset == "cpu" else 500,  # "after some training": backprop SGD
        "train_lr": 0.05,
    }


if __name__ == "__main__":
    sys.exit(experiment_cli(get_config, __doc__))

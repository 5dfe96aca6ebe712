"""Estimator quality: cosine similarity with the true gradient and per-entry variance of forward
gradients vs K and tangent distribution, beside theory, for logistic regression, MLP and CNN at
initialisation and after some backprop training (beyond the paper).

Run:
  python experiments/estimator_quality.py --preset cpu     # → results/cpu/estimator_quality
  python experiments/estimator_quality.py --preset paper

Theory (fgrad/lab/run/estimator_quality.py): Var[g_i] = (‖∇‖² ± ∇_i²)/K (+ normal, − Rademacher);
E[cos²] = K/n for projection (normal), ≈ K/(n+K−1) for the mean.
"""

import sys

from fgrad.lab.config import defaults, finalize

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


def get_config(preset: str = "cpu"):
    cfg = defaults("estimator_quality")
    cfg.update(name="estimator_quality", order=50, group="beyond", report="quality",
               title="Estimator quality: cosine and variance vs K, against theory "
               "(beyond the paper)",
               models=PRESETS[preset], batch_size=64, seed=0, train_lr=0.05,
               train_steps=20 if preset == "cpu" else 500)  # "after some training": backprop SGD
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

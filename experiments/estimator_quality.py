"""Estimator quality: cosine similarity with the true gradient and per-entry variance of forward
gradients vs K and tangent distribution, beside theory, for logistic regression, MLP and CNN at
initialisation and after some backprop training (beyond the paper).

Run:
  python experiments/estimator_quality.py --preset cpu     # → results/cpu/estimator_quality
  python experiments/estimator_quality.py --preset paper

Theory (fgrad/lab/run/estimator_quality.py): Var[g_i] = (‖∇‖² ± ∇_i²)/K (+ normal, − Rademacher);
normal tangents: cos² ~ Beta(K/2, (n−1)/2) for the mean (E = K/(n+K−1)) and Beta(K/2, (n−K)/2) for
the projection (E = K/n), each tested with Kolmogorov–Smirnov; M per setting for a 5 % relative
standard error of E[cos²] (cpu preset: about 10 min on a 2-core CPU, most of it the CNN).
"""

import sys

from fgrad.lab.config import defaults, finalize

# (tangent distribution, combination) pairs.
ALL = [["normal", "mean"], ["rademacher", "mean"], ["normal", "projection"],
       ["rademacher", "projection"]]
# "auto": M estimates per setting for a 5 % relative standard error of E[cos²] (960 at K = 1).
PRESETS = {
    "cpu": {"logreg": {"estimators": ALL[:3], "num_tangents": [1, 4, 16], "samples": "auto"},
            "mlp": {"estimators": ALL[:3], "num_tangents": [1, 4, 16], "samples": "auto"},
            "cnn": {"estimators": ALL[:1], "num_tangents": [1, 4], "samples": "auto"}},
    "paper": {"logreg": {"estimators": ALL, "num_tangents": [1, 2, 4, 16, 64], "samples": "auto"},
              "mlp": {"estimators": ALL, "num_tangents": [1, 2, 4, 16, 64], "samples": "auto"},
              "cnn": {"estimators": ALL, "num_tangents": [1, 2, 4, 16], "samples": "auto"}},
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

"""Multi-tangent forward gradients on the MLP (beyond the paper): K tangents per step combined by
their mean (unbiased, variance / K) or by orthogonal projection onto their span (Flügel et al.
2024), normal and Rademacher tangents, beside backprop.

Run:
  python experiments/k_sweep.py --preset cpu     # → results/cpu/k_sweep
  python experiments/k_sweep.py --preset paper   # K ∈ {1, 2, 4, 16} × mean/projection × normal/
                                                 # Rademacher, 20,000 steps, 3 seeds

The mean variants use the paper's η₀ = 2e-4 (as the forward gradient in mlp.py). The projection
P∇ = V(VᵀV)⁻¹Vᵀ∇ is shorter by a factor K/n: E[P∇] = (K/n)∇, and for K ≪ n, VᵀV ≈ n·I, so
P∇ ≈ (K/n)·(mean estimate). It therefore runs at η₀ = 2e-4·n/K (n = 1,863,690 parameters),
the step size at which it takes the mean estimate's steps, so the two combines are compared at
equal step lengths. Backprop runs at 2e-4 (the paper's shared rate) and 0.05 (near its best,
see lr_sweep.py).
"""

import sys

from fgrad.lab.config import defaults, finalize

MLP_PARAMS = 1_863_690  # 784-1024-1024-10 (tests/test_models.py checks the count)
ETA = 2e-4


def _fg(k: int, combine: str = "mean", distribution: str = "normal") -> dict:
    lrs = [ETA] if combine == "mean" else [float(f"{ETA * MLP_PARAMS / k:.4g}")]
    return {"name": f"fg-{distribution}-K{k}-{combine}", "method": "forward",
            "num_tangents": k, "combine": combine, "distribution": distribution,
            "learning_rates": lrs}


BACKPROP = {"name": "backprop", "method": "backprop", "learning_rates": [ETA, 0.05]}
PRESETS = {
    "cpu": {"steps": 1_000, "seeds": [0], "eval_every": 500,
            "variants": [BACKPROP, _fg(1), _fg(4), _fg(4, "projection"),
                         _fg(1, distribution="rademacher")]},
    "paper": {"steps": 20_000, "seeds": [0, 1, 2], "eval_every": 1_000,
              "variants": [BACKPROP] + [_fg(k, c, d) for d in ("normal", "rademacher")
                                        for c in ("mean", "projection") for k in (1, 2, 4, 16)]},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("mnist")
    cfg.update(name="k_sweep", order=60, group="beyond", report="k_sweep",
               title="Multi-tangent forward gradients on the MLP (beyond the paper)",
               model="mlp", model_kwargs={"width": 1024, "depth": 2}, learning_rates=[ETA],
               diagnostics_every=100,  # cosine with the true gradient, logged apart from timing
               **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

"""A fair comparison on the MLP (beyond the paper): a learning-rate sweep per method, with SGD
(the paper's optimizer) and Adam, so each method is judged at its own best rate as well as at
the paper's shared rate (mlp.py).

Run:
  python experiments/lr_sweep.py --preset cpu     # → results/cpu/lr_sweep
  python experiments/lr_sweep.py --preset paper   # 20,000 steps, 3 seeds

Grids (η₀, with the paper's decay k = 1e-4): forward-gradient SGD {1e-4, 3e-4, 1e-3, 3e-3};
backprop SGD {1e-3, 1e-2, 3e-2, 1e-1}; forward-gradient Adam {1e-5, 1e-4, 1e-3}; backprop Adam
{1e-4, 1e-3}. The best rate per method is the one with the lowest final training loss.
"""

import sys

from fgrad.lab.config import defaults, finalize

VARIANTS = [
    {"name": "forward-sgd", "method": "forward", "learning_rates": [1e-4, 3e-4, 1e-3, 3e-3]},
    {"name": "backprop-sgd", "method": "backprop", "learning_rates": [1e-3, 1e-2, 3e-2, 1e-1]},
    {"name": "forward-adam", "method": "forward", "optimizer": "adam",
     "learning_rates": [1e-5, 1e-4, 1e-3]},
    {"name": "backprop-adam", "method": "backprop", "optimizer": "adam",
     "learning_rates": [1e-4, 1e-3]},
]
PRESETS = {
    "cpu": {"steps": 1_000, "seeds": [0], "eval_every": 500},
    "paper": {"steps": 20_000, "seeds": [0, 1, 2], "eval_every": 1_000},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("mnist")
    cfg.update(name="lr_sweep", order=70, group="beyond", report="lr_sweep",
               title="Learning-rate sweep per method on the MLP (beyond the paper)",
               model="mlp", model_kwargs={"width": 1024, "depth": 2}, learning_rates=[],
               variants=VARIANTS, **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

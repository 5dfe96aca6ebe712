"""Beale and Rosenbrock trajectories, forward gradient vs backprop (paper Figure 2).

Run:
  python experiments/test_functions.py --preset cpu     # results/cpu/test_functions
  python experiments/test_functions.py --preset paper   # the same: the runs are cheap

Start points read off the paper's Figure 2: Beale (0, 0.5), Rosenbrock (−1, 0). Constant learning
rates (η = 0.01 Beale, 5e-4 Rosenbrock; decay k = 0), plain SGD, 10 seeds for both methods
(backprop is deterministic, so its seeds agree; they are kept for like-for-like timing).
"""

import sys

from fgrad.lab.config import defaults, finalize


def get_config(preset: str = "cpu"):
    del preset  # both presets run the paper's full setting: a few seconds on a CPU
    cfg = defaults("test_functions")
    cfg.update(name="test_functions", order=10,
               title="Test functions: Beale and Rosenbrock (paper Figure 2)",
               functions={
                   "beale": {"start": (0.0, 0.5), "learning_rate": 0.01, "steps": 1_000},
                   "rosenbrock": {"start": (-1.0, 0.0), "learning_rate": 5e-4, "steps": 25_000},
               },
               seeds=10, chunk=250, decay=0.0)  # chunk: iterations per compiled lax.scan call
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

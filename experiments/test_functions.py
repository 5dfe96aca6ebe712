"""Beale and Rosenbrock trajectories, forward gradient vs backprop (paper Figure 2).

Run:
  python experiments/test_functions.py --preset cpu     # results/cpu/test_functions
  python experiments/test_functions.py --preset paper   # the same: the runs are cheap

Start points read off the paper's Figure 2: Beale (0, 0.5), Rosenbrock (−1, 0). Constant learning
rates (η = 0.01 Beale, 5e-4 Rosenbrock; decay k = 0), plain SGD, 10 seeds for both methods
(backprop is deterministic, so its seeds agree; they are kept for like-for-like timing).
"""

import sys

from fgrad import experiment_cli


def get_config(preset: str = "cpu") -> dict:
    del preset  # both presets run the paper's full setting: a few seconds on a CPU
    return {
        "name": "test_functions",
        "kind": "test_functions",
        "functions": {
            "beale": {"start": (0.0, 0.5), "learning_rate": 0.01, "steps": 1_000},
            "rosenbrock": {"start": (-1.0, 0.0), "learning_rate": 5e-4, "steps": 25_000},
        },
        "methods": ["forward", "backprop"],
        "seeds": 10,
        "chunk": 250,         # iterations per compiled lax.scan call (timed at boundaries)
        "decay": 0.0,
        "num_tangents": 1,
        "distribution": "normal",
    }


if __name__ == "__main__":
    sys.exit(experiment_cli(get_config, __doc__))

"""Low-rank tangents in training: backprop, forward gradient with i.i.d. tangents and with rank-1
tangents on the MLP (784-1024-1024-10) at the paper's η₀ = 2e-4 and 20,000 steps (beyond the
paper; fgrad._lowrank).

Run:
  python experiments/low_rank.py --preset cpu    # 2 seeds × 3 methods, ~25 min on a 2-core CPU
                                                 #   → results/cpu/low_rank
  python experiments/low_rank.py --preset paper  # 5 seeds

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4, PyTorch's initialisation, one tangent per step.
Every kernel's tangent is V = a bᵀ (a, b standard normal; biases i.i.d.), an unbiased forward
gradient whose tangent products cost B(m + n) instead of B·m·n. All three methods run in one
process on one machine, so their wall times can be compared (T_f/T_b in the report).
"""

import sys

from fgrad.lab.config import experiment

VARIANTS = [
    {"name": "backprop", "method": "backprop"},
    {"name": "forward", "method": "forward"},
    {"name": "forward_low_rank", "method": "forward", "tangents": "low_rank", "rank": 1},
]
PRESETS = {
    "cpu": {"seeds": [0, 1]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="low_rank", order=76, group="beyond",
                      report="tangents",
                      title="Low-rank tangents: loss per iteration and per second (beyond the "
                      "paper)",
                      model="mlp", model_kwargs={"width": 1024, "depth": 2},
                      learning_rates=[2e-4], variants=VARIANTS, steps=20_000, eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

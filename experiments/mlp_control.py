"""Why forward gradients can beat backprop per iteration at the same learning rate: a control on
the MLP (784-1024-1024-10, the paper's η₀ = 2e-4, 20,000 steps, PyTorch's initialisation).

Run:
  python experiments/mlp_control.py --preset cpu    # 1 seed, ~7 min on a 2-core CPU
                                                    #   → results/cpu/mlp_control
  python experiments/mlp_control.py --preset full   # 2 seeds

Three methods from the same parameters on the same batches: forward gradient, backprop, and
backprop plus independent Gaussian noise with the forward gradient's mean and covariance
(ξ = ‖∇f‖ z + s ∇f, fgrad._transforms.noisy_backprop_source). The weight norm ‖θ‖ is logged at
every evaluation. If the noisy backprop behaves like the forward gradient, what helps is the
noise level (the update's size), not the forward gradient's structure.
"""

import sys

from fgrad.lab.config import experiment

PRESETS = {
    "cpu": {"seeds": [0]},
    "full": {"seeds": [0, 1]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "cpu"):
    return experiment("mnist", PRESETS[preset], name="mlp_control", order=75, group="beyond",
                      report="control",
                      title="Control: forward gradient vs backprop plus the same noise, per "
                      "iteration (beyond the paper)",
                      model="mlp",
                      model_kwargs={"width": 1024, "depth": 2},
                      learning_rates=[2e-4], methods=["forward", "backprop", "backprop_noise"],
                      steps=20_000, eval_every=500)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

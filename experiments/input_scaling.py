"""Input scaling: the MLP pair at the paper's η₀ = 2e-4 on pixels x/255 in [0, 1], beside the
same pair on standardised pixels (the ``mlp`` experiment's runs of the same seeds), to show how
much forward gradients and backprop depend on the input convention (beyond the paper).

Run:
  python experiments/input_scaling.py --preset full   # seeds 0, 1, 20,000 steps each: 4 runs,
                                                      #   ~9 min on a 2-core CPU
                                                      #   → results/full/input_scaling
  python experiments/mlp.py --preset full             # the standardised pair it is read beside

Everything else is the ``mlp`` experiment's (784-1024-1024-10, ReLU, PyTorch's initialisation,
SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4, one normal tangent per step), so the only
difference between the two pairs is ``inputs``: "unit" here, "standardize" there. The report
section reads ``../mlp`` (same preset folder) for the standardised runs.
"""

import sys

from fgrad.lab.config import experiment

PRESETS = {"full": {"seeds": [0, 1]}}  # beside results/full/mlp's η₀ = 2e-4 pair


def get_config(preset: str = "full"):
    return experiment("mnist", PRESETS[preset], name="input_scaling", order=35, group="beyond",
                      report="inputs",
                      title="Input scaling: the MLP pair on x/255 pixels beside standardised "
                      "ones (beyond the paper)",
                      model="mlp", model_kwargs={"width": 1024, "depth": 2}, inputs="unit",
                      learning_rates=[2e-4], steps=20_000, eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

"""CNN on MNIST: four 3×3 convolutions with 64 channels ("SAME" padding) and
ReLU, 2×2 max-pool after the 2nd and 4th, dense 1024 + ReLU, dense 10.

Run:
  python experiments/cnn.py --preset full    # 20,000 iterations (the paper's), 1 seed, PyTorch's
                                             #   init: ~2 h on a 2-core CPU → results/full/cnn
  python experiments/cnn.py --preset paper   # 5 seeds (a GPU job)

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4; η₀ = 2e-4 for both methods (the paper's MLP rate,
and orobix/fwdgrad's for its ConvNet; the sources we had do not give the paper's CNN rate); no
clipping (``clip_norm`` 0), standardised inputs and PyTorch's initialisation as every MNIST
experiment.

History. On x/255 pixels (before 2026-12-04) the CNN learned nothing at 2e-4 in 20,000 steps,
and forward gradient diverged at 1e-3 and 2e-3 without a clip; that pair (η₀ = 1e-3, clip 500)
is kept in ``results/archive/x255/full/cnn`` as a record of that regime. In the standardised
regime the paper's plain SGD is tried first; a clip comes back only if a run diverges without it.
"""

import sys

from fgrad.lab.config import experiment

# No cpu preset: the CNN learns nothing in the steps a short CPU run affords (300 steps: test
# accuracy at chance), so make reproduce leaves it out and the full preset runs it.
PRESETS = {
    "full": {"seeds": [0]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "full"):
    return experiment("mnist", PRESETS[preset], name="cnn", order=40, title="CNN on MNIST",
                      model="cnn", learning_rates=[2e-4],
                      steps=20_000, eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

"""CNN on MNIST: four 3×3 convolutions with 64 channels ("SAME" padding) and
ReLU, 2×2 max-pool after the 2nd and 4th, dense 1024 + ReLU, dense 10.

Run:
  python experiments/cnn.py --preset full    # 20,000 iterations (the paper's), 1 seed, PyTorch's
                                             #   init: ~2 h on a 2-core CPU → results/full/cnn
  python experiments/cnn.py --preset paper   # 5 seeds (a GPU job)

SGD, batch 64, η_i = η₀·e^(−ik) with k = 1e-4; η₀ = 1e-3, the same for both methods. The paper's
CNN rate is not stated in the sources we had. We measured (PyTorch init, seed 0, this machine):
at η₀ = 2e-4 forward gradient learned nothing in 20,000 steps (loss 2.304 → 2.300, test accuracy
0.1135 at start and end; commit 7f5f45a) and backprop was as flat after 3,638 steps (2.303); at
η₀ = 1e-2 forward gradient diverged within 84 steps (loss 15); η₀ = 2e-3 is stable for both over
400 steps, so it is the largest rate of those tried at which the comparison can be made;
but over the full length the forward-gradient run diverged at step 1,933 (2026-12-02, 2-core
Intel Xeon; parameter norm 20.8 → 30.6 by step 1,000; its run stays in results/full/cnn),
so the preset now uses 1e-3. There the forward gradient learned (test accuracy 0.48 at step
9,000) and then diverged at step 9,924 (parameter norm 20.8 → 43.0); backprop at 1e-3 is still
to be run; 5e-4 or gradient clipping are the next candidates.
"""

import sys

from fgrad.lab.config import experiment

MODEL = {"init_scheme": "pytorch"}  # the paper's code's (PyTorch's) initialisation
# No cpu preset: the CNN learns nothing in the steps a short CPU run affords (300 steps: test
# accuracy at chance), so make reproduce leaves it out and the full preset runs it.
PRESETS = {
    "full": {"seeds": [0]},
    "paper": {"seeds": [0, 1, 2, 3, 4]},
}


def get_config(preset: str = "full"):
    return experiment("mnist", PRESETS[preset], name="cnn", order=40, title="CNN on MNIST",
                      model="cnn", model_kwargs=MODEL, learning_rates=[1e-3], steps=20_000,
                      eval_every=1_000)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

"""Bytes all-reduced per data-parallel training step: forward gradient (i.i.d. and low-rank
tangents), activity perturbation and backprop (beyond the paper), for the paper's MLP
(784-1024-1024-10) and CNN.

Run:
  python experiments/comm_bytes.py                 # ~1 min on a 2-core CPU
                                                   # → results/comm/allreduce_bytes.json
  python experiments/comm_bytes.py --devices 8 --out results/comm8

On D host (CPU) devices forced with ``jax_num_cpu_devices``, for each model and method this
compiles the data-parallel step of fgrad.train.parallel (batch 64 split over the devices), sums
the operand bytes of the all-reduces in its HLO, and trains a few SGD steps on random
MNIST-shaped data on D devices and on one device to report the largest parameter difference.
A forward-gradient step all-reduces K + 1 float32 scalars (the K directional derivatives and
the loss), with i.i.d. or low-rank tangents; a backprop step all-reduces the whole gradient, 4n
bytes for n parameters, and so does an activity-perturbed one (weight-sized local estimates).
"""

import sys

from fgrad.lab.config import defaults, finalize

PRESETS = ("cpu",)


def get_config(preset: str = "cpu"):
    del preset
    cfg = defaults("comm_bytes")
    cfg.update(name="comm_bytes", order=210, group="standalone", report="",
               title="All-reduce bytes per data-parallel step", results_dir="results/comm",
               devices=4, batch_size=64, steps=3, seed=0,
               learning_rate=2e-4,  # the paper's η₀ for both models
               models={"mlp": {"width": 1024, "depth": 2}, "cnn": {}},
               forward_num_tangents=[1, 8], low_rank_num_tangents=[1],
               activity_num_perturbations=[1])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

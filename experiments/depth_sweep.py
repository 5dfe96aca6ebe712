"""MLP depth sweep: time and memory of forward-gradient (i.i.d. and rank-1 low-rank tangents) vs
backprop steps as depth grows.

Run:
  python experiments/depth_sweep.py --preset cpu     # width 1024, depths 1–16, B = 64 and 1024,
                                                     #   f, backprop, forward gradient
                                                     #   (~4 min on a 2-core CPU)
                                                     #   → results/cpu/depth_sweep/depth_sweep.json
  python experiments/depth_sweep.py --preset full    # depths 1–32, and the rank-1 step
                                                     #   (~10 min) → results/full/depth_sweep
  python experiments/depth_sweep.py --preset paper   # depths 1, 2, 5, 10, 20, 50, 100
  python experiments/depth_sweep.py --out /tmp/ds --depths 1 2 4 --batch-sizes 64
  python experiments/depth_sweep.py --out /tmp/ds --time False     # memory only

For each batch size and depth (one process each, unless --isolate False): R_f = T(fwd step)/T(f)
and R_b = T(bp step)/T(f) (medians of interleaved rounds; each timed call runs S steps, S as in
training, fewer where a call would exceed 0.5 s, one where a step takes ≥ 50 ms), and for both
steps XLA's peak memory split into parameter-sized buffers and the rest (from two compilations,
at B and B/2: see fgrad/lab/run/depth_sweep.py). The batch is passed as an argument, so the data
set never counts.
Writes one JSON object (environment, config, rows, summary) and a Markdown table beside it.
"""

import sys

from fgrad.lab.config import defaults, finalize

PRESETS = {
    # The paper's three steps to depth 16: the rank-1 step (beyond the paper) and depth 32 (two
    # thirds of the full sweep's time) are left to ``full`` so that ``make reproduce`` fits 25
    # minutes on the slowest 2-core machine seen
    "cpu": {"depths": [1, 2, 4, 8, 16], "methods": ["f", "backprop", "fwd-normal-k1"],
            "rounds": 5, "min_round_s": 0.05},
    "full": {"depths": [1, 2, 4, 8, 16, 32], "rounds": 5, "min_round_s": 0.05},
    "paper": {"depths": [1, 2, 5, 10, 20, 50, 100], "rounds": 7, "min_round_s": 0.05},
}


def get_config(preset: str = "cpu"):
    cfg = defaults("depth_sweep")
    cfg.update(name="depth_sweep", order=80,
               title="Depth sweep: runtime cost and memory vs MLP depth (paper Figure 6)",
               width=1024, batch_sizes=[64, 1024], warmup=1, seed=0, **PRESETS[preset])
    return finalize(cfg)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

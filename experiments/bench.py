"""Step benchmark: f, backprop and forward-gradient training steps (time, FLOPs, memory).

Forward steps with i.i.d. tangents (``fwd-normal-k1``) and with rank-r tangents V = ABᵀ/√r for
every kernel (``fwd-lowrank-normal-k1-r1``, fgrad/_lowrank.py), each with its sampling alone.

Run:
  python experiments/bench.py                 # full: logreg, mlp, cnn at B = 64 and 1024
                                              #   (~6 min on a 2-core CPU) → results/bench
  python experiments/bench.py --preset quick  # CI smoke test: tiny rounds, B = 64 (< 60 s)
  python experiments/bench.py --models mlp --batch-sizes 64 --out /tmp/bench
  FGRAD_XLA_FLAGS=0 python experiments/bench.py --out /tmp/noflags   # XLA's default flags

Writes ``<out>/<device slug>.json`` (e.g. results/bench/cpu-amd-epyc-2c.json) and a Markdown
table ``<out>/<device slug>.md``. ``make bench BENCH_ARGS="--preset quick"`` runs it through make.
The CNN case at B = 64 also times each convolution by part (forward, input and kernel gradient,
and the kernel gradient rewritten as matrix products: fgrad/lab/conv_parts.py).
The protocol (interleaved rounds, medians, one process per model and batch size) is described
in fgrad/lab/timing.py.
"""

import sys

from fgrad.lab.config import experiment

PRESETS = {
    "full": {"batch_sizes": [64, 1024], "rounds": 7, "min_round_s": 0.05, "warmup": 0,
             "case_budget_s": 90.0, "max_call_s": 10.0, "scan_target_s": 0.5,
             "max_scan_steps": 50, "loops": ["python", "scan"], "loop_batch_sizes": [64]},
    "quick": {"batch_sizes": [64], "rounds": 2, "min_round_s": 0.0, "warmup": 0,
              "scan_target_s": 0.0, "max_scan_steps": 2, "loops": ["python"],
              "loop_batch_sizes": [64],
              "methods": ["f", "backprop", "fwd-normal-k1", "fwd-rademacher-k1",
                          "fwd-lowrank-normal-k1-r1", "sample-normal-k1",
                          "sample-rademacher-k1", "sample-lowrank-normal-k1-r1"]},
}


def get_config(preset: str = "full"):
    from fgrad.lab.timing import default_methods

    return experiment("bench", PRESETS[preset], name="bench", order=200, group="standalone",
                      report="", title="Step benchmark",
                      results_dir="results/bench", models=["logreg", "mlp", "cnn"],
                      methods=[m.name for m in default_methods()], seed=0)


if __name__ == "__main__":
    from fgrad.lab.cli import script_main
    sys.exit(script_main(__file__))

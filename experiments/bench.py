"""Step benchmark: f, backprop and forward-gradient training steps (time, FLOPs, memory).

Run:
  python experiments/bench.py                 # full: logreg, mlp, cnn at B = 64 and 1024
                                              #   (~6 min on a 2-core CPU) → results/bench
  python experiments/bench.py --quick         # CI smoke test: tiny rounds, B = 64 (< 60 s)
  python experiments/bench.py --models mlp --batch-sizes 64 --out /tmp/bench
  FGRAD_XLA_FLAGS=0 python experiments/bench.py   # XLA's default flags (no fgrad flags)

Writes ``<out>/<device slug>.json`` (e.g. results/bench/cpu-amd-epyc-2c.json) and a Markdown
table ``<out>/<device slug>.md``. ``make bench BENCH_ARGS=--quick`` runs it through make. The
protocol (interleaved rounds, medians, one process per model and batch size) is described in
:mod:`fgrad._bench`.
"""

import argparse
import sys

from fgrad._xla_flags import configure_xla_flags

configure_xla_flags()  # before JAX initializes its backend

from fgrad._bench import default_methods, run_bench  # noqa: E402

PRESETS = {
    "full": {"batch_sizes": [64, 1024], "rounds": 7, "min_round_s": 0.05, "warmup": 0,
             "case_budget_s": 90, "max_call_s": 10.0, "scan_target_s": 0.1,
             "max_scan_steps": 50, "loops": ["python", "scan"], "loop_batch_sizes": [64]},
    "quick": {"batch_sizes": [64], "rounds": 2, "min_round_s": 0.0, "warmup": 0,
              "scan_target_s": 0.0, "max_scan_steps": 2, "loops": ["python"],
              "loop_batch_sizes": [64],
              "methods": ["f", "backprop", "fwd-normal-k1", "fwd-rademacher-k1",
                          "sample-normal-k1", "sample-rademacher-k1"]},
}


def get_config(preset: str = "full") -> dict:
    """The bench config of a preset (``"full"`` or ``"quick"``)."""
    return {
        "name": "bench",
        "models": ["logreg", "mlp", "cnn"],
        "methods": [m.name for m in default_methods()],
        "model_kwargs": {},
        "seed": 0,
        **PRESETS[preset],
    }


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the benchmark."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke test: tiny rounds, B = 64")
    p.add_argument("--out", default="results/bench", help="output directory")
    p.add_argument("--models", nargs="+", choices=["logreg", "mlp", "cnn"])
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--methods", nargs="+", help="subset of f, backprop, fwd-<dist>-k<K>, "
                   "sample-<dist>-k<K>")
    p.add_argument("--rounds", type=int, help="timed rounds per method")
    p.add_argument("--loops", nargs="+", choices=["python", "scan"],
                   help="loop styles to time (default: both; --quick: python)")
    p.add_argument("--no-isolate", action="store_true",
                   help="run every case in this process (no per-case peak RSS)")
    args = p.parse_args(argv)
    cfg = get_config("quick" if args.quick else "full")
    for key in ("models", "batch_sizes", "methods", "rounds", "loops"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    json_path, md_path = run_bench(cfg, args.out, isolate=not args.no_isolate)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MLP depth sweep: time and memory of forward-gradient vs backprop steps as depth grows.

Run:
  python experiments/depth_sweep.py --preset cpu     # width 1024, depths 1–32, B = 64 and 1024
                                                     #   (~4 min on a 2-core CPU)
                                                     #   → results/cpu/depth_sweep/depth_sweep.json
  python experiments/depth_sweep.py --preset paper   # depths 1, 2, 5, 10, 20, 50, 100
  python experiments/depth_sweep.py --preset cpu --out /tmp/ds --depths 1 2 4 --batch-sizes 64

For each batch size and depth (one process each): R_f = T(fwd step)/T(f) and
R_b = T(bp step)/T(f) (medians of interleaved rounds), and for both steps XLA's peak memory
split into parameter-sized buffers (the step's peak at batch 1) and the rest. The batch is
passed as an argument, so the data set never counts. Writes one JSON object (environment,
config, rows, summary) and a Markdown table beside it.
"""

import argparse
import sys

from fgrad._xla_flags import configure_xla_flags

configure_xla_flags()  # before JAX initializes its backend

from fgrad._bench import DEPTH_METHODS, run_depth_sweep  # noqa: E402

PRESETS = {
    "cpu": {"depths": [1, 2, 4, 8, 16, 32], "rounds": 5, "min_round_s": 0.05},
    "paper": {"depths": [1, 2, 5, 10, 20, 50, 100], "rounds": 7, "min_round_s": 0.05},
}


def get_config(preset: str = "cpu") -> dict:
    """The depth-sweep config of a preset (``"cpu"`` or ``"paper"``)."""
    return {
        "name": "depth_sweep",
        "kind": "depth_sweep",
        "width": 1024,
        "batch_sizes": [64, 1024],
        "methods": list(DEPTH_METHODS),
        "warmup": 1,
        "seed": 0,
        "time": True,
        **PRESETS[preset],
    }


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs the sweep."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--out", help="output directory (default results/<preset>/depth_sweep)")
    p.add_argument("--depths", nargs="+", type=int)
    p.add_argument("--batch-sizes", nargs="+", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--memory-only", action="store_true", help="skip the timings")
    p.add_argument("--no-isolate", action="store_true", help="run every case in this process")
    args = p.parse_args(argv)
    cfg = get_config(args.preset)
    for key in ("depths", "batch_sizes", "width", "rounds"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.memory_only:
        cfg["time"] = False
    out = args.out or f"results/{args.preset}/depth_sweep"
    path = run_depth_sweep(cfg, out, isolate=not args.no_isolate)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

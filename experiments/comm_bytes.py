"""Bytes all-reduced per data-parallel training step: forward gradient vs backprop (beyond the
paper), for the paper's MLP (784-1024-1024-10) and CNN.

Run:
  python experiments/comm_bytes.py                 # ~1 min on a 2-core CPU
                                                   # → results/comm/allreduce_bytes.json
  python experiments/comm_bytes.py --devices 8 --out results/comm8

On D host (CPU) devices forced with ``jax_num_cpu_devices``, for each model and method this
compiles the data-parallel step of fgrad._parallel (batch 64 split over the devices), sums the
operand bytes of the all-reduces in its HLO, and trains a few SGD steps on random
MNIST-shaped data on D devices and on one device to report the largest parameter difference.
A forward-gradient step all-reduces K + 1 float32 scalars (the K directional derivatives and
the loss); a backprop step all-reduces the whole gradient, 4n bytes for n parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax


def get_config() -> dict:
    return {
        "devices": 4,
        "batch_size": 64,
        "steps": 3,
        "learning_rate": 2e-4,  # the paper's η₀ for both models
        "seed": 0,
        "models": {"mlp": {"width": 1024, "depth": 2}, "cnn": {}},
        "forward_num_tangents": [1, 8],
    }


def variants(cfg: dict) -> list[tuple[str, dict]]:
    """(method, estimator options) of every measured step."""
    return ([("forward", {"num_tangents": k}) for k in cfg["forward_num_tangents"]]
            + [("backprop", {})])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, help="number of host devices D (default 4)")
    p.add_argument("--out", default="results/comm", help="results directory")
    args = p.parse_args(argv)
    cfg = get_config()
    if args.devices is not None:
        cfg["devices"] = args.devices
    # Before JAX starts its backend: D CPU devices in this process.
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", cfg["devices"])

    from fgrad._env import environment
    from fgrad._models import make_model
    from fgrad._parallel import compare_runs, data_mesh, train_synthetic
    from fgrad._results import write_json

    try:
        mesh = data_mesh(cfg["devices"], cfg["batch_size"])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    train = {k: cfg[k] for k in ("batch_size", "steps", "learning_rate", "seed")}
    rows = []
    print(f"{'model':5} {'method':8} {'K':>2} {'params':>9} {'all-reduce B/step':>18} "
          f"{'gradient B':>11} {'max |Δθ| vs 1 dev':>18} {'max |update|':>12}")
    for name, kwargs in cfg["models"].items():
        model = make_model(name, **kwargs)
        for method, opts in variants(cfg):
            single = train_synthetic(model, method, opts, None, **train)
            row = {"model": name, "method": method, **opts,
                   **compare_runs(single, train_synthetic(model, method, opts, mesh, **train))}
            rows.append(row)
            print(f"{name:5} {method:8} {opts.get('num_tangents', ''):>2} "
                  f"{row['num_params']:>9,} {row['allreduce_bytes']:>18,} "
                  f"{row['gradient_bytes']:>11,} {row['max_abs_diff']:>18.2e} "
                  f"{row['max_abs_update']:>12.2e}", flush=True)
    path = Path(args.out) / "allreduce_bytes.json"
    write_json(path, {"experiment": "comm_bytes", "devices": cfg["devices"], "config": cfg,
                      "env": environment(), "results": rows})
    print(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

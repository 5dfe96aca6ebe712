"""Estimator quality (``experiments/estimator_quality.py``): how close forward gradients are to
the true gradient, against theory.

For a model at a parameter point (initialisation, or after some backprop SGD) and one fixed
minibatch with exact gradient ∇ (n entries), M estimates g are drawn for each tangent
distribution, number of tangents K and combination. Recorded per setting: the cosine
similarity cos(g, ∇) (all M values, their mean and E[cos²]) and the per-entry variance, both
beside theory. Formulas used (v with i.i.d. zero-mean unit-variance entries):

* mean of K estimates:  Var[g_i] = (‖∇‖² + (E[v⁴] − 2)∇_i²) / K, i.e. (‖∇‖² + ∇_i²) / K for
  normal v and (‖∇‖² − ∇_i²) / K for Rademacher v (:func:`fgrad._tangents.fourth_moment`)
* normal v, the whole law of cos² = cos²(g, ∇) (rotation invariance reduces it to a first
  row r ~ N(0, I_K) of the n × K tangent matrix and an independent χ²_{n−1}):
  mean of K:  cos² = ‖r‖² / (‖r‖² + χ²_{n−1}) ~ Beta(K/2, (n−1)/2), E[cos²] = K / (n + K − 1);
  projection onto span(v_1..v_K): cos² ~ Beta(K/2, (n−K)/2), E[cos²] = K / n.
  Each setting's M values of cos² are tested against that law (Kolmogorov–Smirnov). For
  Rademacher v, E[cos²] ≈ K / (n + K − 1) (n ≫ K) and no exact law is used.

M, the number of estimates per setting, is either given or ``"auto"``: enough for a relative
standard error ``target_rse`` of the measured E[cos²]. For Beta(a, b) the relative variance of cos²
is Var/E² = b / (a (a + b + 1)) ≈ 2/K for a = K/2 and b ≈ n/2 ≫ a, so M = ⌈1.2 · 2 / (K ·
target_rse²)⌉ (20 % margin; 960 at K = 1 for 5 %); a setting whose measured relative standard error
still exceeds the target is redrawn once with M scaled by (measured / target)² (plus 20 %).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.stats
from ml_collections import ConfigDict

from fgrad._env import environment
from fgrad._estimator import forward_gradient
from fgrad._mnist import load_mnist, scale_inputs
from fgrad._results import is_done, write_json
from fgrad._tangents import fourth_moment
from fgrad._transforms import backprop_source, gradient_diagnostics
from fgrad.lab.build import build_model
from fgrad.lab.config import to_dict
from fgrad.lab.run import RunOptions


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)])


def theory(grad_flat: np.ndarray, num_tangents: int, distribution: str, combine: str
           ) -> dict[str, float | None]:
    """Theoretical mean per-entry variance and E[cos²] (see the module docstring)."""
    n, sq = grad_flat.size, float(np.sum(grad_flat.astype(np.float64) ** 2))
    k = num_tangents
    if combine == "projection":  # exact only for the rotation-invariant normal distribution
        return {"var_mean": None, "cos2": k / n if distribution == "normal" else None}
    excess = fourth_moment(distribution) - 2.0  # Var[g_i] = (‖∇‖² + (E[v⁴] − 2)∇_i²)/K
    return {"var_mean": (sq + excess * sq / n) / k, "cos2": k / (n + k - 1)}


def num_samples(samples: int | str, num_tangents: int, target_rse: float) -> int:
    """M for one setting: ``samples`` itself, or for ``"auto"`` enough estimates for a relative
    standard error ``target_rse`` of E[cos²] (see the module docstring)."""
    if samples == "auto":
        return max(64, math.ceil(1.2 * 2.0 / (num_tangents * target_rse**2)))
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"estimator_quality: samples={samples!r}: use an integer ≥ 2 or "
                         "'auto'")
    return samples


def cos2_law(n: int, num_tangents: int, distribution: str, combine: str
             ) -> tuple[float, float] | None:
    """(a, b) of the exact Beta(a, b) law of cos²(g, ∇) for normal tangents (None otherwise)."""
    if distribution != "normal":
        return None
    k = num_tangents
    return (k / 2, (n - 1) / 2) if combine == "mean" else (k / 2, (n - k) / 2)


def _rse(cosines: np.ndarray) -> float:
    """Relative standard error of the mean of cos² over the samples."""
    cos2 = np.asarray(cosines, np.float64) ** 2
    return float(np.std(cos2, ddof=1) / math.sqrt(cos2.size) / np.mean(cos2))


def law_test(cos2: np.ndarray, law: tuple[float, float] | None) -> dict[str, float | None]:
    """Kolmogorov–Smirnov statistic and p-value of cos² samples against Beta(a, b)."""
    if law is None:
        return {"ks_D": None, "ks_p": None}
    res = scipy.stats.kstest(np.asarray(cos2, np.float64), scipy.stats.beta(*law).cdf)
    return {"ks_D": float(res.statistic), "ks_p": float(res.pvalue)}


def sample_stats(value_fn, params, key: jax.Array, num_samples: int, num_tangents: int,
                 distribution: str, combine: str) -> dict[str, jax.Array]:
    """M ≥ 2 estimates in a ``lax.scan``: their cosines, and the mean over entries of the
    unbiased per-entry sample variance (from running Σg and Σg²)."""
    exact = jax.grad(value_fn)(params)

    def body(acc, k):
        g = forward_gradient(value_fn, params, k, num_tangents=num_tangents,
                             distribution=distribution, combine=combine).grad
        cos = gradient_diagnostics(g, exact)["cosine"]
        flat = _flat(g)
        return (acc[0] + flat, acc[1] + flat**2), cos

    zeros = jnp.zeros_like(_flat(params))
    (s1, s2), cos = jax.lax.scan(body, (zeros, zeros), jax.random.split(key, num_samples))
    mean = s1 / num_samples
    var = (s2 - num_samples * mean**2) / (num_samples - 1)  # unbiased sample variance
    return {"cosine": cos, "var_mean": jnp.mean(var), "exact": _flat(exact)}


def _trained(model, loss_fn, params, images, labels, cfg):
    """Parameters after ``train_steps`` of backprop SGD (lr ``train_lr``) on the first batches."""
    tx = optax.chain(backprop_source(), optax.sgd(cfg["train_lr"]))
    b = cfg["batch_size"]

    @jax.jit
    def step(params, state, images, labels, i):  # the data as arguments, not baked-in constants
        x = jax.lax.dynamic_slice_in_dim(images, i * b, b)
        y = jax.lax.dynamic_slice_in_dim(labels, i * b, b)
        updates, state = tx.update(params, state, params, value_fn=lambda p: loss_fn(p, x, y))
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    for i in range(int(cfg["train_steps"])):
        # batch 0 is the measurement batch
        params, state = step(params, state, images, labels, i + 1)
    return params


def model_rows(model_name: str, settings: dict[str, Any], data, cfg: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """The measurements of one model: a row per point × (distribution, combine) × K."""
    built = build_model(model_name, settings.get("model_kwargs", {}), jax.random.key(cfg["seed"]),
                        cfg["init"])
    model, loss_fn, params0 = built.module, built.loss_fn, built.params
    b = cfg["batch_size"]
    n_train = (int(cfg["train_steps"]) + 1) * b
    images = jnp.asarray(data.train_images[:n_train])
    labels = jnp.asarray(data.train_labels[:n_train])
    points = {"init": params0, "trained": _trained(model, loss_fn, params0, images, labels, cfg)}
    value_fn = lambda p: loss_fn(p, images[:b], labels[:b])
    stats = jax.jit(sample_stats, static_argnums=(0, 3, 4, 5, 6))
    rows = []
    target = float(cfg["target_rse"])
    for point, params in points.items():
        for dist, combine in settings["estimators"]:
            for k in settings["num_tangents"]:
                m = num_samples(settings["samples"], k, target)
                key = jax.random.key(cfg["seed"] + 1)
                st = jax.device_get(stats(value_fn, params, key, m, k, dist, combine))
                if settings["samples"] == "auto" and (rse := _rse(st["cosine"])) > target:
                    # the 20 % margin was not enough for this setting: redraw with M scaled by
                    # the measured (RSE / target)², plus 20 %
                    m = math.ceil(1.2 * m * (rse / target) ** 2)
                    st = jax.device_get(stats(value_fn, params, key, m, k, dist, combine))
                th = theory(st["exact"], k, dist, combine)
                cos = np.asarray(st["cosine"], np.float64)
                cos2 = cos**2
                n = int(st["exact"].size)
                law = cos2_law(n, k, dist, combine)
                r = {"point": point, "distribution": dist, "combine": combine,
                     "num_tangents": k, "n": n, "samples": int(cos.size),
                     "cosine": cos, "cos_mean": cos.mean(), "cos2_mean": np.mean(cos2),
                     "cos2_rse": _rse(cos),
                     "cos2_theory": th["cos2"], "cos2_law": law, **law_test(cos2, law),
                     "var_mean": float(st["var_mean"]), "var_theory": th["var_mean"],
                     "grad_norm": float(np.linalg.norm(st["exact"]))}
                rows.append(r)
                print(f"{model_name} {point} {dist} {combine} K={k} M={m}: E[cos²] "
                      f"{r['cos2_mean']:.3g} ± {100 * r['cos2_rse']:.1f} % "
                      f"(theory {r['cos2_theory'] or float('nan'):.3g}), mean Var[g_i] "
                      f"{r['var_mean']:.3g} (theory {r['var_theory'] or float('nan'):.3g})",
                      flush=True)
    return rows


def run(cfg: ConfigDict, out_dir: Path, opts: RunOptions) -> None:
    """Runs every model of ``cfg`` into ``out_dir/<model>.json``; skips finished models."""
    cfg, force, mnist_dir = to_dict(cfg), opts.force, opts.mnist_dir
    data, todo = None, []  # every model checked first: another config's results refuse
    for model_name, settings in cfg["models"].items():
        path = out_dir / f"{model_name}.json"
        if not force and is_done(path, cfg):
            print(f"[skip] {path} is complete (FORCE=1 / --force reruns it)")
        else:
            todo.append((model_name, settings, path))
    for model_name, settings, path in todo:
        data = data or scale_inputs(load_mnist(mnist_dir), cfg["inputs"])
        t0 = time.perf_counter()
        rows = model_rows(model_name, settings, data, cfg)
        write_json(path, {"experiment": cfg["name"], "model": model_name, "status": "complete",
                          "config": cfg, "env": environment(), "rows": rows,
                          "run_time_s": time.perf_counter() - t0})

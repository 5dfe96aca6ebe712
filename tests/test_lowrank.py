"""Low-rank tangents (fgrad/_lowrank.py): unbiased with the stated MSE, the factorised jvp equals
jax.jvp along the materialised A Bᵀ/√r, the step computes no m × n tangent product, K > 1,
Rademacher, projection, data parallelism, configs and one-line errors."""

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fgrad
from fgrad._estimator import _projection
from fgrad._lowrank import (
    combine_low_rank,
    low_rank_forward_gradient,
    low_rank_gram,
    low_rank_jvp,
    low_rank_layers,
    sample_low_rank_tangents,
    tangent_mse,
)
from fgrad.lab import cli, registry
from fgrad.lab.build import build_optimizer, make_source
from fgrad.lab.config import defaults, experiment, finalize, mnist_runs
from fgrad.lab.run.comm_bytes import allreduce_sizes
from fgrad.lab.timing import compile_method, flops, method_from_name
from fgrad.train.parallel import data_mesh, make_data_parallel_step, replicate
from fgrad.train.step import init_state, make_train_step, synthetic_data

ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    """Strided and dilated convolutions, a dense layer called twice (shared weights), a 2-D
    parameter used directly and a grouped convolution (both left i.i.d.), a last dense layer."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(3, (3, 3), strides=2, padding="VALID", name="conv")(x))
        x = jnp.tanh(nn.Conv(4, (2, 2), kernel_dilation=2, use_bias=False)(x))
        x = jnp.tanh(nn.Conv(4, (1, 1), feature_group_count=2)(x))  # grouped: not factorised
        x = x.reshape(x.shape[0], -1)
        shared = nn.Dense(x.shape[-1])
        x = jnp.tanh(shared(jnp.tanh(shared(x))))
        raw = self.param("raw", nn.initializers.normal(0.3), (x.shape[-1], 5))
        return nn.Dense(3)(jnp.tanh(x @ raw))


def _random_params(init, *args):
    """Parameters shaped as ``init(*args)`` makes them, drawn with numpy (compiling flax's
    initializers takes seconds): N(0, 1/fan_in) entries."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) / np.sqrt(
        np.prod(s.shape[:-1]) if len(s.shape) > 1 else 10.0)), jax.eval_shape(init, *args))


@functools.cache
def _net_problem():
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 2), jnp.float32)
    net = Net()
    params = _random_params(net.init, jax.random.key(0), x)["params"]
    return (lambda p: jnp.sum(jnp.sin(net.apply({"params": p}, x)))), params


@functools.cache
def _model_problem(name, **kwargs):
    model = fgrad.make_model(name, **kwargs)
    params = _random_params(lambda k: fgrad.init_params(model, k), jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1), jnp.float32)
    y = jnp.arange(3, dtype=jnp.int32)
    loss = fgrad.cross_entropy_loss(model)
    return (lambda p: loss(p, x, y)), params


def _close(a, b, rtol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        np.testing.assert_allclose(u, v, rtol=rtol, atol=rtol * max(np.abs(v).max(), 1e-30))


def test_mse_formulas():
    m, n = 784, 1024
    assert tangent_mse(m, n, "normal", "low_rank", 1) == (m + 2) * (n + 2) - 1
    assert tangent_mse(m, n, "normal", "iid") == m * n + 1
    assert tangent_mse(m, n, "rademacher", "low_rank", 1) == tangent_mse(m, n, "rademacher")
    assert tangent_mse(m, n, "normal", "low_rank", 4) == m * n + 1 + (m + n + 1) / 2


@pytest.mark.parametrize("distribution,rank", [("normal", 1), ("normal", 3),
                                               ("rademacher", 1), ("rademacher", 2)])
def test_unbiased_and_mse_matches_formula(distribution, rank):
    """f(W) = Σ c ⊙ (xW) has ∇f = xᵀc everywhere; 20,000 one-tangent estimates."""
    m, n, samples = 6, 5, 20_000
    x = jax.random.normal(jax.random.key(3), (4, m), jnp.float32)
    c = jax.random.normal(jax.random.key(4), (4, n), jnp.float32)
    dense = nn.Dense(n, use_bias=False)
    params = dense.init(jax.random.key(0), x)["params"]
    f = lambda p: jnp.sum(c * dense.apply({"params": p}, x))
    grad = np.asarray(x.T @ c, np.float64)

    @jax.jit
    def estimates(keys):
        return jax.vmap(lambda k: fgrad.forward_gradient(
            f, params, k, distribution=distribution, tangents="low_rank",
            rank=rank).grad["kernel"])(keys)

    g = np.asarray(estimates(jax.random.split(jax.random.key(5), samples)), np.float64)
    z = (g.mean(0) - grad) / (g.std(0) / np.sqrt(samples))
    assert np.abs(z).max() < 5, np.abs(z).max()  # unbiased, entry by entry
    err = ((g - grad) ** 2).sum(axis=(1, 2))
    se = err.std() / np.sqrt(samples)
    sq = (grad**2).sum()
    expected = tangent_mse(m, n, distribution, "low_rank", rank) * sq
    assert abs(err.mean() - expected) < 5 * se, (err.mean(), expected, se)
    if (distribution, rank) == ("normal", 1):  # the test tells the formulas apart
        assert abs(err.mean() - tangent_mse(m, n, "normal", "iid") * sq) > 5 * se


@pytest.mark.parametrize("num_tangents,rank,distribution", [(1, 1, "normal"),
                                                            (3, 2, "rademacher")])
def test_factorised_jvp_and_update_match_materialised(num_tangents, rank, distribution):
    f, params = _net_problem()
    layers = low_rank_layers(f, params)
    assert layers == {"conv/kernel": (18, 3), "Conv_0/kernel": (12, 4),
                      "Dense_0/kernel": (36, 36), "Dense_1/kernel": (5, 3)}  # not raw, grouped

    @jax.jit
    def both(p):
        """(factorised, materialised) value, d, mean, Gram matrix and projection."""
        t, value, d = low_rank_forward_gradient(f, p, jax.random.key(2), num_tangents,
                                                distribution, rank)
        v = t.materialize()
        ref_value, ref_d = jax.vmap(lambda u: jax.jvp(f, (p,), (u,)))(v)
        mean = jax.tree.map(lambda u: jnp.tensordot(d / num_tangents, u, axes=1), v)
        flat = jnp.concatenate([u.reshape(num_tangents, -1) for u in jax.tree.leaves(v)], 1)
        return t, ((value, d, combine_low_rank(t, d, "mean"), low_rank_gram(t),
                    combine_low_rank(t, d, "projection")),
                   (ref_value[0], ref_d, mean, flat @ flat.T, _projection(v, d)))

    t, (ours, ref) = both(params)
    assert len(t.iid) == 6 and all(a.shape[-1] == rank for a in t.a)  # biases, raw, grouped
    np.testing.assert_allclose(ours[0], f(params), rtol=1e-6)
    for a, b, rtol in zip(ours, ref, (1e-6, 1e-5, 1e-5, 1e-5, 1e-4)):
        _close(a, b, rtol)  # value, d, mean, Gram matrix, projection


@pytest.mark.parametrize("name,kwargs", [("mlp", {"width": 8}),
                                         ("cnn", {"channels": 2, "hidden": 8})])
def test_fgrad_models_factorised_jvp_matches_materialised(name, kwargs):
    f, params = _model_problem(name, **kwargs)
    key = jax.random.key(7)

    @jax.jit
    def run(p):
        out = fgrad.forward_gradient(f, p, key, num_tangents=2, tangents="low_rank", rank=2,
                                     return_exact=True)
        t = low_rank_forward_gradient(f, p, key, 2, "normal", 2)[0]  # the same tangents
        v = t.materialize()
        ref_d = jax.vmap(lambda u: jax.jvp(f, (p,), (u,))[1])(v)
        mean = jax.tree.map(lambda u: jnp.tensordot(ref_d / 2, u, axes=1), v)
        return t, out, ref_d, mean, jax.grad(f)(p)

    t, out, ref_d, mean, grad = run(params)
    assert len(t.a) == len(jax.tree.leaves(params)) // 2  # every kernel, no bias
    _close(out.directional_derivatives, ref_d, 1e-5)
    _close(out.grad, mean, 1e-4)
    _close(out.exact_grad, grad, 1e-6)


def test_low_rank_step_computes_no_kernel_sized_tangent_product():
    width, batch = 64, 16
    model = fgrad.make_model("mlp", width=width)
    params = _random_params(lambda k: fgrad.init_params(model, k), jax.random.key(0))
    num_params = sum(x.size for x in jax.tree.leaves(params))
    data = synthetic_data(batch)
    out = {}
    for name in ("f", "fwd-normal-k1", "fwd-lowrank-normal-k1-r1"):
        c = compile_method(method_from_name(name), fgrad.cross_entropy_loss(model), params, data,
                           batch)
        full_dots = [line for line in c.compiled.as_text().splitlines()
                     if re.search(rf"= f32\[{batch},({width}|10)\]\S* dot\(", line)]
        out[name] = flops(c.compiled), len(full_dots)
    shapes = [(784, width), (width, width), (width, 10)]
    x_v = 2 * batch * sum(m * n for m, n in shapes)  # x·V of every layer
    xdot_w = 2 * batch * sum(m * n for m, n in shapes[1:])  # ẋ·W after the first layer
    (f_flops, _), (iid, iid_dots), (low, low_dots) = out.values()
    assert low <= iid - x_v, out
    assert low <= f_flops + xdot_w + 10 * num_params, out  # + elementwise work only
    assert low_dots == iid_dots - len(shapes), out  # one x·V dot fewer per layer


def test_k_tangents_rademacher_projection_train_linear_regression():
    x = jax.random.normal(jax.random.key(0), (64, 5), jnp.float32)
    y = x @ jax.random.normal(jax.random.key(1), (5, 3), jnp.float32)
    dense = nn.Dense(3)
    params = dense.init(jax.random.key(2), x)["params"]
    traces = []

    def loss(p, xb, yb):
        traces.append(1)  # runs only while tracing
        return jnp.mean((dense.apply({"params": p}, xb) - yb) ** 2)

    for combine, lr in (("mean", 0.02), ("projection", 0.2)):  # projection: E[g] = (K/n)∇f
        tx = optax.chain(fgrad.forward_gradient_source(
            0, num_tangents=4, distribution="rademacher", combine=combine,
            tangents="low_rank", rank=2), optax.sgd(lr))
        step = jax.jit(make_train_step(loss, tx, 64))
        data = synthetic_data(64, num_examples=64)._replace(images=x, labels=y)
        state = init_state(params, tx)
        first = float(loss(params, x, y))
        state, m = step(state, data)
        traced = len(traces)
        for _ in range(150):
            state, m = step(state, data)
        assert float(m["loss"]) < 0.05 * first, (combine, float(m["loss"]), first)
        assert len(traces) == traced  # no retracing


def test_unused_matrix_leaf_falls_back_and_factorised_unused_leaf_raises():
    f, params = _net_problem()
    nested = {"net": params}
    g = lambda p: f(p["net"])  # the module paths no longer match the tree's paths
    assert low_rank_layers(g, nested) == {}
    t = jax.eval_shape(lambda p: low_rank_forward_gradient(g, p, jax.random.key(0), 2)[0],
                       nested)
    assert t.a == [] and len(t.iid) == len(jax.tree.leaves(nested))
    raw = [i for i, (p, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0])
           if "raw" in jax.tree_util.keystr(p)]
    bad = jax.eval_shape(lambda p: sample_low_rank_tangents(jax.random.key(0), p, 1,
                                                            factorised=raw), params)
    with pytest.raises(ValueError, match="no intercepted nn.Dense/nn.Conv uses them"):
        jax.eval_shape(lambda p, t: low_rank_jvp(f, p, t), params, bad)


def test_data_parallel_allreduces_k_plus_one_scalars():
    model = fgrad.make_model("mlp", width=16)
    params = _random_params(lambda k: fgrad.init_params(model, k), jax.random.key(0))
    loss = fgrad.cross_entropy_loss(model)
    cfg = {"num_tangents": 3, "tangents": "low_rank", "rank": 2}
    mesh = data_mesh(1, 8)
    tx = build_optimizer("forward", 1e-2, 0, cfg, data_parallel=True)
    state = replicate(init_state(params, tx), mesh)
    data = replicate(synthetic_data(8, num_examples=8), mesh)
    compiled = jax.jit(make_data_parallel_step(loss, tx, 8, mesh)).lower(state, data).compile()
    assert 0 < sum(allreduce_sizes(compiled.as_text())) <= 4 * (3 + 1)
    single_tx = build_optimizer("forward", 1e-2, 0, cfg)
    single = jax.jit(make_train_step(loss, single_tx, 8))(init_state(params, single_tx),
                                                          synthetic_data(8, num_examples=8))[0]
    _close(compiled(state, data)[0].params, single.params, 1e-5)


_TWO_DEVICES = """
import jax, numpy as np
import fgrad
from fgrad.lab.build import build_optimizer
from fgrad.train.step import synthetic_data
from fgrad.train.parallel import data_mesh, make_data_parallel_step, replicate
from fgrad.train.step import init_state, make_train_step
model = fgrad.make_model("mlp", width=16)
shapes = jax.eval_shape(lambda k: fgrad.init_params(model, k), jax.random.key(0))
rng = np.random.default_rng(0)
params = jax.tree.map(lambda s: 0.1 * rng.standard_normal(s.shape, np.float32), shapes)
loss = fgrad.cross_entropy_loss(model)
cfg = {"num_tangents": 2, "tangents": "low_rank", "rank": 1}
mesh = data_mesh(2, 8)
tx = build_optimizer("forward", 0.1, 0, cfg, data_parallel=True)
state = replicate(init_state(params, tx), mesh)
dp = jax.jit(make_data_parallel_step(loss, tx, 8, mesh))(
    state, replicate(synthetic_data(8, num_examples=8), mesh))[0].params
tx1 = build_optimizer("forward", 0.1, 0, cfg)
one = jax.jit(make_train_step(loss, tx1, 8))(init_state(params, tx1),
                                              synthetic_data(8, num_examples=8))[0].params
moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one),
                                                        jax.tree.leaves(params)))
diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
           for a, b in zip(jax.tree.leaves(dp), jax.tree.leaves(one)))
print(__import__("json").dumps({"moved": moved, "diff": diff}))
"""


def test_two_devices_match_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["moved"] > 1e-4 and r["diff"] <= 1e-6 + 1e-5 * r["moved"], r


@pytest.mark.parametrize("kwargs,match", [
    ({"tangents": "lowrank"}, "unknown tangents 'lowrank': use one of iid, low_rank"),
    ({"tangents": "low_rank", "rank": 0}, "rank must be an integer >= 1, got 0"),
    ({"tangents": "low_rank", "rank": True}, "rank must be an integer >= 1, got True"),
    ({"tangents": "low_rank", "rank": 1.5}, "rank must be an integer >= 1, got 1.5"),
    ({"tangents": "low_rank", "derivative": "central_difference"},
     "tangents='low_rank' needs derivative='jvp'"),
])
def test_bad_options_raise_one_line(kwargs, match):
    for build in (lambda: fgrad.forward_gradient_source(0, **kwargs),
                  lambda: fgrad.forward_gradient(jnp.sum, jnp.ones(2), jax.random.key(0),
                                                 **kwargs)):
        with pytest.raises(ValueError, match=re.escape(match)) as e:
            build()
        assert "\n" not in str(e.value)


def test_config_cli_and_source(monkeypatch, tmp_path, capsys):
    cfg = defaults("mnist")
    assert (cfg.tangents, cfg.rank) == ("iid", 1)
    for argv, match in ((["--tangents", "lowrank"], "tangents must be one of iid, low_rank, "
                         "got 'lowrank' (mlp): pass --tangents iid or --tangents low_rank"),
                        (["--tangents", "low_rank", "--rank", "0"], "rank must be an integer "
                         ">= 1, got 0 (mlp): pass --rank N with N >= 1")):
        assert cli.main(["run", "mlp", *argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert match in err and err.count("\n") == 1, err
    seen = []
    monkeypatch.setattr(registry, "runner", lambda kind: lambda c, out, opts: seen.append(c))
    assert cli.main(["run", "mlp", "--tangents", "low_rank", "--rank", "2", "--preset", "full",
                     "--out", str(tmp_path)]) == 0
    run_cfg = mnist_runs(seen[0])[0][0]
    assert (run_cfg["tangents"], run_cfg["rank"]) == ("low_rank", 2)
    bad = defaults("mnist")
    bad.update(name="x", variants=[{"name": "lr", "method": "forward", "tangents": "low_rank",
                                    "derivative": "forward_difference"}])
    with pytest.raises(ValueError, match="tangents low_rank needs derivative jvp"):
        finalize(bad)
    exp = experiment("mnist", {}, name="x", tangents="low_rank", rank=2, num_tangents=2)
    f, params = _model_problem("mlp", width=8)
    src = make_source("forward", 0, exp)
    ref = fgrad.forward_gradient_source(0, num_tangents=2, tangents="low_rank", rank=2)
    ups = [jax.jit(lambda p, s=s: s.update(p, s.init(p), p, value_fn=f)[0])(params)
           for s in (src, ref)]
    _close(ups[0], ups[1], 0)


@pytest.mark.parametrize("name", ["fwd-normal-k1", "fwd-lowrank-normal-k1-r1"])
def test_bias_tangents_are_drawn_once_not_once_per_example(name):
    # XLA would otherwise fuse a bias tangent's sampler into the (batch × width) tangent of the
    # layer's output and draw every entry once per example; small leaves are stored instead.
    width, batch = 64, 16
    model = fgrad.make_model("mlp", width=width)
    params = fgrad.init_params(model, jax.random.key(0))
    c = compile_method(method_from_name(name), fgrad.cross_entropy_loss(model), params,
                       synthetic_data(batch), batch)
    text = c.compiled.as_text()
    bodies = re.findall(r"\n\S+ \([^\n]*\) -> (\S+) \{\n(.*?)\n\}", text, re.S)
    hashing = [shape for shape, body in bodies if "constant(2146121005)" in body]  # mix32
    assert hashing, "no sampler found in the compiled step"
    assert not [s for s in hashing if re.match(rf"f32\[{batch},", s)], hashing

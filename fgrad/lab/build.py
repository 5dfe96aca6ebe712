"""From a config to built objects: model, parameters, loss, gradient source, optimizer, mesh.

The one place a config is turned into what the training layer takes (:mod:`fgrad.train`);
shared by training, the benchmark, the estimator-quality experiment and the data-parallel
checks, so each builds a model, its loss and its optimizer the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import optax

from fgrad._models import init_params, make_model, training_loss
from fgrad._schedules import make_optimizer
from fgrad._transforms import SOURCES
from fgrad._types import PyTree
from fgrad.train.parallel import DATA_AXIS
from fgrad.train.step import TrainState, init_state

METHODS = tuple(SOURCES)
# Config keys that configure the forward-gradient estimator (forward_gradient_source's options).
ESTIMATOR_KEYS = ("num_tangents", "distribution", "combine", "derivative", "fd_epsilon",
                  "diagnostics", "tangents", "rank")
# Config keys of activity perturbation (activity_perturbation_source's options).
ACTIVITY_KEYS = ("num_perturbations", "distribution", "mask_relu")

# Steps per compiled call, by (model, backend); chosen by measurement (experiments/bench.py,
# results/bench/cpu-amd-epyc-2c.md, "Loop style" table: every step method of a model timed one
# step per call from a Python loop and as a lax.scan, batch 64, XLA:CPU with fgrad's flags):
# * logreg: a scan of 50 is 1.6–2.7× faster per step than a Python loop (the ~50 µs dispatch
#   per call is larger than the step itself) → scan (the fallback).
# * mlp: a scan is 1.01–1.29× faster for every method → scan (the fallback).
# * cnn: the backprop step inside a scan is ~56× slower (9.7 s vs 0.17 s per step): inside
#   the while loop XLA:CPU gets the weight-gradient convolution in a layout (f01b_i01o->01bf)
#   its Eigen convolution does not take and falls back to a naive loop. f and the
#   forward-gradient steps are only 4–7 % faster in a scan, so one step per call keeps every
#   method within 1.2× of its fastest loop style.
# Other backends use the fallback (a scan amortises dispatch; not yet measured on GPU).
DEFAULT_STEPS_PER_CALL = {("cnn", "cpu"): 1}
FALLBACK_STEPS_PER_CALL = 50


def steps_per_call(model: str, backend: str, requested: int | None, steps: int | None = None,
                   eval_every: int | None = None, diagnostics_every: int = 0) -> int:
    """Steps per compiled call: the configured ones, else the measured default for
    (model, backend) — or, when given ``steps`` (and ``eval_every``, ``diagnostics_every``),
    the largest divisor of their gcd that is at most that default, so a schedule the default
    does not divide (``--steps 30`` against 50) still runs, in calls that fit it.

    Raises:
      ValueError: one line, for a requested value below 1.
    """
    if requested is not None:
        if isinstance(requested, bool) or int(requested) != requested or requested < 1:
            raise ValueError(f"steps_per_call must be an integer >= 1, got {requested!r}: pass "
                             "--steps-per-call N with N >= 1, or leave it unset")
        return int(requested)
    default = DEFAULT_STEPS_PER_CALL.get((model, backend), FALLBACK_STEPS_PER_CALL)
    if not steps:
        return default
    period = math.gcd(int(steps), int(eval_every or steps), int(diagnostics_every or 0))
    return max(d for d in range(1, min(default, period) + 1) if period % d == 0)


def make_source(method: str, seed: int, options: Mapping[str, Any],
                axis_name: str | None = None) -> optax.GradientTransformationExtraArgs:
    """The gradient source for ``method``; estimator options are read from ``options``.

    Args:
      method: a name of :data:`fgrad._transforms.SOURCES` (``"forward"``, ``"backprop"``,
        ``"backprop_noise"`` or ``"activity"``).
      seed: the tangents' (or the noise's) seed.
      options: a config or dict; its keys among :data:`ESTIMATOR_KEYS` configure the forward
        gradient, those among :data:`ACTIVITY_KEYS` activity perturbation (others are ignored).
      axis_name: the data-parallel mesh axis the source averages over (see
        :mod:`fgrad.train.parallel`); None on a single device.

    Returns:
      An optax gradient source taking ``value_fn``.
    """
    if method == "backprop":
        return SOURCES[method](axis_name)
    if method == "backprop_noise":  # the control: backprop + the forward gradient's noise
        return SOURCES[method](seed, axis_name=axis_name)
    if method == "forward":
        opts = {k: options[k] for k in ESTIMATOR_KEYS if k in options and options[k] is not None}
        return SOURCES[method](seed, axis_name=axis_name, **opts)
    if method == "activity":  # activity-perturbed forward gradient (fgrad._activity)
        opts = {k: options[k] for k in ACTIVITY_KEYS if k in options and options[k] is not None}
        return SOURCES[method](seed, axis_name=axis_name, **opts)
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class Model:
    """A model with its parameters and its training loss ``loss(params, images, labels)``
    (:func:`fgrad._models.training_loss`: a scalar, or per-block losses with local losses)."""

    module: nn.Module
    params: PyTree
    loss_fn: Callable[[PyTree, jax.Array, jax.Array], jax.Array]

    @property
    def num_params(self) -> int:
        return int(sum(x.size for x in jax.tree.leaves(self.params)))

    @property
    def param_bytes(self) -> int:
        return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self.params)))


def build_model(name: str, model_kwargs: Mapping[str, Any], key: jax.Array,
                init: str | None = None) -> Model:
    """The model ``name`` with ``model_kwargs``, its parameters from ``key`` and its
    training loss (cross-entropy; per block with local losses).

    Args:
      name: a key of :data:`fgrad._models.MODELS`.
      model_kwargs: the model's fields (width, depth, local_losses, ...).
      key: the parameters' PRNG key.
      init: the config key ``init`` (a key of :data:`fgrad._layers.INITS`), passed as the
        model's ``init_scheme``; None leaves the model's own default.
    """
    kwargs = dict(model_kwargs)
    if init is not None:
        kwargs["init_scheme"] = init
    module = make_model(name, **kwargs)
    return Model(module, init_params(module, key), training_loss(module))


def build_optimizer(method: str, learning_rate: float, seed: int, cfg: Mapping[str, Any],
                    data_parallel: bool = False) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(source, optimizer(η₀·e^(−ik)))`` of a config (``decay``, ``optimizer``,
    ``clip_norm`` and the estimator options)."""
    source = make_source(method, seed, cfg, DATA_AXIS if data_parallel else None)
    return make_optimizer(source, learning_rate, decay=cfg.get("decay", 1e-4),
                          optimizer=cfg.get("optimizer", "sgd"),
                          clip_norm=cfg.get("clip_norm", 0.0))


def build_state(model: Model, tx: optax.GradientTransformation) -> TrainState:
    """The initial train state of ``model`` under ``tx``."""
    return init_state(model.params, tx)

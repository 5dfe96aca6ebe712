"""Builds the gradient source an experiment config names (``method``)."""

from __future__ import annotations

from typing import Any

import optax

from fgrad._transforms import backprop_source, forward_gradient_source

METHODS = ("forward", "backprop")
ESTIMATOR_KEYS = ("num_tangents", "distribution", "combine", "derivative", "fd_epsilon",
                  "diagnostics")


def make_source(method: str, seed: int, cfg: dict[str, Any]
                ) -> optax.GradientTransformationExtraArgs:
    """The gradient source for ``method``; estimator options are read from ``cfg`` if present.

    Args:
      method: ``"forward"`` (forward gradient) or ``"backprop"``.
      seed: the tangents' seed (forward only).
      cfg: a config dict; keys among ``num_tangents``, ``distribution``, ``combine``,
        ``derivative``, ``fd_epsilon`` and ``diagnostics`` configure the forward gradient.

    Returns:
      An optax gradient source taking ``value_fn``.
    """
    if method == "backprop":
        return backprop_source()
    if method == "forward":
        return forward_gradient_source(
            seed, **{k: cfg[k] for k in ESTIMATOR_KEYS if k in cfg})
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")

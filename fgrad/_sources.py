"""Builds the gradient source an experiment config names (``method``)."""

from __future__ import annotations

from typing import Any

import optax

from fgrad._transforms import backprop_source, forward_gradient_source

METHODS = ("forward", "backprop")
ESTIMATOR_KEYS = ("num_tangents", "distribution", "combine", "derivative", "fd_epsilon",
                  "diagnostics")


def make_source(method: str, seed: int, cfg: dict[str, Any], axis_name: str | None = None
                ) -> optax.GradientTransformationExtraArgs:
    """The gradient source for ``method``; estimator options are read from ``cfg`` if present.

    Args:
      method: ``"forward"`` (forward gradient) or ``"backprop"``.
      seed: the tangents' seed (forward only).
      cfg: a config dict; keys among ``num_tangents``, ``distribution``, ``combine``,
        ``derivative``, ``fd_epsilon`` and ``diagnostics`` configure the forward gradient.
      axis_name: the data-parallel mesh axis the source averages over (see
        :mod:`fgrad._parallel`); None on a single device.

    Returns:
      An optax gradient source taking ``value_fn``.
    """
    if method == "backprop":
        return backprop_source(axis_name)
    if method == "forward":
        return forward_gradient_source(
            seed, axis_name=axis_name, **{k: cfg[k] for k in ESTIMATOR_KEYS if k in cfg})
    raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")

"""Experiment configs: ``ml_collections.ConfigDict`` defaults per kind, locked, with overrides.

An experiment file ``experiments/<name>.py`` defines ``get_config(preset)``; it starts from
:func:`defaults` of its kind, sets what differs, and returns :func:`finalize` of it. A
finalized config is locked: setting a key the kind does not have is a one-line error naming it
(:func:`override`), so a typo such as ``diagnostic_every`` cannot be silently ignored. The
defaults of every kind live here and nowhere else.

Keys every experiment has:

* ``name``: the experiment (its file stem; results go to ``results/<preset>/<name>``).
* ``kind``: how it runs, a module of :mod:`fgrad.lab.run`.
* ``report``: its report section and figure, a module of :mod:`fgrad.analysis` ('' for none).
* ``title``: the report heading.
* ``group``: ``"paper"`` (``make reproduce``), ``"beyond"`` (``make beyond``) or
  ``"standalone"`` (run on its own, e.g. the benchmark).
* ``order``: position in ``make reproduce`` and in the report.
* ``results_dir``: where results go ('' → ``results/<preset>/<name>``).
"""

from __future__ import annotations

import ast
import copy
import json
from collections.abc import Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from fgrad.lab.checks import check

# The presets of make reproduce: "cpu" (the default, short enough for a 2-core CPU), "full" (the
# paper's lengths with the seeds that fit in about 3 hours on that CPU) and "paper" (the paper's
# 5 seeds, for accelerators). An experiment without a preset is left out of that reproduce.
PRESETS = ("cpu", "full", "paper")
GROUPS = ("paper", "beyond", "standalone")


def _common(kind: str) -> dict[str, Any]:
    return {"name": "", "kind": kind, "report": kind, "title": "", "group": "paper",
            "order": 100, "results_dir": ""}


def _estimator() -> dict[str, Any]:
    """The forward-gradient estimator's options (forward_gradient_source's arguments)."""
    return {"num_tangents": 1, "distribution": "normal", "combine": "mean",
            "derivative": "jvp", "fd_epsilon": 1e-3}


def _int() -> Any:
    """An integer key whose default is None (each key needs its own placeholder: a shared one
    would link the keys)."""
    return config_dict.placeholder(int)


def _data() -> dict[str, Any]:
    """How MNIST enters a model, one choice for every MNIST experiment: ``inputs`` (see
    :func:`fgrad._mnist.scale_inputs`: ``"standardize"``, PyTorch's (x/255 − 0.1307)/0.3081, or
    ``"unit"``, x/255) and ``init``, every layer's initialisation (a key of
    :data:`fgrad._layers.INITS`: ``"pytorch"``, the paper's code's, or ``"flax"``)."""
    return {"inputs": "standardize", "init": "pytorch"}


def _mnist() -> dict[str, Any]:
    """The paper's MNIST protocol: both methods, batch 64, plain SGD with η_i = η₀·e^(−ik),
    k = 1e-4, one normal tangent per step (i.i.d. entries; ``tangents="low_rank"`` with
    ``rank`` r factorises every kernel's tangent, see :mod:`fgrad._lowrank`); steps per
    compiled call measured per model and backend (method ``"activity"``: ``num_perturbations``
    K noise draws per example and ``mask_relu``, see :mod:`fgrad._activity`; None:
    :data:`fgrad.lab.build.DEFAULT_STEPS_PER_CALL`); a checkpoint every 1,000 steps (0: only
    when interrupted); ``clip_norm`` c > 0 clips each gradient estimate to global norm c (0, the
    paper's: none); ``best_rate_seeds``: seeds run after the sweep (``seeds`` over the
    learning rates), only at each variant's best rate (lowest final training loss)."""
    return {**_estimator(), **_data(), "tangents": "iid", "rank": 1, "num_perturbations": 1,
            "mask_relu": True, "model": "mlp", "model_kwargs": {},
            "steps": 1000, "seeds": [0],
            "learning_rates": [2e-4], "methods": ["forward", "backprop"], "variants": [],
            "batch_size": 64, "decay": 1e-4, "optimizer": "sgd", "clip_norm": 0.0,
            "steps_per_call": _int(),
            "eval_every": _int(), "eval_examples": _int(), "diagnostics_every": 0,
            "divergence_factor": 100.0, "data_parallel": _int(), "checkpoint_every": 1000,
            "best_rate_seeds": []}


def _test_functions() -> dict[str, Any]:
    return {**_estimator(), "functions": {}, "methods": ["forward", "backprop"], "seeds": 10,
            "chunk": 250, "decay": 0.0}


def _estimator_quality() -> dict[str, Any]:
    return {**_data(), "models": {}, "batch_size": 64, "seed": 0, "train_steps": 20,
            "train_lr": 0.05,
            "target_rse": 0.05}


def _timing() -> dict[str, Any]:
    """Keys of the interleaved timing protocol (:func:`fgrad.lab.timing.time_interleaved`)."""
    return {"rounds": 5, "min_round_s": 0.05, "warmup": 1, "seed": 0, "isolate": True,
            "compiler_options": {}}


def _depth_sweep() -> dict[str, Any]:
    return {**_timing(), "width": 1024, "depths": [1, 2], "batch_sizes": [64, 1024],
            "methods": ["f", "backprop", "fwd-normal-k1", "fwd-lowrank-normal-k1-r1"],
            "time": True}


def _bench() -> dict[str, Any]:
    return {**_timing(), "models": ["logreg", "mlp", "cnn"], "methods": [],
            "model_kwargs": {}, "batch_sizes": [64], "case_budget_s": 90.0, "max_call_s": 10.0,
            "scan_target_s": 0.5, "max_scan_steps": 50, "loops": ["python", "scan"],
            "loop_batch_sizes": [64], "conv_parts_batch_sizes": [64]}


def _comm_bytes() -> dict[str, Any]:
    return {"devices": 4, "batch_size": 64, "steps": 3, "learning_rate": 2e-4, "seed": 0,
            "models": {}, "forward_num_tangents": [1, 8], "low_rank_num_tangents": [1],
            "activity_num_perturbations": [1]}


_DEFAULTS = {"mnist": _mnist, "test_functions": _test_functions,
             "estimator_quality": _estimator_quality, "depth_sweep": _depth_sweep,
             "bench": _bench, "comm_bytes": _comm_bytes}
KINDS = tuple(_DEFAULTS)
# Sub-dicts whose keys are free (model fields, per-model settings): left unlocked.
_OPEN = ("model_kwargs", "functions", "models", "compiler_options")


def defaults(kind: str) -> ConfigDict:
    """Every key of an experiment of ``kind`` with its default (unlocked, to be filled in).

    Args:
      kind: one of :data:`KINDS`.

    Returns:
      A fresh ``ConfigDict``.
    """
    if kind not in _DEFAULTS:
        raise ValueError(f"unknown experiment kind {kind!r}: use one of {', '.join(KINDS)}")
    return ConfigDict({**_common(kind), **_DEFAULTS[kind]()})


def finalize(cfg: ConfigDict) -> ConfigDict:
    """Checks ``cfg`` and locks it (unknown keys become errors); returns it.

    Raises:
      ValueError: one line, for a missing name, an unknown group or kind, or a variant key the
        kind does not have.
    """
    if not cfg.name:
        raise ValueError("experiment config has no name: set config.name")
    if cfg.group not in GROUPS:
        raise ValueError(f"config {cfg.name!r} has unknown group {cfg.group!r}: use one of "
                         f"{', '.join(GROUPS)}")
    if cfg.kind not in _DEFAULTS:
        raise ValueError(f"config {cfg.name!r} has unknown kind {cfg.kind!r}: use one of "
                         f"{', '.join(KINDS)}")
    for v in cfg.get("variants", []):
        unknown = sorted(set(v) - set(cfg) - {"name", "method"})
        if unknown or "name" not in v or "method" not in v:
            raise ValueError(f"config {cfg.name!r}: variant {v.get('name')!r} needs name and "
                             f"method and may set only config keys; unknown: "
                             f"{', '.join(unknown) or '-'}")
    check(cfg)
    cfg.lock()
    for key in _OPEN:
        if isinstance(cfg.get(key), ConfigDict):
            cfg[key].unlock()
    return cfg


def experiment(kind: str, preset: Mapping[str, Any], **fields: Any) -> ConfigDict:
    """An experiment's locked config: :func:`defaults` of ``kind``, then ``fields`` (what the
    experiment sets), then ``preset`` (what its chosen preset sets), then :func:`finalize`.

    Example (``experiments/logreg.py``)::

      def get_config(preset="cpu"):
          return experiment("mnist", PRESETS[preset], name="logreg", model="logreg", ...)
    """
    cfg = defaults(kind)
    cfg.update(**fields)
    cfg.update(**preset)
    return finalize(cfg)


def to_dict(cfg: ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, JSON-ready dict of a config (tuples as lists), as results files store it."""
    plain = cfg.to_dict() if isinstance(cfg, ConfigDict) else copy.deepcopy(dict(cfg))
    return json.loads(json.dumps(plain, default=str))


def parse_value(text: str) -> Any:
    """A command-line value as a Python literal (``3``, ``2e-4``, ``[1, 2]``, ``True``), else the
    string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def override(cfg: ConfigDict, key: str, value: Any) -> None:
    """Sets ``cfg[key] = value`` (``key`` may be dotted, e.g. ``model_kwargs.width``).

    Raises:
      ValueError: one line naming the key, when the config has no such key or the value has
        the wrong type.
    """
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
        if p not in node or not isinstance(node[p], ConfigDict):
            raise ValueError(f"unknown config key {key!r} for {cfg.name!r}: known keys are "
                             f"{', '.join(sorted(cfg))}")
        node = node[p]
    if node.is_locked and leaf not in node:
        raise ValueError(f"unknown config key {key!r} for {cfg.name!r}: known keys are "
                         f"{', '.join(sorted(node))}")
    old = node.get(leaf)
    if isinstance(old, list) and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    try:
        node[leaf] = list(value) if isinstance(value, tuple) else value
    except TypeError:
        raise ValueError(f"config key {key!r} of {cfg.name!r} takes a "
                         f"{type(old).__name__}, got {value!r}") from None


def variants(cfg: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The MNIST config's variants: ``cfg.variants`` (each a dict with ``name``, ``method`` and
    config overrides, e.g. ``num_tangents``, ``optimizer``, ``learning_rates``), or else one
    variant per entry of ``cfg.methods``, named after the method."""
    return [dict(v) for v in cfg["variants"]] or [{"name": m, "method": m}
                                                 for m in cfg["methods"]]


def local_loss_variants(model_kwargs: Mapping[str, Any], head_hidden: int = 0
                        ) -> list[dict[str, Any]]:
    """The five methods of an activity-perturbation comparison (``experiments/activity*.py``):
    backprop, local greedy backprop, weight perturbation, activity perturbation and activity
    perturbation with local losses; the local ones add ``local_losses=True`` and
    ``head_hidden`` to ``model_kwargs``."""
    local = {**model_kwargs, "local_losses": True, "head_hidden": head_hidden}
    return [{"name": "backprop", "method": "backprop"},
            {"name": "backprop_local", "method": "backprop", "model_kwargs": local},
            {"name": "forward", "method": "forward"},
            {"name": "activity", "method": "activity"},
            {"name": "activity_local", "method": "activity", "model_kwargs": local}]


def run_name(variant: str, learning_rate: float, seed: int) -> str:
    """File stem of one MNIST run, e.g. ``forward_lr0.0002_seed0``."""
    return f"{variant}_lr{learning_rate:g}_seed{seed}"


def mnist_runs(cfg: ConfigDict) -> list[tuple[dict[str, Any], float, int, str]]:
    """(run config, learning rate, seed, name) of every run of an MNIST config, in run order.

    The run config is ``cfg`` as a plain dict with the variant's overrides applied and
    ``variant``/``method`` set (``variants`` removed). Learning rates come from the variant if
    it has its own, else from ``cfg``.
    """
    base = {k: v for k, v in to_dict(cfg).items() if k != "variants"}
    runs = []
    for v in variants(cfg):
        run_cfg = {**base, **{k: val for k, val in v.items() if k != "name"},
                   "variant": v["name"]}
        for lr in run_cfg["learning_rates"]:
            for seed in run_cfg["seeds"]:
                runs.append((run_cfg, float(lr), int(seed), run_name(v["name"], lr, seed)))
    return runs


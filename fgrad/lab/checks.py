"""The checks a config passes before anything is loaded (:func:`check`): one-line errors that
name the key, the value and the flag that fixes it. :func:`fgrad.lab.config.finalize` calls it
on every experiment config, the command line on every override."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fgrad._layers import INITS
from fgrad._lowrank import TANGENTS
from fgrad._mnist import INPUTS

# The integer keys :func:`check` checks, in whichever kind has them. None (a placeholder: chosen
# at run time) passes.
POSITIVE_INTS = ("steps", "batch_size", "num_tangents", "rank", "num_perturbations",
                 "steps_per_call", "eval_every",
                 "eval_examples", "data_parallel", "chunk", "rounds", "width", "devices",
                 "max_scan_steps")
NON_NEGATIVE_INTS = ("diagnostics_every", "checkpoint_every", "seed", "warmup", "train_steps")
POSITIVE_INT_LISTS = ("depths", "batch_sizes", "loop_batch_sizes", "forward_num_tangents")


def _flag(key: str) -> str:
    """How the command line sets ``key``."""
    return f"--config.{key}=N" if "." in key else f"--{key.replace('_', '-')} N"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ints(cfg: Mapping[str, Any], where: str, prefix: str = "") -> None:
    for key in POSITIVE_INTS + NON_NEGATIVE_INTS:
        value = cfg.get(key)
        low = 1 if key in POSITIVE_INTS else 0
        if value is not None and (not _is_int(value) or value < low):
            raise ValueError(f"{prefix}{key} must be an integer >= {low}, got {value!r} "
                             f"({where}): pass {_flag(prefix + key)} with N >= {low}")
    for key in POSITIVE_INT_LISTS:
        value = cfg.get(key)
        if value is not None and (not value or not all(_is_int(v) and v >= 1 for v in value)):
            raise ValueError(f"{prefix}{key} must be a non-empty list of integers >= 1, got "
                             f"{list(value)!r} ({where}): pass --{key.replace('_', '-')} N...")
    seeds = cfg.get("seeds")
    if _is_int(seeds) or isinstance(seeds, bool):
        if isinstance(seeds, bool) or seeds < 1:
            raise ValueError(f"seeds (the number of seeds) must be an integer >= 1, got "
                             f"{seeds!r} ({where}): pass --seeds N with N >= 1")
    elif seeds is not None and (not seeds or not all(_is_int(v) and v >= 0 for v in seeds)):
        raise ValueError(f"seeds must be a non-empty list of integers >= 0, got "
                         f"{list(seeds)!r} ({where}): pass --seeds N (seeds 0..N-1) with N >= 1")


def _check_tangents(run: Mapping[str, Any], where: str) -> None:
    """``tangents`` is one of :data:`fgrad._lowrank.TANGENTS`; low-rank needs the jvp."""
    tangents = run.get("tangents")
    if tangents is not None and tangents not in TANGENTS:
        raise ValueError(f"tangents must be one of {', '.join(TANGENTS)}, got {tangents!r} "
                         f"({where}): pass --tangents iid or --tangents low_rank")
    if tangents == "low_rank" and run.get("derivative", "jvp") != "jvp":
        raise ValueError(f"tangents low_rank needs derivative jvp, got "
                         f"{run.get('derivative')!r} ({where}): pass --derivative jvp or "
                         "--tangents iid")


def _check_data(run: Mapping[str, Any], where: str) -> None:
    """``inputs`` and ``init`` are known; the initialisation is set by ``init`` only."""
    inputs, init = run.get("inputs"), run.get("init")
    if inputs is not None and inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {inputs!r} ({where}): "
                         "pass --inputs standardize or --inputs unit")
    if init is not None and init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r} ({where}): "
                         "pass --init pytorch or --init flax")
    models = run.get("models")  # estimator_quality: per-model settings
    kwargs = [run.get("model_kwargs") or {}] + [
        s.get("model_kwargs") or {} for s in (models.values() if isinstance(models, Mapping)
                                              else []) if isinstance(s, Mapping)]
    if any("init_scheme" in k for k in kwargs):
        raise ValueError(f"model_kwargs.init_scheme is set ({where}): the initialisation is the "
                         "config key init; pass --init pytorch or --init flax instead")


def _check_activity(run: Mapping[str, Any], where: str) -> None:
    """``mask_relu`` is a bool (``--mask-relu False`` parses to one)."""
    mask = run.get("mask_relu")
    if mask is not None and not isinstance(mask, bool):
        raise ValueError(f"mask_relu must be True or False, got {mask!r} ({where}): pass "
                         "--mask-relu True or --mask-relu False")


def _check_multiples(run: Mapping[str, Any], where: str) -> None:
    """An explicit ``steps_per_call`` must divide steps, eval_every and diagnostics_every."""
    chunk = run.get("steps_per_call")
    if chunk is None or "steps" not in run:
        return
    steps = run["steps"]
    eval_every = run.get("eval_every") or steps
    diag = run.get("diagnostics_every") or 0
    if steps % chunk or eval_every % chunk or diag % chunk:
        raise ValueError(f"steps ({steps}), eval_every ({eval_every}) and diagnostics_every "
                         f"({diag}) must be multiples of steps_per_call ({chunk}) ({where}): "
                         "pass --steps-per-call N with N dividing them, or leave it unset to "
                         "have it chosen")


def check(cfg: Mapping[str, Any]) -> None:
    """Checks the numbers of a config before anything is loaded: counts, sizes and periods
    are positive integers (:data:`POSITIVE_INTS`, ...), ``inputs`` and ``init`` are known (and
    no ``model_kwargs`` sets ``init_scheme`` beside ``init``), ``tangents`` is known (and low-rank
    ones use the jvp), seeds are a count >= 1 or a non-empty list, an explicit
    ``steps_per_call`` divides ``steps`` and ``eval_every``, and a test function's ``steps``
    is a multiple of ``chunk``; every MNIST variant is checked with its overrides.

    Raises:
      ValueError: one line naming the key, the value and the flag that fixes it.
    """
    name = cfg.get("name") or "config"
    _check_ints(cfg, name)
    for v in [cfg, *(cfg.get("variants") or [])]:
        _check_data({**cfg, **v}, name if v is cfg else f"{name}, variant {v.get('name')!r}")
    if cfg.get("kind") == "mnist":
        for v in cfg.get("variants") or []:
            _check_ints(v, f"{name}, variant {v.get('name')!r}")
        _check_tangents(cfg, name)
        _check_activity(cfg, name)
        for v in cfg.get("variants") or []:
            _check_tangents({**cfg, **v}, f"{name}, variant {v.get('name')!r}")
            _check_activity({**cfg, **v}, f"{name}, variant {v.get('name')!r}")
        _check_multiples(cfg, name)
        for v in [cfg, *(cfg.get("variants") or [])]:
            clip = v.get("clip_norm", 0.0)
            if not isinstance(clip, (int, float)) or not 0 <= clip < float("inf"):
                raise ValueError(f"clip_norm must be a number >= 0 (0: no clipping), got "
                                 f"{clip!r} ({name}): pass --clip-norm C")
        for v in cfg.get("variants") or []:
            _check_multiples({**cfg, **v}, f"{name}, variant {v.get('name')!r}")
    for fn_name, fn_cfg in (cfg.get("functions") or {}).items():
        _check_ints(fn_cfg, name, f"functions.{fn_name}.")
        steps, chunk = fn_cfg.get("steps"), cfg.get("chunk")
        if steps is not None and chunk and steps % chunk:
            raise ValueError(f"functions.{fn_name}.steps ({steps}) must be a multiple of chunk "
                             f"({chunk}) ({name}): pass --chunk N with N dividing it")

"""Mid-run checkpoints of a training run, on orbax-checkpoint.

One :class:`RunCheckpointer` per run directory
(e.g. ``results/cpu/mlp/.ckpt/forward_lr0.0002_seed0``) keeps the newest ``keep`` checkpoints
of the training state (any pytree of arrays, typed PRNG keys included) together with a JSON
``meta`` dict and the run's config fingerprint::

    ckpt = RunCheckpointer(directory, config_fingerprint(config))
    if ckpt.latest_step() is not None:
        step, state, meta = ckpt.restore(state)      # CheckpointMismatch if config changed
    ...
    ckpt.save(step, state, {"log_lines": n, "train_time_s": t})
    ...
    ckpt.remove()                                    # run finished

Saving is synchronous (finished when :meth:`RunCheckpointer.save` returns) and atomic: orbax
writes ``<step>.orbax-checkpoint-tmp`` and renames it to ``<step>`` only once everything is
written, so a kill mid-save leaves the previous checkpoint usable (the leftover tmp directory
is ignored, and deleted the next time a checkpointer opens the directory).

The state is stored as its flat list of leaves; the tree structure comes from the ``target``
given to :meth:`RunCheckpointer.restore`, which must match the saved leaves' paths, shapes and
dtypes (checked against a record kept in the checkpoint's JSON item).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from fgrad._types import PyTree

__all__ = ["CheckpointMismatch", "RunCheckpointer", "config_fingerprint"]

_FORMAT = 1
_STATE, _META = "state", "meta"


class CheckpointMismatch(ValueError):
    """The checkpoint on disk was made by another config (or holds a differently shaped state)."""


# ---------------------------------------------------------------------------------------------
# Quiet orbax: it logs dozens of INFO lines per save through absl logging (the "absl" logger of
# the standard logging module), which show up as soon as the program enables INFO logging. This
# filter drops only orbax's own records below WARNING; nothing else's logging is affected.

_ORBAX_DIR = os.path.dirname(os.path.dirname(os.path.abspath(ocp.__file__))) + os.sep


class _DropOrbaxInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.pathname.startswith(_ORBAX_DIR)


def _install_log_filter() -> None:
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxInfo) for f in absl_logger.filters):
        absl_logger.addFilter(_DropOrbaxInfo())


_install_log_filter()


# ---------------------------------------------------------------------------------------------
def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping) or callable(getattr(value, "to_dict", None)):
        items = value.items() if isinstance(value, Mapping) else value.to_dict().items()
        return {str(k): _canonical(v) for k, v in items}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A fingerprint of a run's config: sha256 of its canonical JSON.

    Args:
      config: the config, nested mappings / lists / JSON scalars; mapping keys become strings,
        tuples become lists and any other value its ``str`` (objects with a ``to_dict()``
        method, e.g. an ``ml_collections.ConfigDict``, count as mappings).

    Returns:
      64 hex digits, the same for configs equal up to key order.
    """
    text = json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _describe(leaf: Any) -> tuple[str, list[int]]:
    """(dtype name, shape) of a leaf: ``key<fry>``-style for typed keys, ``int`` for Python
    ints, ``float32`` for arrays."""
    if isinstance(leaf, (bool, int, float)):
        return type(leaf).__name__, []
    return str(leaf.dtype), [int(d) for d in leaf.shape]


def _save_leaf(leaf: Any) -> Any:
    if _is_key(leaf):
        return jax.random.key_data(leaf)
    if isinstance(leaf, (jax.Array, np.ndarray, bool, int, float)):
        return leaf
    return np.asarray(leaf)  # NumPy scalars and other array-likes


def _restore_target(leaf: Any) -> Any:
    """What orbax is asked to restore for one target leaf."""
    if isinstance(leaf, (np.ndarray, np.generic)):
        return np.zeros(np.shape(leaf), leaf.dtype)
    if isinstance(leaf, (bool, int, float)):
        return leaf
    if _is_key(leaf):
        leaf = (jax.random.key_data(leaf) if isinstance(leaf, jax.Array)
                else jax.eval_shape(jax.random.key_data, leaf))
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)


class RunCheckpointer:
    """Synchronous, atomic checkpoints of one training run in one directory.

    Args:
      directory: the run's checkpoint directory (created at the first save), e.g.
        ``results/cpu/mlp/.ckpt/forward_lr0.0002_seed0``.
      fingerprint: a string identifying the run's config (e.g. :func:`config_fingerprint`);
        stored with every checkpoint and checked by :meth:`restore`.
      keep: how many of the newest checkpoints to keep (≥ 1).
    """

    def __init__(self, directory: str | Path, fingerprint: str, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.fingerprint = str(fingerprint)
        self.keep = int(keep)
        self._manager: ocp.CheckpointManager | None = None

    def __repr__(self) -> str:
        return f"RunCheckpointer({str(self.directory)!r}, keep={self.keep})"

    # -- orbax -----------------------------------------------------------------------------------
    def _open(self) -> ocp.CheckpointManager:
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                enable_async_checkpointing=False,  # save() returns once the step is committed
                preservation_policy=ocp.checkpoint_managers.LatestN(n=self.keep),
                cleanup_tmp_directories=True,  # drop tmp dirs left by a killed save
                create=True,
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=(_STATE, _META))
        return self._manager

    def close(self) -> None:
        """Releases orbax's manager (reopened on the next call)."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    # -- API -------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint.

        Returns:
          The step, or ``None`` when the directory holds no complete checkpoint (half-written
          ``*.orbax-checkpoint-tmp`` directories do not count).
        """
        if not self.directory.is_dir():
            return None
        return self._open().latest_step()

    def save(self, step: int, state: PyTree, meta: dict[str, Any]) -> None:
        """Saves ``state`` and ``meta`` as checkpoint ``step``; returns when it is on disk.

        Older checkpoints beyond the newest ``keep`` are then deleted. Saving the step of the
        newest checkpoint again replaces it (deleted first, so briefly not atomic).

        Args:
          step: the training step (≥ 0, not older than the newest checkpoint).
          state: a pytree of jax/NumPy arrays and Python scalars; typed PRNG keys are stored
            as their key data.
          meta: a JSON-serialisable dict (e.g. the logger's line count, cumulative train
            time); tuples come back as lists, non-string keys as strings.

        Raises:
          ValueError: ``step`` is negative or older than the newest checkpoint.
          TypeError: ``meta`` is not JSON-serialisable.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        json.dumps(meta)  # fail before writing anything
        manager = self._open()
        latest = manager.latest_step()
        if latest is not None and step < latest:
            raise ValueError(f"cannot save step {step} in {self.directory}: it already holds "
                             f"the later step {latest}")
        if latest == step:
            manager.delete(step)
        paths_leaves, _ = jax.tree_util.tree_flatten_with_path(state)
        record = []
        for path, leaf in paths_leaves:
            dtype, shape = _describe(leaf)
            impl = str(jax.random.key_impl(leaf)) if _is_key(leaf) else None
            record.append([jax.tree_util.keystr(path), dtype, shape, impl])
        items: dict[str, Any] = {_META: ocp.args.JsonSave({
            "format": _FORMAT, "fingerprint": self.fingerprint, "meta": meta,
            "leaves": record})}
        if paths_leaves:  # orbax refuses an empty pytree
            items[_STATE] = ocp.args.StandardSave([_save_leaf(leaf) for _, leaf in paths_leaves])
        if not manager.save(step, args=ocp.args.Composite(**items), force=True):
            raise RuntimeError(f"orbax did not save step {step} in {self.directory}")
        manager.wait_until_finished()

    def restore(self, target: PyTree) -> tuple[int, PyTree, dict[str, Any]]:
        """Restores the newest checkpoint into the structure of ``target``.

        Args:
          target: a pytree like the saved state (concrete arrays, or ``jax.ShapeDtypeStruct``
            leaves as from ``jax.eval_shape``; typed keys included). Restored jax arrays take
            a concrete leaf's sharding, else the default device; NumPy leaves come back as
            NumPy, Python scalars as Python scalars.

        Returns:
          ``(step, state, meta)``: the checkpoint's step, the state (bit-identical to the saved
          one) and the ``meta`` dict given to :meth:`save`.

        Raises:
          FileNotFoundError: there is no complete checkpoint.
          CheckpointMismatch: the checkpoint was made with another fingerprint, or its leaves'
            paths, dtypes or shapes differ from ``target``'s.
        """
        step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        manager = self._open()
        stored = manager.restore(step, args=ocp.args.Composite(
            **{_META: ocp.args.JsonRestore()}))[_META]
        if not isinstance(stored, dict) or stored.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatch(
                f"checkpoint in {self.directory} was made with another config: delete that "
                f"directory or pass --force")
        paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
        record = stored["leaves"]
        wanted = [[jax.tree_util.keystr(p), *_describe(leaf)] for p, leaf in paths_leaves]
        if [r[:3] for r in record] != wanted:
            diff = next((f"{w} != saved {r[:3]}" for w, r in zip(wanted, record)
                         if w != r[:3]), f"{len(wanted)} leaves != saved {len(record)}")
            raise CheckpointMismatch(
                f"checkpoint in {self.directory} does not match the state to restore "
                f"({diff}): delete that directory or pass --force")
        leaves: list[Any] = []
        if paths_leaves:
            targets = [_restore_target(leaf) for _, leaf in paths_leaves]
            leaves = list(manager.restore(step, args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(targets)}))[_STATE])
        for i, ((_, leaf), (*_, impl)) in enumerate(zip(paths_leaves, record)):
            if impl is not None:
                leaves[i] = jax.random.wrap_key_data(leaves[i], impl=impl)
            elif isinstance(leaf, np.generic):
                leaves[i] = np.asarray(leaves[i], dtype=leaf.dtype)[()]
        return step, jax.tree_util.tree_unflatten(treedef, leaves), stored["meta"]

    def remove(self) -> None:
        """Deletes the whole checkpoint directory (the run is done); a later :meth:`save`
        starts afresh."""
        self.close()
        if self.directory.exists():
            shutil.rmtree(self.directory)

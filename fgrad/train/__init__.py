"""Training: the step (:mod:`fgrad.train.step`), the timed loop (:mod:`fgrad.train.loop`),
data parallelism (:mod:`fgrad.train.parallel`) and mid-run checkpoints
(:mod:`fgrad.train.checkpoint`).

Everything here takes built objects (a loss function, an optax transformation, parameters,
device-resident data); nothing reads an experiment config. Building those from a config is the
experiment layer's job (:mod:`fgrad.lab.build`).
"""

from fgrad.train.step import (
    Data,
    TrainState,
    batch_at,
    epoch_permutations,
    init_state,
    make_diagnostics_fn,
    make_eval_fn,
    make_multi_step,
    make_train_step,
    source_value,
)

__all__ = [
    "Data",
    "TrainState",
    "batch_at",
    "epoch_permutations",
    "init_state",
    "make_diagnostics_fn",
    "make_eval_fn",
    "make_multi_step",
    "make_train_step",
    "source_value",
]

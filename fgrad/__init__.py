"""fgrad: forward gradients without backpropagation, in JAX.

Public API:

* :func:`forward_gradient` — the estimator ``(∇f·v) v`` via ``jax.jvp``.
* :func:`forward_gradient_source`, :func:`backprop_source` — gradient sources as optax
  transformations, chained with any optax optimizer.
* :func:`paper_schedule`, :func:`make_optimizer`, :func:`clip_global_norm` — η_i = η₀·e^(−ik)
  and the chain around it (optionally clipped).
* :func:`load_mnist` (IDX files or TFDS) and :func:`scale_inputs` (:data:`INPUTS`: standardised
  or ``[0, 1]`` pixels), Flax models :func:`make_model` (logreg, mlp, cnn),
  :func:`cross_entropy_loss`; local losses (``local_losses=True``, per-block classifiers):
  :func:`block_losses`, :func:`training_loss`.
* :func:`sample_tangents`, :func:`gradient_diagnostics`, :func:`beale`, :func:`rosenbrock`.
* Activity-perturbed forward gradients (Ren et al. 2023): :func:`activity_gradient`,
  :func:`activity_perturbation_source` (``SOURCES["activity"]``), :func:`activity_layers`.
* Low-rank tangents V = ABᵀ/√r for flax ``nn.Dense``/``nn.Conv`` kernels
  (``forward_gradient(..., tangents="low_rank", rank=r)``): :func:`low_rank_layers`,
  :func:`sample_low_rank_tangents`, :class:`LowRankTangents`, :func:`tangent_mse`.

Layers above this library, each a subpackage (none is loaded by ``import fgrad``):
:mod:`fgrad.train` (step, timed loop, data parallelism, checkpoints), :mod:`fgrad.lab`
(experiment configs, registry, runners, ``python -m fgrad``) and :mod:`fgrad.analysis` (results
files → metrics, REPORT.md, figures).
"""

from fgrad._activity import ActivityGradient, activity_gradient, activity_layers
from fgrad._estimator import ForwardGradient, forward_gradient
from fgrad._functions import beale, rosenbrock
from fgrad._lowrank import (
    TANGENTS,
    LowRankTangents,
    low_rank_layers,
    sample_low_rank_tangents,
    tangent_mse,
)
from fgrad._mnist import INPUTS, Mnist, MnistError, load_mnist, read_idx, scale_inputs
from fgrad._models import (
    CNN,
    MLP,
    LogisticRegression,
    accuracy,
    block_losses,
    cross_entropy_loss,
    init_params,
    make_model,
    training_loss,
)
from fgrad._schedules import clip_global_norm, make_optimizer, paper_schedule
from fgrad._tangents import sample_tangents
from fgrad._transforms import (
    SOURCES,
    ActivityPerturbationState,
    BackpropState,
    ForwardGradientState,
    activity_perturbation_source,
    backprop_source,
    forward_gradient_source,
    gradient_diagnostics,
)

__all__ = [
    "ActivityGradient",
    "ActivityPerturbationState",
    "activity_gradient",
    "activity_layers",
    "activity_perturbation_source",
    "CNN",
    "INPUTS",
    "MLP",
    "LogisticRegression",
    "LowRankTangents",
    "Mnist",
    "MnistError",
    "accuracy",
    "block_losses",
    "cross_entropy_loss",
    "init_params",
    "load_mnist",
    "scale_inputs",
    "low_rank_layers",
    "make_model",
    "read_idx",
    "training_loss",
    "SOURCES",
    "TANGENTS",
    "BackpropState",
    "ForwardGradient",
    "ForwardGradientState",
    "backprop_source",
    "beale",
    "forward_gradient",
    "forward_gradient_source",
    "gradient_diagnostics",
    "make_optimizer",
    "clip_global_norm",
    "paper_schedule",
    "rosenbrock",
    "sample_low_rank_tangents",
    "sample_tangents",
    "tangent_mse",
]

__version__ = "0.1.0"

"""Type aliases shared by every module."""

from typing import Any

PyTree = Any  # a pytree of arrays (parameters, tangents, gradients, optimizer states)

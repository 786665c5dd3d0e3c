"""Max and min reductions whose gradient is routed by index, never by re-finding the extremum.

``jnp.max``'s derivative finds the maximum again by comparing the operand with the result (``x == max``) and divides
by the number of matches. When XLA computes the operand in two fusions (one for the forward max, one inside the
backward pass), the two copies can round differently; then no element matches and the gradient is 0/0 = NaN. Seen
on the part model's stripe max, compiled by XLA's CPU backend without LLVM's optimisation passes: the loss finite,
every image-tower gradient NaN. Here the position is found once (argmax) and both the value and the gradient are
read there: the same value as ``jnp.max``; the gradient goes to the first extremum where ``jnp.max`` splits it
among exact ties.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_along(x: jax.Array, axis: int, keepdims: bool = False) -> jax.Array:
  """Max of x over one axis (any shape; that axis removed unless ``keepdims``); gradient to the first maximum."""
  return _read_at(x, jnp.argmax(x, axis=axis), axis, keepdims)


def min_along(x: jax.Array, axis: int, keepdims: bool = False) -> jax.Array:
  """Min of x over one axis (any shape; that axis removed unless ``keepdims``); gradient to the first minimum."""
  return _read_at(x, jnp.argmin(x, axis=axis), axis, keepdims)


def _read_at(x: jax.Array, index: jax.Array, axis: int, keepdims: bool) -> jax.Array:
  value = jnp.take_along_axis(x, jnp.expand_dims(index, axis), axis=axis)
  return value if keepdims else jnp.squeeze(value, axis)

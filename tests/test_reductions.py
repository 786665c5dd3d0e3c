"""reductions.max_along / min_along against numpy: the values of np.max / np.min, and a gradient that is the one-hot
of the first extremum (numpy's argmax / argmin), ties included; never NaN where jnp.max's tie count can be 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tpsearch_jax.reductions import max_along, min_along

CASES = [(max_along, np.max, np.argmax), (min_along, np.min, np.argmin)]


@pytest.mark.parametrize("fn,np_value,np_index", CASES)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_value_and_gradient_equal_numpy(fn, np_value, np_index, axis, keepdims):
  x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
  x[1, 2, 0] = x[1, 3, 0] = x[1, 4, 0] = 9.0  # ties on every axis, at both signs
  x[2, 1, 3] = x[2, 1, 1] = -9.0
  x[0, 0, 2] = x[2, 0, 2] = 9.0
  np.testing.assert_array_equal(fn(jnp.asarray(x), axis=axis, keepdims=keepdims),
                                np_value(x, axis=axis, keepdims=keepdims))
  weights = np.random.default_rng(1).normal(size=np_value(x, axis=axis).shape).astype(np.float32)
  grad = jax.grad(lambda v: jnp.sum(jnp.squeeze(fn(v, axis=axis, keepdims=True), axis) * weights))(jnp.asarray(x))
  want = np.zeros_like(x)
  first = np.expand_dims(np_index(x, axis=axis), axis)  # the first extremum along the axis
  np.put_along_axis(want, first, np.expand_dims(weights, axis), axis=axis)
  np.testing.assert_array_equal(grad, want)


def test_infinite_fill_rows_keep_a_finite_gradient():
  """A row masked entirely with −inf (a caption with no valid token) has max −inf; its gradient is 0, not NaN."""
  x = jnp.asarray([[-np.inf, -np.inf, -np.inf], [1.0, 3.0, 2.0]], jnp.float32)
  grad = jax.grad(lambda v: jnp.sum(jnp.where(jnp.isfinite(max_along(v, 1)), max_along(v, 1), 0.0)))(x)
  np.testing.assert_array_equal(grad, [[0, 0, 0], [0, 1, 0]])

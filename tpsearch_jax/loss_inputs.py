"""Input handling shared by the loss modules (``losses``, ``ranking_losses``): float32 casts, shape checks and the
row mask ``valid`` bool [B] | None of a padded batch (see ``losses`` for what the mask means)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def as_f32(*xs) -> tuple[jax.Array, ...]:
  """Each input as a float32 array (f32/bf16/numpy in, same shapes out)."""
  return tuple(jnp.asarray(x).astype(jnp.float32) for x in xs)


def check_pair(name: str, image_feats, text_feats, pids) -> None:
  """Raises ValueError naming ``name`` unless image_feats, text_feats are both [B, D] and pids is [B]."""
  if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
    raise ValueError(f"{name}: image_feats {image_feats.shape} and text_feats {text_feats.shape} must both be [B, D]")
  if pids.shape != (image_feats.shape[0],):
    raise ValueError(f"{name}: pids {pids.shape} must be [B] with B = {image_feats.shape[0]}")


def check_valid(name: str, valid, b: int) -> jax.Array | None:
  """valid bool [B] | None → bool [B] | None; a wrong shape raises ValueError naming ``name``."""
  if valid is None:
    return None
  valid = jnp.asarray(valid).astype(bool)
  if valid.shape != (b,):
    raise ValueError(f"{name}: valid {valid.shape} must be [B] = ({b},)")
  return valid


def pad_rows(x: jax.Array, valid: jax.Array | None, fill: float = 1.0) -> jax.Array:
  """x [B, ...] with the rows where ``valid`` is False replaced by ``fill``: a padding row then cannot produce a NaN
  (e.g. a zero feature under x/‖x‖) that would leak into the valid rows' gradients, and its gradient is exactly 0."""
  if valid is None:
    return x
  return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.asarray(fill, x.dtype))

"""Resampling of the vision position table to another patch grid (done once, when weights are imported)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def resize_posemb(table: np.ndarray, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> np.ndarray:
  """[1 + sh*sw, D] → [1 + dh*dw, D] float32: CLS row kept, the row-major grid resized bilinearly.

  Matches PyTorch ``F.interpolate(mode="bilinear", align_corners=False)`` without antialiasing (half-pixel centres,
  edge clamping), which is how the TBPS references adapt the 14×14 ViT-B/16 grid to 24×8.
  """
  table = np.asarray(table, np.float32)
  sh, sw = src_grid
  if table.ndim != 2 or table.shape[0] != 1 + sh * sw:
    raise ValueError(f"position table of shape {table.shape} does not hold CLS + a {sh}x{sw} grid")
  if tuple(src_grid) == tuple(dst_grid):
    return table
  dim = table.shape[1]
  grid = jnp.asarray(table[1:].reshape(sh, sw, dim))
  # antialias=False: jax's default low-pass filter changes the values when shrinking (14 -> 8 columns).
  resized = jax.image.resize(grid, (dst_grid[0], dst_grid[1], dim), method="bilinear", antialias=False,
                             precision=jax.lax.Precision.HIGHEST)
  resized = np.asarray(resized, np.float32).reshape(dst_grid[0] * dst_grid[1], dim)
  return np.concatenate([table[:1], resized], axis=0)

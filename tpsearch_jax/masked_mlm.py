"""The MLM term with the vocabulary projection only at the labelled positions — exact, with static shapes.

Only the ~15 % masked positions of a caption carry a label, yet a full head projects every position onto the
49,408-word vocabulary ([B·L, V] logits: 2 GB of float32 at batch 128 × 77). ``mlm_terms(..., head="masked")`` splits
the batch into groups of ``group_rows`` captions, gathers up to C = ⌈capacity · group_rows · L⌉ labelled positions per
group (a static shape), and projects only those: [B/g, C, V] logits. Should any group hold more than C labelled
positions, a ``lax.cond`` runs the full head instead, so the result never depends on the capacity: the loss and its
gradients equal the full head's to float tolerance on every batch (tests/test_masked_mlm.py). The sum over labelled
positions concentrates well within the capacity (15 % selection: mean 0.15·g·L_eligible, far below the default 0.25·g·L),
so the fallback is rare; only the branch taken runs. The fallback is rematerialised (``jax.checkpoint``): a
differentiated ``lax.cond`` returns the residuals of both branches, so the masked branch would otherwise write zeros
for the full branch's [B·L, V] residuals on every step.

Groups keep the rows of a caption together, so a batch sharded over devices stays sharded (g divides the batch).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from tpsearch_jax import losses

HEADS = ("masked", "full")


def first_argmax(logits: jax.Array) -> jax.Array:
  """logits [..., V] → int32 [...]: ``jnp.argmax`` (the first index of the maximum) for NaN-free logits, as a max
  and a min reduction; XLA:CPU's (value, index) reduction of argmax over 49,408 words cost ≈ 5 % more of the demo's
  full-head step (benchmarks/RESULTS.md, profile)."""
  top = jnp.max(logits, axis=-1, keepdims=True)
  index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(logits == top, index, logits.shape[-1]), axis=-1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 accuracy over the labelled positions: logits [..., V], labels int [...] (0 = ignore) → f32 []."""
  valid = (labels != 0).astype(jnp.float32)
  hit = (first_argmax(logits) == labels).astype(jnp.float32)
  return jnp.sum(hit * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _terms(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = logits.astype(jnp.float32)
  return losses.mlm_loss(logits, labels), accuracy(logits, labels)


def _flat_terms(hidden: jax.Array, labels: jax.Array, head_fn) -> tuple[jax.Array, jax.Array]:
  """hidden [..., W], labels [...] → the terms of ``head_fn`` on the [N, W] rows.

  2-D rows: XLA:CPU then computes the weight gradient as one dot; from [B, L, W] rows it copied the logits' gradient
  to a transposed [V, N] layout first, and the demo's full-head step took 1.4× the CPU time."""
  return _terms(head_fn(hidden.reshape(-1, hidden.shape[-1])), labels.reshape(-1))


def group_size(batch: int, group_rows: int) -> int:
  """Largest divisor of ``batch`` that is ≤ ``group_rows`` (≥ 1)."""
  return max(d for d in range(1, max(min(group_rows, batch), 1) + 1) if batch % d == 0)


def capacity(rows: int, length: int, fraction: float) -> int:
  """Labelled positions gathered per group of ``rows`` captions of ``length`` tokens."""
  return max(1, min(rows * length, math.ceil(fraction * rows * length)))


def select_labelled(hidden: jax.Array, labels: jax.Array, group_rows: int, fraction: float):
  """hidden [B, L, W], labels int [B, L] → (rows [G, C, W], labels [G, C] (0 = empty slot), fits bool []).

  G = B / g groups of g = ``group_size(B, group_rows)`` captions; the labelled positions of each group in order,
  padded with label 0; ``fits`` is False when a group has more than C labelled positions (then rows are truncated).
  """
  b, length, width = hidden.shape
  g = group_size(b, group_rows)
  cap = capacity(g, length, fraction)
  lab = labels.reshape(b // g, g * length)
  hid = hidden.reshape(b // g, g * length, width)
  on = lab != 0
  counts = jnp.sum(on, axis=1)
  idx = jax.vmap(lambda m: jnp.nonzero(m, size=cap, fill_value=0)[0])(on)  # [G, C]
  rows = jnp.take_along_axis(hid, idx[..., None], axis=1)
  picked = jnp.where(jnp.arange(cap)[None] < counts[:, None], jnp.take_along_axis(lab, idx, axis=1), 0)
  return rows, picked, jnp.all(counts <= cap)


def mlm_terms(hidden: jax.Array, labels: jax.Array, head_fn: Callable[[jax.Array], jax.Array], *,
              head: str = "masked", fraction: float = 0.25, group_rows: int = 8) -> tuple[jax.Array, jax.Array]:
  """Cross-former output hidden [B, L, W], labels int [B, L] (0 = ignore), head_fn([..., W] → [..., V] logits)
  → (MLM loss f32 [], accuracy f32 []); ``head="full"`` projects every position, "masked" only the labelled ones."""
  if head == "full":
    return _flat_terms(hidden, labels, head_fn)
  if head != "masked":
    raise ValueError(f"config.loss.mlm_head must be one of {HEADS}, got {head!r}")
  rows, picked, fits = select_labelled(hidden, labels, group_rows, fraction)
  full = jax.checkpoint(lambda h: _flat_terms(h, labels, head_fn))
  return jax.lax.cond(fits, lambda: _flat_terms(rows, picked, head_fn), lambda: full(hidden))

"""Training objectives of IRRA, FMFA and the part-level correspondence model, as pure jax.numpy functions.

Every function accepts float32 or bfloat16 inputs, computes in float32 and returns a float32 scalar; all are
jit-able, stateless, and take randomness only through an explicit PRNG key. Notation: B batch, D feature dim,
y person ids, x̂ = x/‖x‖, s logit scale (50 = 1/0.02).

Row mask: every batch-level loss takes ``valid`` bool [B] | None (the padded short last batch of
``config.data.drop_last=False``). With a mask the loss equals the same loss on the sub-batch of the valid rows
(order kept): padding rows are replaced by a constant before any arithmetic (so their features get exactly zero
gradient, whatever they hold), are neither anchors, positives nor negatives (their logits are −inf, their pairs are
never candidates), and are left out of every normaliser, mean and in-batch count. The random negative mining draws
by rank among the valid rows, so a padded batch picks the same negatives as its unpadded sub-batch.

| function | reproduces |
|---|---|
| sdm_loss | IRRA similarity distribution matching (KL to the identity distribution, both directions summed) |
| asdm_loss | FMFA adaptive SDM: released code (cosine gap, α = 0.1) or paper Eq. 2 (probability gap) |
| id_loss | IRRA/FMFA identity classification loss (shared classifier, mean of the image and text CEs) |
| mlm_loss | IRRA implicit relation reasoning (masked-token CE over labelled positions) |
| itc_loss | CLIP InfoNCE (identity-blind) |
| efa_loss | FMFA explicit fine-grained alignment: released-code arithmetic (default) or the paper's |
| triplet_ranking_loss | SSAN/LGUR/PLOT ranking loss with random semi-hard negatives |
| cmr_loss | commonality-based margin ranking loss (per-part triplets with per-anchor margins) |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def _f32(*xs):
  return tuple(jnp.asarray(x).astype(_F32) for x in xs)


def _unit(x: jax.Array) -> jax.Array:
  """x/‖x‖ over the last axis with no epsilon (IRRA/FMFA): a zero vector gives NaN, as in the reference."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _check_pair(name: str, image_feats, text_feats, pids) -> None:
  if image_feats.ndim != 2 or image_feats.shape != text_feats.shape:
    raise ValueError(f"{name}: image_feats {image_feats.shape} and text_feats {text_feats.shape} must both be [B, D]")
  if pids.shape != (image_feats.shape[0],):
    raise ValueError(f"{name}: pids {pids.shape} must be [B] with B = {image_feats.shape[0]}")


def _check_valid(name: str, valid, b: int) -> jax.Array | None:
  """valid bool [B] | None → bool [B] | None; a wrong shape raises ValueError naming ``name``."""
  if valid is None:
    return None
  valid = jnp.asarray(valid).astype(bool)
  if valid.shape != (b,):
    raise ValueError(f"{name}: valid {valid.shape} must be [B] = ({b},)")
  return valid


def _pad_rows(x: jax.Array, valid: jax.Array | None, fill: float = 1.0) -> jax.Array:
  """x [B, ...] with the rows where ``valid`` is False replaced by ``fill``: a padding row then cannot produce a NaN
  (e.g. a zero feature under x/‖x‖) that would leak into the valid rows' gradients, and its gradient is exactly 0."""
  if valid is None:
    return x
  return jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.asarray(fill, x.dtype))


def _pair_mask(valid: jax.Array | None) -> jax.Array | None:
  """bool [B, B]: both rows valid, or the diagonal (a padding row keeps one finite entry, so its softmax/LSE, masked
  out later, stays finite)."""
  if valid is None:
    return None
  return (valid[:, None] & valid[None, :]) | jnp.eye(valid.shape[0], dtype=bool)


def _masked_mean(z: jax.Array, valid: jax.Array | None) -> jax.Array:
  """mean of z [B] over the valid rows (all rows for None); 0 when no row is valid."""
  if valid is None:
    return jnp.mean(z)
  return jnp.sum(jnp.where(valid, z, 0.0)) / jnp.maximum(jnp.sum(valid.astype(_F32)), 1.0)


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-row CE, logits [..., K] float32, labels [...] int -> [...]."""
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return lse - picked


# ---------------------------------------------------------------------------------------------------------------
# Distribution matching family (SDM, A-SDM, ITC, ID, MLM)


def _sdm_rows(image_feats, text_feats, pids, logit_scale, epsilon, valid):
  """Row KL terms. Returns (r_i2t [B], r_t2i [B], cos c [B,B] (c_ij = t̂_i·v̂_j), same-id matrix Y [B,B] f32,
  pair mask K [B,B] bool | None). With ``valid``: Y and the softmax run over the valid columns only (K)."""
  v, t = _f32(image_feats, text_feats)
  v, t = _pad_rows(v, valid), _pad_rows(t, valid)
  c = _unit(t) @ _unit(v).T
  keep = _pair_mask(valid)
  same = pids[:, None] == pids[None, :]
  if keep is not None:
    same = same & keep
  same = same.astype(_F32)
  q = same / jnp.sum(same, axis=1, keepdims=True)
  log_q = jnp.log(q + epsilon)

  def row_kl(logits):
    if keep is None:
      log_p = jax.nn.log_softmax(logits, axis=1)
      return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=1)
    log_p = jnp.where(keep, jax.nn.log_softmax(jnp.where(keep, logits, -jnp.inf), axis=1), 0.0)
    return jnp.sum(jnp.where(keep, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=1)

  return row_kl(logit_scale * c.T), row_kl(logit_scale * c), c, same, keep


def sdm_loss(image_feats, text_feats, pids, logit_scale=50.0, epsilon=1e-8, valid=None):
  """IRRA similarity distribution matching. image_feats, text_feats [B, D] (f32/bf16), pids int [B], valid bool [B]
  or None -> f32 [].

  q_ij = 1[y_i=y_j]/Σ_k 1[y_i=y_k]; p^d_i = softmax(s·c^d_i·) with c^{t2i}_ij = t̂_i·v̂_j, c^{i2t} = (c^{t2i})ᵀ;
  L = mean_i KL(p^{i2t}_i ‖ q_i + ε) + mean_i KL(p^{t2i}_i ‖ q_i + ε) — the two directions are summed. q is constant.
  valid: i, j, k and the means run over the valid rows only (−inf logits, masked q), = the loss of that sub-batch.
  """
  pids = jnp.asarray(pids)
  _check_pair("sdm_loss", image_feats, text_feats, pids)
  valid = _check_valid("sdm_loss", valid, pids.shape[0])
  r_i2t, r_t2i, _, _, _ = _sdm_rows(image_feats, text_feats, pids, logit_scale, epsilon, valid)
  return _masked_mean(r_i2t, valid) + _masked_mean(r_t2i, valid)


def asdm_loss(image_feats, text_feats, pids, logit_scale=50.0, alpha=0.1, gap="cosine", epsilon=1e-8, valid=None):
  """FMFA adaptive SDM. image_feats, text_feats [B, D] (f32/bf16), pids int [B], valid bool [B] or None -> f32 [].

  L = mean_i w^{i2t}_i r^{i2t}_i + mean_i w^{t2i}_i r^{t2i}_i with r the SDM row KLs and w = 1 + α·gap.
  gap="cosine" (released code; use α = 0.1): gap_i = C_ik − C_iℓ with k = argmax_j C_ij, ℓ = the FIRST batch index
  sharing y_i (not necessarily i), 0 when k = ℓ; C is the raw cosine matrix of the direction. gap="prob" (paper
  Eq. 2; the paper uses α = 10, or 1 on RSTPReid): gap_i = max_k p_ik − p_ii with p the softmax at logit_scale.
  The weight is NOT detached in either mode (the released code lets the gradient flow through it).
  valid: as sdm_loss; k (argmax / max), ℓ (first valid same-id index) and the softmax run over the valid columns.
  """
  pids = jnp.asarray(pids)
  _check_pair("asdm_loss", image_feats, text_feats, pids)
  if gap not in ("cosine", "prob"):
    raise ValueError(f"asdm_loss: gap must be 'cosine' or 'prob', got {gap!r}")
  valid = _check_valid("asdm_loss", valid, pids.shape[0])
  r_i2t, r_t2i, c, same, keep = _sdm_rows(image_feats, text_feats, pids, logit_scale, epsilon, valid)
  rows = jnp.arange(c.shape[0])
  masked = (lambda z: z) if keep is None else (lambda z: jnp.where(keep, z, -jnp.inf))  # noqa: E731
  if gap == "cosine":
    first_same = jnp.argmax(same, axis=1)

    def gap_of(cos):
      top = jnp.argmax(masked(cos), axis=1)
      diff = cos[rows, top] - cos[rows, first_same]
      return jnp.where(top != first_same, diff, 0.0)
  else:

    def gap_of(cos):
      p = jax.nn.softmax(masked(logit_scale * cos), axis=1)
      return jnp.max(p, axis=1) - p[rows, rows]
  w_i2t = 1.0 + alpha * gap_of(c.T)
  w_t2i = 1.0 + alpha * gap_of(c)
  return _masked_mean(w_i2t * r_i2t, valid) + _masked_mean(w_t2i * r_t2i, valid)


def itc_loss(image_feats, text_feats, logit_scale, valid=None):
  """CLIP InfoNCE. image_feats, text_feats [B, D] (f32/bf16), valid bool [B] or None -> f32 [].

  L = ½[CE(s·V̂T̂ᵀ, arange B) + CE(s·T̂V̂ᵀ, arange B)]; identity-blind (same-id pairs are negatives).
  valid: padding columns get −inf logits and padding rows leave the means (= the loss of the valid sub-batch).
  """
  v, t = _f32(image_feats, text_feats)
  if v.ndim != 2 or v.shape != t.shape:
    raise ValueError(f"itc_loss: image_feats {v.shape} and text_feats {t.shape} must both be [B, D]")
  valid = _check_valid("itc_loss", valid, v.shape[0])
  v, t = _pad_rows(v, valid), _pad_rows(t, valid)
  logits = logit_scale * (_unit(v) @ _unit(t).T)
  keep = _pair_mask(valid)
  if keep is not None:
    logits = jnp.where(keep, logits, -jnp.inf)
  labels = jnp.arange(v.shape[0])
  return 0.5 * (_masked_mean(_cross_entropy(logits, labels), valid)
                + _masked_mean(_cross_entropy(logits.T, labels), valid))


def id_loss(image_logits, text_logits, pids, valid=None):
  """Identity loss. image_logits, text_logits [B, K] (f32/bf16), pids int [B] in [0, K), valid bool [B] or None
  -> f32 [].

  L = ½[mean_b CE(image_logits_b, y_b) + mean_b CE(text_logits_b, y_b)]; valid: the means over the valid rows.
  """
  li, lt = _f32(image_logits, text_logits)
  pids = jnp.asarray(pids)
  if li.ndim != 2 or li.shape != lt.shape or pids.shape != li.shape[:1]:
    raise ValueError(f"id_loss: logits {li.shape}/{lt.shape} must both be [B, K] and pids {pids.shape} [B]")
  valid = _check_valid("id_loss", valid, li.shape[0])
  li, lt = _pad_rows(li, valid, 0.0), _pad_rows(lt, valid, 0.0)
  if valid is not None:
    pids = jnp.where(valid, pids, 0)
  return 0.5 * (_masked_mean(_cross_entropy(li, pids), valid) + _masked_mean(_cross_entropy(lt, pids), valid))


def mlm_loss(logits, labels, ignore_index=0):
  """Masked-token CE. logits [N, V] or [B, L, V] (f32/bf16), labels int [N] or [B, L] -> f32 [].

  L = Σ_{n: y_n ≠ ignore} CE(logits_n, y_n) / #{n: y_n ≠ ignore}. With no labelled position the loss is 0 (PyTorch's
  ignore_index CE would return NaN there); the IRRA masking recipe always labels at least one position.
  """
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.shape[:-1] != labels.shape:
    raise ValueError(f"mlm_loss: logits {logits.shape} must be labels {labels.shape} + [V]")
  valid = labels != ignore_index
  safe_labels = jnp.where(valid, labels, 0)
  lse = jax.nn.logsumexp(logits.astype(_F32), axis=-1)
  picked = jnp.take_along_axis(logits, safe_labels[..., None].astype(jnp.int32), axis=-1)[..., 0].astype(_F32)
  ce = jnp.where(valid, lse - picked, 0.0)
  return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1).astype(_F32)


# ---------------------------------------------------------------------------------------------------------------
# EFA (FMFA explicit fine-grained alignment)


def _normalize_eps(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / max(‖x‖, 1e-12): the torch.nn.functional.normalize arithmetic used by the EFA code (finite gradient at 0)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), 1e-24))


EFA_ARITHMETIC = ("released", "paper")


def _sparse_aggregate(text_tokens, image_patches, text_mask, safe, inclusive):
  """Language-grouped vision embeddings. text [B,L,D], patches [B,N,D], mask [B,L] bool|None -> E [B,L,D].

  inclusive: keep Ā ≥ 1/N (paper) instead of Ā > 1/N (released code).
  """
  n = image_patches.shape[1]
  a = jnp.einsum("bld,bnd->bln", text_tokens, image_patches)
  lo = jnp.min(a, axis=-1, keepdims=True)
  span = jnp.max(a, axis=-1, keepdims=True) - lo
  if safe:
    span = span + 1e-6
  if text_mask is not None:
    span = jnp.where(text_mask[..., None], span, 1.0)  # padded rows are dropped later; keep them finite
  a = (a - lo) / span
  a = jnp.where(a >= 1.0 / n if inclusive else a > 1.0 / n, a, 0.0)
  total = jnp.sum(a, axis=-1, keepdims=True)
  if safe:
    total = jnp.maximum(total, 1e-12)
  if text_mask is not None:
    a = jnp.where(text_mask[..., None], a, 0.0)
    total = jnp.where(text_mask[..., None], total, 1.0)
  return jnp.einsum("bln,bnd->bld", a / total, image_patches)


def _hard_coding_similarity(x, e, x_mask, e_mask, temperature, row_block):
  """S_ij = log Σ_l exp(max_m ⟨x̂_il, ê_jm⟩ / t) (not normalised). x [B, Lx, D], e [B, Le, D] -> [B, B]."""
  x_hat, e_hat = _normalize_eps(x), _normalize_eps(e)
  if x_mask is None:
    x_mask = jnp.ones(x.shape[:2], bool)

  @jax.checkpoint
  def one_row(args):
    x_i, m_i = args
    sim = jnp.einsum("ld,jmd->jlm", x_i, e_hat)  # [B, Lx, Le]
    if e_mask is not None:
      sim = jnp.where(e_mask[:, None, :], sim, -jnp.inf)
    z = jnp.where(m_i[None, :], jnp.max(sim, axis=-1) / temperature, -jnp.inf)
    return jax.nn.logsumexp(z, axis=-1)

  return jax.lax.map(one_row, (x_hat, x_mask), batch_size=min(row_block, x.shape[0]))


def _efa_margin_term(s: jax.Array, margin: float, per_anchor: bool, valid: jax.Array | None) -> jax.Array:
  """G_ij = S_ij−S_ii+m, H_ij = S_ij−S_jj+m, zero diagonals, s [B, B] -> f32 [].

  per_anchor=False (released): mean_j LSE_i H_ij + mean_j LSE_i G_ij; True (paper): mean_j LSE_i H_ij + mean_i LSE_j
  G_ij, each LSE over the negatives of its own anchor. valid bool [B] | None: only valid i and j take part.
  """
  d = jnp.diag(s)
  eye = jnp.eye(s.shape[0], dtype=bool)
  g = jnp.where(eye, 0.0, s - d[:, None] + margin)
  h = jnp.where(eye, 0.0, s - d[None, :] + margin)
  if valid is None:
    mean = jnp.mean
  else:
    keep = (valid[:, None] & valid[None, :]) | eye  # the zero diagonal keeps every LSE (and its gradient) finite
    g, h = jnp.where(keep, g, -jnp.inf), jnp.where(keep, h, -jnp.inf)
    count = jnp.maximum(jnp.sum(valid.astype(_F32)), 1.0)
    mean = lambda z: jnp.sum(jnp.where(valid, z, 0.0)) / count  # noqa: E731
  return mean(jax.nn.logsumexp(h, axis=0)) + mean(jax.nn.logsumexp(g, axis=1 if per_anchor else 0))


def efa_loss(text_tokens, image_patches, margin_t2e=0.1, margin_i2e=0.9, lse_temperature=1.0, text_mask=None,
             safe=False, row_block=8, arithmetic="released", valid=None):
  """FMFA explicit fine-grained alignment. text_tokens [B, L, D], image_patches [B, N, D] (f32/bf16, CLS dropped),
  text_mask bool [B, L] or None, valid bool [B] or None -> f32 [].

  E_b = W_b V_b with W = row-normalised 1[Ā > 1/N]·Ā, Ā = per-row min-max of T_b V_bᵀ; S(X) = row-L2-normalised
  [log Σ_l exp(max_m ⟨x̂_il, ê_jm⟩ / t)]_ij; ℓ(S, m) = mean_j LSE_i(S_ij−S_jj+m) + mean_j LSE_i(S_ij−S_ii+m) with the
  diagonals set to 0 inside the LSEs; L = ℓ(S(T), m_t2e) + ℓ(S(V), m_i2e).

  ``arithmetic="released"`` (default) keeps the FMFA code's quirks on purpose: min-max without epsilon (a constant
  row gives NaN; pass safe=True to add 1e-6 to the range and guard the empty-row sum), threshold strict ``>`` 1/N,
  the extra row L2-normalisation of S, both LSEs over the FIRST index (the G term mixes anchors), the zero diagonal
  kept inside the LSEs, nothing detached. Defaults are the HEAD values (margins 0.1/0.9, t = 1); the first release
  used t = 0.1 and margins 0.1/0.1. Token and S normalisations divide by max(‖x‖, 1e-12) like torch's F.normalize.

  ``arithmetic="paper"`` follows the paper's equations (docs/methods.md §2.6): threshold ``≥`` 1/N, no normalisation of
  S, and the standard per-anchor LSE: ℓ = mean_j LSE_i(S_ij−S_jj+m) + mean_i LSE_j(S_ij−S_ii+m). The zero diagonal
  stays inside both LSEs (the log(1 + Σ_{negatives}) form) in both variants. The paper's λ is ``lse_temperature``
  (1 in the paper); its margin-LSE temperature τ2 = 1 is implicit here.

  text_mask=None keeps every text position (SOT, EOT, padding), as the reference does. With a mask, padded text rows
  are left out of the aggregation (their E rows are excluded from the max over E tokens in both terms) and padded
  text tokens are left out of the LSE over X tokens when X = T. Each caption needs at least one valid position.
  valid=None: every sample counts; otherwise the loss equals the loss of the batch of the valid samples alone (for
  the padded rows of a short last batch, ``config.data.drop_last=False``): invalid rows and columns of S are left out
  of the row L2-norm, of every LSE and of the means.

  Cost: the hard-coding step needs B·B·L_x·L·D multiply-adds per term (B = 128, L = 77, N = 192, D = 512: ≈ 0.25
  TFLOP for the V term); it runs as a lax.map over blocks of ``row_block`` anchors with rematerialisation, so live
  memory is O(row_block·B·L_x·L) instead of O(B²·L_x·L) in both the forward and the backward pass.
  """
  if arithmetic not in EFA_ARITHMETIC:
    raise ValueError(f"efa_loss: arithmetic must be one of {EFA_ARITHMETIC}, got {arithmetic!r}")
  paper = arithmetic == "paper"
  t, v = _f32(text_tokens, image_patches)
  if t.ndim != 3 or v.ndim != 3 or t.shape[0] != v.shape[0] or t.shape[2] != v.shape[2]:
    raise ValueError(f"efa_loss: text_tokens {t.shape} must be [B, L, D] and image_patches {v.shape} [B, N, D]")
  if text_mask is not None:
    text_mask = jnp.asarray(text_mask).astype(bool)
    if text_mask.shape != t.shape[:2]:
      raise ValueError(f"efa_loss: text_mask {text_mask.shape} must be [B, L] = {t.shape[:2]}")
  if valid is not None:
    valid = jnp.asarray(valid).astype(bool)
    if valid.shape != t.shape[:1]:
      raise ValueError(f"efa_loss: valid {valid.shape} must be [B] = {t.shape[:1]}")
  e = _sparse_aggregate(t, v, text_mask, safe, inclusive=paper)
  s_t = _hard_coding_similarity(t, e, text_mask, text_mask, lse_temperature, row_block)
  s_v = _hard_coding_similarity(v, e, None, text_mask, lse_temperature, row_block)
  if not paper:
    s_t, s_v = _row_l2(s_t, valid), _row_l2(s_v, valid)
  return _efa_margin_term(s_t, margin_t2e, paper, valid) + _efa_margin_term(s_v, margin_i2e, paper, valid)


def _row_l2(s: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Each row of s [B, B] divided by max(‖row‖, 1e-12), the norm over the valid columns only when ``valid``."""
  if valid is None:
    return _normalize_eps(s, axis=1)
  return _normalize_eps(jnp.where(valid[None, :], s, 0.0), axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Ranking losses with semi-hard negative mining (SSAN -> LGUR -> PLOT; commonality margins)


def _cosine_eps(a: jax.Array, b: jax.Array) -> jax.Array:
  """cos with +1e-8 on the norms (SSAN/PLOT). a [B, D], b [B, D] -> [B, B]."""
  a = a / (jnp.linalg.norm(a, axis=-1, keepdims=True) + 1e-8)
  b = b / (jnp.linalg.norm(b, axis=-1, keepdims=True) + 1e-8)
  return a @ b.T


def mine_semi_hard_negatives(similarity, pids, key, margin=0.2, valid=None):
  """Random semi-hard negative per anchor row. similarity [B, B] (row a = anchor a), pids int [B], key, valid bool
  [B] or None -> (negative index int32 [B], found bool [B]).

  Candidates of anchor a: n with y_n ≠ y_a and 0 < S_an − S_aa + m < m; one is drawn uniformly (argmax of uniform
  noise over the candidates, noise U = jax.random.uniform(key, [B, B])). found[a] is False when a has no candidate
  (the index is then meaningless). Works on stop-gradient values.

  valid: only valid anchors find negatives and only valid rows are candidates; the noise of the pair (a, n) is
  U'[r_a·N + r_n] with U' = jax.random.uniform(key, [B²]), r the rank of a row among the valid rows and N their
  number. With every row valid that is U itself; with padding rows anywhere it is the noise the unmasked call on the
  N-row sub-batch uses (JAX's partitionable threefry, the default: element [i, j] of a uniform of shape [N, N] is
  element i·N + j of one of shape [B²]), so the padded batch draws the sub-batch's negatives sample for sample.
  """
  s = jax.lax.stop_gradient(jnp.asarray(similarity).astype(_F32))
  pids = jnp.asarray(pids)
  b = s.shape[0]
  valid = _check_valid("mine_semi_hard_negatives", valid, b)
  h = s - jnp.diag(s)[:, None] + margin
  cand = (pids[:, None] != pids[None, :]) & (h > 0) & (h < margin)
  if valid is None:
    noise = jax.random.uniform(key, s.shape)
  else:
    cand = cand & valid[:, None] & valid[None, :]
    rank = jnp.cumsum(valid.astype(jnp.int32)) - 1
    count = jnp.sum(valid.astype(jnp.int32))
    flat = jnp.clip(rank[:, None] * count + rank[None, :], 0, b * b - 1)
    noise = jax.random.uniform(key, (b * b,))[flat]
  neg = jnp.argmax(jnp.where(cand, noise, -1.0), axis=1).astype(jnp.int32)
  return neg, jnp.any(cand, axis=1)


def _directional_ranking(similarity, pids, key, margin, hinge_margins, valid):
  """Σ_a [m'_a − S_aa + S_{a,n*_a}]_+ over anchors with a semi-hard negative, or the single fallback triplet.
  valid bool [B] | None: anchors, negatives and the fallback (last valid anchor, lowest-index valid negative) are
  valid rows."""
  b = similarity.shape[0]
  neg, found = mine_semi_hard_negatives(similarity, pids, key, margin, valid=valid)
  rows = jnp.arange(b)
  pos_s = jnp.diag(similarity)
  hinge = jax.nn.relu(hinge_margins - pos_s + similarity[rows, neg])
  mined = jnp.sum(jnp.where(found, hinge, 0.0))
  if valid is None:
    last = b - 1
    other = pids != pids[last]
  else:
    last = b - 1 - jnp.argmax(valid[::-1])  # the last valid anchor
    other = (pids != pids[last]) & valid
  fb_neg = jnp.argmax(other)  # lowest-index (valid) negative of the last anchor
  fb = jax.nn.relu(hinge_margins[last] - pos_s[last] + similarity[last, fb_neg])
  use_fb = jnp.logical_not(jnp.any(found)) & jnp.any(other)
  return mined + jnp.where(use_fb, fb, 0.0)


def _margins(hinge, b, margin, name):
  if hinge is None:
    return jnp.full((b,), margin, _F32)
  hinge = jnp.asarray(hinge).astype(_F32)
  if hinge.shape != (b,):
    raise ValueError(f"{name}: hinge margins {hinge.shape} must be [B] = ({b},)")
  return hinge


def triplet_ranking_loss(image_feats, text_feats, pids, key, margin=0.2, hinge_margins=None, valid=None):
  """Bidirectional ranking loss with random semi-hard negatives. image_feats, text_feats [B, D] (f32/bf16), pids int
  [B], key PRNG key, hinge_margins None or (image-anchor [B], text-anchor [B]), valid bool [B] or None -> f32 [].

  S_ab = cos(v_a, t_b) (norms +1e-8); per direction (S for image anchors, Sᵀ for text anchors) each anchor a takes a
  random semi-hard negative n*_a (mined with ``margin``; positive = its own pair a) and
  L = Σ_a [m'_a − S_aa + S_{a,n*_a}]_+ summed over both directions (not averaged), m'_a = hinge margin (default m).
  Anchors without a semi-hard negative are skipped; if no anchor of a direction has one, that direction contributes
  the single fallback triplet (last anchor, its lowest-index negative); a single-identity batch gives 0.
  Randomness: image anchors mine with jax.random.split(key)[0], text anchors with [1] (mine_semi_hard_negatives).
  valid: anchors, positives, negatives and the fallback triplet come from the valid rows only; the draws depend on
  the valid rows' order only, so a padded batch gives the loss of its valid sub-batch with the same key, sample for
  sample (mine_semi_hard_negatives).
  """
  v, t = _f32(image_feats, text_feats)
  pids = jnp.asarray(pids)
  _check_pair("triplet_ranking_loss", v, t, pids)
  b = v.shape[0]
  valid = _check_valid("triplet_ranking_loss", valid, b)
  h_img, h_txt = (None, None) if hinge_margins is None else hinge_margins
  h_img = _pad_rows(_margins(h_img, b, margin, "triplet_ranking_loss"), valid, 0.0)
  h_txt = _pad_rows(_margins(h_txt, b, margin, "triplet_ranking_loss"), valid, 0.0)
  k_img, k_txt = jax.random.split(key)
  s = _cosine_eps(_pad_rows(v, valid), _pad_rows(t, valid))
  return (_directional_ranking(s, pids, k_img, margin, h_img, valid)
          + _directional_ranking(s.T, pids, k_txt, margin, h_txt, valid))


def _commonality_scores(parts, logits, pids, commonality, tau, name, valid):
  """Per-anchor score [B, P] (stop-gradient): classifier probability of y_a, or 1 − frequency of similar others
  (the others: valid rows only when ``valid``)."""
  b, p = parts.shape[:2]
  if commonality == "prob":
    if logits is None:
      raise ValueError(f"{name}: commonality='prob' needs image_part_logits and text_part_logits [B, P, K]")
    logits = jnp.asarray(logits).astype(_F32)
    if logits.shape[:2] != (b, p):
      raise ValueError(f"{name}: part logits {logits.shape} must be [B, P, K] with B, P = {b}, {p}")
    prob = jax.nn.softmax(_pad_rows(logits, valid, 0.0), axis=-1)
    score = jnp.take_along_axis(prob, jnp.broadcast_to(pids[:, None, None], (b, p, 1)).astype(jnp.int32), -1)[..., 0]
  elif commonality == "freq":
    cos = jax.vmap(lambda f: _cosine_eps(f, f), in_axes=1, out_axes=0)(parts)  # [P, B, B]
    other = pids[:, None] != pids[None, :]
    other = (other if valid is None else other & valid[None, :]).astype(_F32)
    count = jnp.sum(other, axis=1)
    similar = jnp.sum((cos > tau) * other[None], axis=2) / jnp.maximum(count, 1.0)[None]
    score = (1.0 - similar).T
  else:
    raise ValueError(f"{name}: commonality must be 'prob' or 'freq', got {commonality!r}")
  return jax.lax.stop_gradient(score)


def cmr_loss(image_parts, text_parts, pids, key, margin=0.2, floor=0.05, commonality="prob", image_part_logits=None,
             text_part_logits=None, tau=0.5, valid=None):
  """Commonality-based margin ranking loss. image_parts, text_parts [B, P, D] (f32/bf16), pids int [B], key;
  part logits [B, P, K] for commonality="prob"; valid bool [B] or None -> f32 [].

  For each part i: the triplet procedure of triplet_ranking_loss on S^(i)_ab = cos(f_v^{a,i}, f_t^{b,i}), mining with
  the base margin m, hinge margin m'_{a,i} = max(m·score_{a,i}, floor); score from the image part for image anchors
  and the text part for text anchors; summed over anchors, directions and parts. score (stop-gradient):
  "prob" = softmax(part logits)[y_a]; "freq" = 1 − fraction of other-id samples whose same-part intra-modal cosine
  exceeds tau. The commonality formula is not published; both candidates are inferences. pids must be classifier
  indices in [0, K) for "prob". Randomness: part i uses jax.random.split(key, P)[i], split again into image/text keys
  as in triplet_ranking_loss. valid: the triplets of every part as in triplet_ranking_loss (same draws as the valid
  sub-batch), and the "freq" frequency counts valid others only.
  """
  vp, tp = _f32(image_parts, text_parts)
  pids = jnp.asarray(pids)
  if vp.ndim != 3 or vp.shape != tp.shape:
    raise ValueError(f"cmr_loss: image_parts {vp.shape} and text_parts {tp.shape} must both be [B, P, D]")
  if pids.shape != vp.shape[:1]:
    raise ValueError(f"cmr_loss: pids {pids.shape} must be [B] with B = {vp.shape[0]}")
  valid = _check_valid("cmr_loss", valid, vp.shape[0])
  vp, tp = _pad_rows(vp, valid), _pad_rows(tp, valid)
  sc_img = _commonality_scores(vp, image_part_logits, pids, commonality, tau, "cmr_loss", valid)
  sc_txt = _commonality_scores(tp, text_part_logits, pids, commonality, tau, "cmr_loss", valid)
  m_img = _pad_rows(jnp.maximum(margin * sc_img, floor), valid, 0.0)
  m_txt = _pad_rows(jnp.maximum(margin * sc_txt, floor), valid, 0.0)
  keys = jax.random.split(key, vp.shape[1])

  def one_part(v, t, k, mi, mt):
    k_img, k_txt = jax.random.split(k)
    s = _cosine_eps(v, t)
    return (_directional_ranking(s, pids, k_img, margin, mi, valid)
            + _directional_ranking(s.T, pids, k_txt, margin, mt, valid))

  per_part = jax.vmap(one_part, in_axes=(1, 1, 0, 1, 1))(vp, tp, keys, m_img, m_txt)
  return jnp.sum(per_part)

"""Training objectives of IRRA and FMFA (distribution matching, identity, masked tokens, fine-grained alignment), as
pure jax.numpy functions; the ranking losses of the part model are in ``ranking_losses``.

Every function accepts float32 or bfloat16 inputs, computes in float32 and returns a float32 scalar; all are
jit-able, stateless, and take randomness only through an explicit PRNG key. Notation: B batch, D feature dim,
y person ids, x̂ = x/‖x‖, s logit scale (50 = 1/0.02).

Row mask: every batch-level loss takes ``valid`` bool [B] | None (the padded short last batch of
``config.data.drop_last=False``). With a mask the loss equals the same loss on the sub-batch of the valid rows
(order kept): padding rows are replaced by a constant before any arithmetic (so their features get exactly zero
gradient, whatever they hold), are neither anchors, positives nor negatives (their logits are −inf, their pairs are
never candidates), and are left out of every normaliser, mean and in-batch count. The random negative mining of
``ranking_losses`` draws by rank among the valid rows, so a padded batch picks the same negatives as its unpadded
sub-batch.

| function | reproduces |
|---|---|
| sdm_loss | IRRA similarity distribution matching (KL to the identity distribution, both directions summed) |
| asdm_loss | FMFA adaptive SDM: released code (cosine gap, α = 0.1) or paper Eq. 2 (probability gap) |
| id_loss | IRRA/FMFA identity classification loss (shared classifier, mean of the image and text CEs) |
| mlm_loss | IRRA implicit relation reasoning (masked-token CE over labelled positions) |
| itc_loss | CLIP InfoNCE (identity-blind) |
| efa_loss | FMFA explicit fine-grained alignment: released-code arithmetic (default) or the paper's |
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tpsearch_jax.loss_inputs import as_f32, check_pair, check_valid, pad_rows
from tpsearch_jax.reductions import max_along, min_along

_F32 = jnp.float32


def _unit(x: jax.Array) -> jax.Array:
  """x/‖x‖ over the last axis with no epsilon (IRRA/FMFA): a zero vector gives NaN, as in the reference."""
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


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
  v, t = as_f32(image_feats, text_feats)
  v, t = pad_rows(v, valid), pad_rows(t, valid)
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
  check_pair("sdm_loss", image_feats, text_feats, pids)
  valid = check_valid("sdm_loss", valid, pids.shape[0])
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
  check_pair("asdm_loss", image_feats, text_feats, pids)
  if gap not in ("cosine", "prob"):
    raise ValueError(f"asdm_loss: gap must be 'cosine' or 'prob', got {gap!r}")
  valid = check_valid("asdm_loss", valid, pids.shape[0])
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
      return max_along(p, axis=1) - p[rows, rows]
  w_i2t = 1.0 + alpha * gap_of(c.T)
  w_t2i = 1.0 + alpha * gap_of(c)
  return _masked_mean(w_i2t * r_i2t, valid) + _masked_mean(w_t2i * r_t2i, valid)


def itc_loss(image_feats, text_feats, logit_scale, valid=None):
  """CLIP InfoNCE. image_feats, text_feats [B, D] (f32/bf16), valid bool [B] or None -> f32 [].

  L = ½[CE(s·V̂T̂ᵀ, arange B) + CE(s·T̂V̂ᵀ, arange B)]; identity-blind (same-id pairs are negatives).
  valid: padding columns get −inf logits and padding rows leave the means (= the loss of the valid sub-batch).
  """
  v, t = as_f32(image_feats, text_feats)
  if v.ndim != 2 or v.shape != t.shape:
    raise ValueError(f"itc_loss: image_feats {v.shape} and text_feats {t.shape} must both be [B, D]")
  valid = check_valid("itc_loss", valid, v.shape[0])
  v, t = pad_rows(v, valid), pad_rows(t, valid)
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
  li, lt = as_f32(image_logits, text_logits)
  pids = jnp.asarray(pids)
  if li.ndim != 2 or li.shape != lt.shape or pids.shape != li.shape[:1]:
    raise ValueError(f"id_loss: logits {li.shape}/{lt.shape} must both be [B, K] and pids {pids.shape} [B]")
  valid = check_valid("id_loss", valid, li.shape[0])
  li, lt = pad_rows(li, valid, 0.0), pad_rows(lt, valid, 0.0)
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
  lo = min_along(a, axis=-1, keepdims=True)
  span = max_along(a, axis=-1, keepdims=True) - lo
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
    # jnp.max, not reductions.max_along: this is EFA's hot loop (B²·Lx rows), where an argmax would add 7 % to the
    # FLOPs the benchmark counts (tests/test_flops.py).
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
  t, v = as_f32(text_tokens, image_patches)
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

"""The training objective of every method: model outputs + batch + ``LossOptions`` → weighted loss terms.

``compute_losses`` is the only place that wires embeddings to the functions of ``tpsearch_jax.losses`` and
``ranking_losses``; the model (``tpsearch_jax.models.retrieval``) only produces outputs. A term whose weight is 0 is
not computed, and the heads that only it needs are not built (``required_heads``), which the analytic FLOP count reads
as well.

Wiring:
  sdm / asdm / itc  global embeddings.
  id                shared classifier on every embedding piece of both modalities (global only without the part
                    model, or with ``id_pieces="global"``); the term is the mean over pieces of ½[CE(image) + CE(text)].
  mlm               cross-former on the re-encoded ``mlm_ids`` against all image tokens; labels 0 are ignored; the
                    vocabulary projection runs at the labelled positions only (``masked_mlm``, exact) unless
                    ``mlm_head="full"``.
  efa               all L text tokens of ``caption_ids`` vs the image patch tokens (CLS dropped).
  triplet           summed over the global embedding (when ``global_loss == "triplet"``) and each coarse embedding
                    (averaged over them with ``ranking_reduction="mean"``); mining ``ranking_mining``
                    (``ranking_losses``).
  cmr               the P part embeddings; the "prob" commonality gets the shared classifier's part logits.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from tpsearch_jax import losses, masked_mlm, ranking_losses

LOSS_NAMES = ("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr")
# Terms exact on a batch padded with a "valid" row mask (each equals its value on the valid rows alone): mlm (the
# padding rows' labels are zeroed), every other term through its ``valid=`` argument. Listed by name, not derived
# from LOSS_NAMES: compute_losses refuses a masked batch when an active term is missing here, so a new term cannot
# silently train on the padding rows (tests/test_loss_masks.py checks each listed term on a padded batch).
VALID_MASK_TERMS = ("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr")


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """Loss weights (0 = off) and hyper-parameters; field names match ``config.loss``. The one source of defaults."""

  sdm: float = 0.0
  asdm: float = 0.0
  itc: float = 0.0
  id: float = 0.0
  mlm: float = 0.0
  efa: float = 0.0
  triplet: float = 0.0
  cmr: float = 0.0
  logit_scale: float = 50.0
  asdm_alpha: float = 0.1
  asdm_gap: str = "cosine"
  efa_margin_t2e: float = 0.1
  efa_margin_i2e: float = 0.9
  efa_lse_temperature: float = 1.0
  efa_arithmetic: str = "released"  # "released" (FMFA code) | "paper" (the paper's equations); see losses.efa_loss
  efa_mask_padding: bool = False
  mlm_head: str = "masked"  # "masked": vocabulary logits only at the labelled positions (exact); "full": everywhere
  mlm_capacity: float = 0.25  # masked head: labelled positions gathered per group, as a fraction of its positions
  mlm_group_rows: int = 8  # masked head: captions per capacity group
  triplet_margin: float = 0.2
  cmr_margin: float = 0.2
  cmr_floor: float = 0.05
  cmr_commonality: str = "prob"
  cmr_tau: float = 0.5
  global_loss: str = "triplet"  # "sdm": the global embedding leaves the triplet term (trained by sdm/asdm/itc)
  # triplet and cmr (ranking_losses): "semi_hard" (lineage: one random semi-hard negative) | "batch_all" | "batch_hard"
  # (every positive of the identity); "sum" (lineage) over anchors, directions and pieces | "mean" over them
  ranking_mining: str = "semi_hard"
  ranking_reduction: str = "sum"
  id_pieces: str = "all"  # the ID term on "all" embedding pieces (lineage) | "global": the global embedding only

  @property
  def needs_classifier(self) -> bool:
    return self.id != 0 or (self.cmr != 0 and self.cmr_commonality == "prob")

  @property
  def active(self) -> tuple[str, ...]:
    """Names of the terms with a non-zero weight, in ``LOSS_NAMES`` order."""
    return tuple(n for n in LOSS_NAMES if getattr(self, n))


@dataclasses.dataclass(frozen=True)
class Heads:
  """Modules on top of the backbone that the active terms need (the model builds exactly these)."""

  classifier: bool = False
  mlm: bool = False  # cross-former + MLM head on the re-encoded masked caption


def required_heads(loss: LossOptions) -> Heads:
  """LossOptions → the heads the model must build."""
  return Heads(classifier=loss.needs_classifier, mlm=bool(loss.mlm))


def check_loss_options(loss: LossOptions, use_parts: bool) -> None:
  """Raises ValueError naming the config field of an inconsistent loss option."""
  weights = {n: getattr(loss, n) for n in LOSS_NAMES}
  if any(w < 0 for w in weights.values()):
    raise ValueError(f"config.loss weights must be >= 0, got {weights}")
  if not any(weights.values()):
    raise ValueError(f"config.loss: every loss weight is 0 ({weights})")
  if loss.efa_arithmetic not in losses.EFA_ARITHMETIC:
    raise ValueError(f"config.loss.efa_arithmetic must be one of {losses.EFA_ARITHMETIC}, got {loss.efa_arithmetic!r}")
  ranking_losses.check_ranking_options(loss.ranking_mining, loss.ranking_reduction)
  if loss.id_pieces not in ("all", "global"):
    raise ValueError(f"config.loss.id_pieces must be 'all' or 'global', got {loss.id_pieces!r}")
  if loss.global_loss not in ("triplet", "sdm"):
    raise ValueError(f"config.loss.global_loss must be 'triplet' or 'sdm', got {loss.global_loss!r}")
  if loss.cmr and not use_parts:
    raise ValueError("config.loss.cmr > 0 needs the part model (config.model.use_parts = True)")
  if loss.triplet and loss.global_loss == "sdm":
    if not use_parts:
      raise ValueError("config.loss.triplet > 0 with global_loss='sdm' and no part model leaves nothing to rank")
    if not (loss.sdm or loss.asdm or loss.itc):
      raise ValueError("config.loss.global_loss='sdm' needs config.loss.sdm, asdm or itc > 0 for the global embedding")


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  if mask is None:
    return jnp.mean(hit)
  mask = mask.astype(jnp.float32)
  return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _ranked_embeddings(img: Mapping, txt: Mapping, loss: LossOptions) -> tuple[jax.Array, jax.Array]:
  """The embeddings the triplet term ranks → (image [B, G, E], text [B, G, E]) float32."""
  ranked_v = [img["global"][:, None]] if loss.global_loss == "triplet" else []
  ranked_t = [txt["global"][:, None]] if loss.global_loss == "triplet" else []
  if "coarse" in img:
    ranked_v.append(img["coarse"])
    ranked_t.append(txt["coarse"])
  return _f32(jnp.concatenate(ranked_v, axis=1)), _f32(jnp.concatenate(ranked_t, axis=1))


def compute_losses(outputs: Mapping, batch: Mapping[str, jax.Array], loss: LossOptions, rng: jax.Array,
                   mlm_logits_fn: Callable[[jax.Array], jax.Array] | None = None
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Model outputs (``RetrievalModel.__call__``) + train batch → (Σ weight·term f32 [], {term or accuracy: f32 []}).

  rng: PRNG key for the negative mining of the triplet and CMR terms. mlm_logits_fn: the model's MLM head
  (cross-former output [..., W] → logits [..., V]), needed when the MLM term is on. A batch with a "valid" row mask
  bool [B] (the padded short last batch of ``config.data.drop_last=False``): every term and accuracy is computed on
  the valid rows alone (each loss's ``valid=``; the MLM labels of padding rows are zeroed), so the terms equal those
  of the unpadded batch (the triplet/CMR draws too, sample for sample) and the padding rows get zero gradient. A
  term missing from ``VALID_MASK_TERMS`` refuses such a batch.
  """
  valid = batch.get("valid")
  if valid is not None:
    unmasked = [n for n in loss.active if n not in VALID_MASK_TERMS]
    if unmasked:
      raise NotImplementedError(
          f"the batch carries a 'valid' mask (config.data.drop_last=False) but the term(s) {unmasked} do not honour it "
          f"(only {VALID_MASK_TERMS} do); train with config.data.drop_last=True")
    valid = jnp.asarray(valid).astype(bool)
  pids = batch["pids"]
  img, txt = outputs["image"], outputs["text"]
  gv, gt = _f32(img["global"]), _f32(txt["global"])
  terms = {}
  if loss.sdm:
    terms["sdm"] = losses.sdm_loss(gv, gt, pids, logit_scale=loss.logit_scale, valid=valid)
  if loss.asdm:
    terms["asdm"] = losses.asdm_loss(gv, gt, pids, logit_scale=loss.logit_scale, alpha=loss.asdm_alpha,
                                     gap=loss.asdm_gap, valid=valid)
  if loss.itc:
    terms["itc"] = losses.itc_loss(gv, gt, loss.logit_scale, valid=valid)

  part_logits = (None, None)
  if loss.needs_classifier:
    img_logits, txt_logits = _f32(outputs["image_logits"]), _f32(outputs["text_logits"])  # [B, M, K]
    if loss.id:
      id_img, id_txt = (img_logits[:, :1], txt_logits[:, :1]) if loss.id_pieces == "global" else (img_logits,
                                                                                                   txt_logits)
      b, m, k = id_img.shape
      terms["id"] = losses.id_loss(id_img.reshape(b * m, k), id_txt.reshape(b * m, k), jnp.repeat(pids, m),
                                   valid=None if valid is None else jnp.repeat(valid, m))
    terms["img_acc"] = _accuracy(img_logits[:, 0], pids, valid)
    terms["txt_acc"] = _accuracy(txt_logits[:, 0], pids, valid)
    if "part" in img:
      num_parts = img["part"].shape[1]
      part_logits = (img_logits[:, -num_parts:], txt_logits[:, -num_parts:])

  if loss.mlm:
    if mlm_logits_fn is None:
      raise ValueError("the MLM term needs mlm_logits_fn (the model's MLM head); see objectives.model_loss")
    mlm_labels = batch["mlm_labels"]
    if valid is not None:  # the pipeline already zeroes them; this keeps the term exact for any padding
      mlm_labels = jnp.where(valid[:, None], mlm_labels, 0)
    terms["mlm"], terms["mlm_acc"] = masked_mlm.mlm_terms(
        outputs["mlm_hidden"], mlm_labels, mlm_logits_fn, head=loss.mlm_head, fraction=loss.mlm_capacity,
        group_rows=loss.mlm_group_rows)

  if loss.efa:
    mask = (batch["caption_ids"] != 0) if loss.efa_mask_padding else None
    terms["efa"] = losses.efa_loss(_f32(txt["tokens"]), _f32(img["tokens"][:, 1:]), margin_t2e=loss.efa_margin_t2e,
                                   margin_i2e=loss.efa_margin_i2e, lse_temperature=loss.efa_lse_temperature,
                                   text_mask=mask, arithmetic=loss.efa_arithmetic, valid=valid)

  tri_key, cmr_key = jax.random.split(rng)
  if loss.triplet:
    ranked_v, ranked_t = _ranked_embeddings(img, txt, loss)
    keys = jax.random.split(tri_key, ranked_v.shape[1])
    per_embedding = jax.vmap(
        lambda v, t, k: ranking_losses.ranking_loss(v, t, pids, k, margin=loss.triplet_margin,
                                                 mining=loss.ranking_mining, reduction=loss.ranking_reduction,
                                                 valid=valid),
        in_axes=(1, 1, 0))(ranked_v, ranked_t, keys)
    terms["triplet"] = jnp.mean(per_embedding) if loss.ranking_reduction == "mean" else jnp.sum(per_embedding)
  if loss.cmr:
    terms["cmr"] = ranking_losses.cmr_ranking_loss(
        _f32(img["part"]), _f32(txt["part"]), pids, cmr_key, margin=loss.cmr_margin, floor=loss.cmr_floor,
        commonality=loss.cmr_commonality, image_part_logits=part_logits[0], text_part_logits=part_logits[1],
        tau=loss.cmr_tau, mining=loss.ranking_mining, reduction=loss.ranking_reduction, valid=valid)

  if "coarse" in img and img["coarse"].shape[1] > 1:  # whether the N_D coarse tokens stay distinct (logged only)
    terms["coarse_cos_img"] = _coarse_cosine(img["coarse"], valid)
    terms["coarse_cos_txt"] = _coarse_cosine(txt["coarse"], valid)

  total = sum(getattr(loss, name) * terms[name] for name in LOSS_NAMES if name in terms)
  return jnp.asarray(total, jnp.float32), terms


def _coarse_cosine(coarse: jax.Array, valid: jax.Array | None) -> jax.Array:
  """coarse [B, N_D, E] → f32 []: mean over (valid) rows and token pairs j < k of cos(c_j, c_k), no gradient."""
  c = jax.lax.stop_gradient(_f32(coarse))
  c = c / jnp.maximum(jnp.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
  n = c.shape[1]
  gram = jnp.einsum("bje,bke->bjk", c, c)
  per_row = (gram.sum(axis=(1, 2)) - jnp.trace(gram, axis1=1, axis2=2)) / (n * (n - 1))
  if valid is None:
    return jnp.mean(per_row)
  return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def model_loss(model, loss: LossOptions, params, batch: Mapping[str, jax.Array],
               rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``model.apply`` on ``batch`` then ``compute_losses`` → (total f32 [], terms); the function the train step
  differentiates."""
  outputs = model.apply({"params": params}, batch, train=True)
  return compute_losses(outputs, batch, loss, rng, mlm_logits_fn=mlm_head_fn(model, params))


def mlm_head_fn(model, params) -> Callable[[jax.Array], jax.Array]:
  """The model's MLM head as a function: cross-former output [..., W] → f32 logits [..., V]."""
  return lambda hidden: model.apply({"params": params}, hidden, method="mlm_logits")

"""The retrieval model: the CLIP backbone plus the heads that the method's options switch on, and its loss terms.

Embeddings per modality: "global" [B, E] (CLS / EOT token, or max over patch tokens / valid text tokens), and with
the part model "coarse" [B, N_D, E] and "part" [B, P, E]. Losses are computed in float32 from these; a loss whose
weight is 0 is not computed at all. No dropout anywhere, so ``train`` does not change the result.

Loss wiring (weights in ``LossOptions``):
  sdm / asdm / itc  global embeddings.
  id                shared classifier on every embedding piece of both modalities (global only without the part
                    model); the term is the mean over pieces of ½[CE(image) + CE(text)].
  mlm               cross-former on the re-encoded ``mlm_ids`` against all image tokens; labels 0 are ignored.
  efa               all L text tokens of ``caption_ids`` vs the image patch tokens (CLS dropped).
  triplet           summed over the global embedding (when ``global_loss == "triplet"``) and each coarse embedding.
  cmr               the P part embeddings; the "prob" commonality gets the shared classifier's part logits.

Retrieval vector (``encode_images`` / ``encode_texts``): pieces [global, coarse_1..N_D, part_1..P], each L2-normalised
and scaled by √w (w = embed_weights.global_ / coarse / part per piece), concatenated and L2-normalised again, so
the dot product of two such vectors is Σ_k w_k·cos_k / Σ_k w_k — the weighted mean of per-piece cosines.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax import losses
from tpsearch_jax.models.clip import CLIP, CLIPConfig
from tpsearch_jax.models.cross_former import CrossFormer, MLMHead
from tpsearch_jax.models.part_decoder import PartModel, PartOptions, stripe_bounds

LOSS_NAMES = ("sdm", "asdm", "itc", "id", "mlm", "efa", "triplet", "cmr")


@dataclasses.dataclass(frozen=True)
class EmbedWeights:
  """Test-time weight of each global / coarse / part piece in the retrieval cosine."""

  global_: float = 1.0
  coarse: float = 1.0
  part: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """Heads on top of CLIP. global_pool: "token" (CLS / EOT) or "max" (patch tokens / valid text tokens)."""

  name: str = "clip"
  num_classes: int = 0
  global_pool: str = "token"
  use_parts: bool = False
  cross_layers: int = 4
  cross_heads: int = 8
  part: PartOptions = PartOptions()
  embed_weights: EmbedWeights = EmbedWeights()


@dataclasses.dataclass(frozen=True)
class LossOptions:
  """Loss weights (0 = off) and hyper-parameters; field names match ``config.loss``."""

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
  efa_mask_padding: bool = False
  triplet_margin: float = 0.2
  cmr_margin: float = 0.2
  cmr_floor: float = 0.05
  cmr_commonality: str = "prob"
  cmr_tau: float = 0.5
  global_loss: str = "triplet"  # "sdm": the global embedding leaves the triplet term (trained by sdm/asdm/itc)

  @property
  def needs_classifier(self) -> bool:
    return self.id != 0 or (self.cmr != 0 and self.cmr_commonality == "prob")


def check_options(clip: CLIPConfig, model: ModelOptions, loss: LossOptions) -> None:
  """Raises ValueError naming the config field of any inconsistent option."""
  weights = {n: getattr(loss, n) for n in LOSS_NAMES}
  if any(w < 0 for w in weights.values()):
    raise ValueError(f"config.loss weights must be >= 0, got {weights}")
  if not any(weights.values()):
    raise ValueError(f"config.loss: every loss weight is 0 ({weights})")
  if model.global_pool not in ("token", "max"):
    raise ValueError(f"config.model.global_pool must be 'token' or 'max', got {model.global_pool!r}")
  if loss.global_loss not in ("triplet", "sdm"):
    raise ValueError(f"config.loss.global_loss must be 'triplet' or 'sdm', got {loss.global_loss!r}")
  if loss.needs_classifier and model.num_classes < 1:
    raise ValueError(f"config.model.num_classes must be >= 1 for the ID classifier, got {model.num_classes}")
  if loss.cmr and not model.use_parts:
    raise ValueError("config.loss.cmr > 0 needs the part model (config.model.use_parts = True)")
  if loss.triplet and loss.global_loss == "sdm":
    if not model.use_parts:
      raise ValueError("config.loss.triplet > 0 with global_loss='sdm' and no part model leaves nothing to rank")
    if not (loss.sdm or loss.asdm or loss.itc):
      raise ValueError("config.loss.global_loss='sdm' needs config.loss.sdm, asdm or itc > 0 for the global embedding")
  if loss.mlm and clip.embed_dim % model.cross_heads:
    raise ValueError(f"embed_dim {clip.embed_dim} is not divisible by config.model.cross_heads {model.cross_heads}")
  if model.use_parts:
    stripe_bounds(clip.grid[0], model.part.num_parts)
    if clip.embed_dim % model.part.heads:
      raise ValueError(f"embed_dim {clip.embed_dim} is not divisible by config.model.part.heads {model.part.heads}")
  w = model.embed_weights
  used = (w.global_, w.coarse, w.part) if model.use_parts else (w.global_,)
  if min(used) < 0 or not sum(used) > 0:
    raise ValueError(f"config.model.embed_weights must be >= 0 with a positive sum, got {w}")


def _f32(x: jax.Array) -> jax.Array:
  return x.astype(jnp.float32)


def _l2_normalize(x: jax.Array) -> jax.Array:
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _masked_max(tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """Max over the valid positions: tokens [B, L, E], valid [B, L] → [B, E] (zeros for a row with none)."""
  x = jnp.max(jnp.where(valid[..., None], tokens, -jnp.inf), axis=1)
  return jnp.where(jnp.any(valid, axis=1)[:, None], x, 0)


def _accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  if mask is None:
    return jnp.mean(hit)
  mask = mask.astype(jnp.float32)
  return jnp.sum(hit * mask) / jnp.maximum(jnp.sum(mask), 1.0)


class RetrievalModel(nn.Module):
  """CLIP + optional classifier, cross-former/MLM head and part model. See the module docstring for the contract."""

  clip_config: CLIPConfig
  options: ModelOptions
  loss: LossOptions

  def setup(self):
    c, o, lo = self.clip_config, self.options, self.loss
    check_options(c, o, lo)
    self.clip = CLIP(c)
    if lo.needs_classifier:
      self.classifier = nn.Dense(o.num_classes, dtype=c.dtype, kernel_init=nn.initializers.normal(0.001))
    if lo.mlm:
      self.cross_former = CrossFormer(c.embed_dim, o.cross_layers, o.cross_heads, c.dtype, c.remat, c.attention_impl)
      self.mlm_head = MLMHead(c.embed_dim, c.vocab_size, o.cross_layers, c.dtype)
    if o.use_parts:
      self.part_model = PartModel(c.embed_dim, c.grid, o.part, c.dtype, c.remat, c.attention_impl)

  # ---------------------------------------------------------------- embeddings
  def image_embeddings(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, H, W, 3] → {"tokens": [B, 1+N, E], "global": [B, E], + "coarse" [B, N_D, E], "part" [B, P, E],
    "foreground" [B, N] with the part model} (compute dtype; foreground f32)."""
    tokens, cls = self.clip.encode_image(images)
    patches = tokens[:, 1:]
    out = {"tokens": tokens, "global": cls if self.options.global_pool == "token" else jnp.max(patches, axis=1)}
    if self.options.use_parts:
      out.update(self.part_model.encode_image(patches))
    return out

  def text_embeddings(self, ids: jax.Array) -> dict[str, jax.Array]:
    """ids int [B, L] (0 = padding) → {"tokens": [B, L, E], "global": [B, E], + "coarse", "part" with the part
    model}."""
    tokens, eot = self.clip.encode_text(ids)
    valid = ids != 0
    out = {"tokens": tokens, "global": eot if self.options.global_pool == "token" else _masked_max(tokens, valid)}
    if self.options.use_parts:
      out.update(self.part_model.encode_text(tokens, valid))
    return out

  def _pieces(self, emb: dict[str, jax.Array]) -> jax.Array:
    """[B, M, E] in the order global, coarse_1..N_D, part_1..P (M = 1 without the part model)."""
    pieces = [emb["global"][:, None]]
    if self.options.use_parts:
      pieces += [emb["coarse"], emb["part"]]
    return jnp.concatenate(pieces, axis=1)

  def _piece_weights(self) -> jax.Array:
    o, w = self.options, self.options.embed_weights
    if not o.use_parts:
      return jnp.ones((1,), jnp.float32)
    return jnp.asarray([w.global_] + [w.coarse] * o.part.num_queries + [w.part] * o.part.num_parts, jnp.float32)

  def _retrieval_vector(self, emb: dict[str, jax.Array]) -> jax.Array:
    pieces = _l2_normalize(_f32(self._pieces(emb))) * jnp.sqrt(self._piece_weights())[:, None]
    return _l2_normalize(pieces.reshape(pieces.shape[0], -1))

  def encode_images(self, images: jax.Array) -> jax.Array:
    """images float [B, H, W, 3] → L2-normalised float32 [B, M·E] retrieval vectors."""
    return self._retrieval_vector(self.image_embeddings(images))

  def encode_texts(self, ids: jax.Array) -> jax.Array:
    """caption ids int [B, L] → L2-normalised float32 [B, M·E] retrieval vectors."""
    return self._retrieval_vector(self.text_embeddings(ids))

  # ---------------------------------------------------------------- training objective
  def __call__(self, batch: dict[str, jax.Array], train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Train batch (see the batch contract) → (Σ weight·term f32 scalar, {term or accuracy name: f32 scalar})."""
    del train  # no dropout or other train-only behaviour
    lo, o = self.loss, self.options
    for key in ("images", "caption_ids", "pids") + (("mlm_ids", "mlm_labels") if lo.mlm else ()):
      if key not in batch:
        raise KeyError(f"train batch has no {key!r} (present: {sorted(batch)})")
    pids = batch["pids"]
    img = self.image_embeddings(batch["images"])
    txt = self.text_embeddings(batch["caption_ids"])
    gv, gt = _f32(img["global"]), _f32(txt["global"])
    terms = {}
    if lo.sdm:
      terms["sdm"] = losses.sdm_loss(gv, gt, pids, logit_scale=lo.logit_scale)
    if lo.asdm:
      terms["asdm"] = losses.asdm_loss(gv, gt, pids, logit_scale=lo.logit_scale, alpha=lo.asdm_alpha, gap=lo.asdm_gap)
    if lo.itc:
      terms["itc"] = losses.itc_loss(gv, gt, lo.logit_scale)

    part_logits = (None, None)
    if lo.needs_classifier:
      img_pieces, txt_pieces = self._pieces(img), self._pieces(txt)
      img_logits = _f32(self.classifier(img_pieces))  # [B, M, K]
      txt_logits = _f32(self.classifier(txt_pieces))
      if lo.id:
        b, m, k = img_logits.shape
        terms["id"] = losses.id_loss(img_logits.reshape(b * m, k), txt_logits.reshape(b * m, k), jnp.repeat(pids, m))
      terms["img_acc"] = _accuracy(img_logits[:, 0], pids)
      terms["txt_acc"] = _accuracy(txt_logits[:, 0], pids)
      if o.use_parts:
        part_logits = (img_logits[:, -o.part.num_parts:], txt_logits[:, -o.part.num_parts:])

    if lo.mlm:
      mlm_tokens, _ = self.clip.encode_text(batch["mlm_ids"])
      logits = _f32(self.mlm_head(self.cross_former(mlm_tokens, img["tokens"])))
      labels = batch["mlm_labels"]
      self.sow("intermediates", "mlm_logits", logits)
      terms["mlm"] = losses.mlm_loss(logits, labels)
      terms["mlm_acc"] = _accuracy(logits, labels, labels != 0)

    if lo.efa:
      mask = (batch["caption_ids"] != 0) if lo.efa_mask_padding else None
      terms["efa"] = losses.efa_loss(_f32(txt["tokens"]), _f32(img["tokens"][:, 1:]), margin_t2e=lo.efa_margin_t2e,
                                     margin_i2e=lo.efa_margin_i2e, lse_temperature=lo.efa_lse_temperature,
                                     text_mask=mask)

    if lo.triplet or lo.cmr:
      tri_key, cmr_key = jax.random.split(self.make_rng("mining"))
    if lo.triplet:
      ranked_v = [gv[:, None]] if lo.global_loss == "triplet" else []
      ranked_t = [gt[:, None]] if lo.global_loss == "triplet" else []
      if o.use_parts:
        ranked_v.append(_f32(img["coarse"]))
        ranked_t.append(_f32(txt["coarse"]))
      ranked_v, ranked_t = jnp.concatenate(ranked_v, axis=1), jnp.concatenate(ranked_t, axis=1)  # [B, G, E]
      keys = jax.random.split(tri_key, ranked_v.shape[1])
      per_embedding = jax.vmap(
          lambda v, t, k: losses.triplet_ranking_loss(v, t, pids, k, margin=lo.triplet_margin),
          in_axes=(1, 1, 0))(ranked_v, ranked_t, keys)
      terms["triplet"] = jnp.sum(per_embedding)
    if lo.cmr:
      terms["cmr"] = losses.cmr_loss(
          _f32(img["part"]), _f32(txt["part"]), pids, cmr_key, margin=lo.cmr_margin, floor=lo.cmr_floor,
          commonality=lo.cmr_commonality, image_part_logits=part_logits[0], text_part_logits=part_logits[1],
          tau=lo.cmr_tau)

    total = sum(getattr(lo, name) * terms[name] for name in LOSS_NAMES if name in terms)
    return jnp.asarray(total, jnp.float32), terms

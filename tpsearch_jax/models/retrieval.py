"""The retrieval model: a backbone (CLIP, or BERT + ViT / ResNet-50: ``models/backbones.py``) plus the heads that the
method needs; it returns outputs, never losses.

Embeddings per modality: "global" [B, E] (CLS / EOT token, or max over patch tokens / valid text tokens), and with
the part model "coarse" [B, N_D, E] and "part" [B, P, E]. The training objective (``tpsearch_jax.objectives``) turns
the outputs of ``__call__`` into loss terms; the heads built are ``heads`` (``objectives.required_heads``). No dropout
anywhere, so ``train`` does not change the result.

Retrieval vector (``encode_images`` / ``encode_texts``): pieces [global, coarse_1..N_D, part_1..P], each L2-normalised
and scaled by √w (w = embed_weights.global_ / coarse / part per piece), concatenated and L2-normalised again, so
the dot product of two such vectors is Σ_k w_k·cos_k / Σ_k w_k — the weighted mean of per-piece cosines.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from tpsearch_jax import batch as batch_lib
from tpsearch_jax.models import backbones
from tpsearch_jax.models.bert import BertConfig
from tpsearch_jax.models.clip import CLIP, CLIPConfig
from tpsearch_jax.models.cross_former import CrossFormer, MLMHead
from tpsearch_jax.models.part_decoder import PartModel, PartOptions, stripe_bounds
from tpsearch_jax.models.resnet import ResNetConfig
from tpsearch_jax.models.vit import ViTConfig
from tpsearch_jax.objectives import Heads
from tpsearch_jax.reductions import max_along


@dataclasses.dataclass(frozen=True)
class EmbedWeights:
  """Test-time weight of each global / coarse / part piece in the retrieval cosine."""

  global_: float = 1.0
  coarse: float = 1.0
  part: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelOptions:
  """Backbone and heads. global_pool: "token" (CLS / EOT) or "max" (patch tokens / valid text tokens).

  backbone: "clip" (the towers of ``config.model.clip``), "vit_bert" or "rn50_bert" (``bert`` + ``vit`` / ``resnet``
  architectures, projected to ``embed_dim``; see ``models/backbones.py``).
  """

  name: str = "clip"
  backbone: str = "clip"
  embed_dim: int = 512  # joint width E of the paper backbones' projections (CLIP: config.model.clip.embed_dim)
  bert: BertConfig = BertConfig()
  vit: ViTConfig = ViTConfig()
  resnet: ResNetConfig = ResNetConfig()
  num_classes: int = 0
  global_pool: str = "token"
  use_parts: bool = False
  cross_layers: int = 4
  cross_heads: int = 8
  part: PartOptions = PartOptions()
  embed_weights: EmbedWeights = EmbedWeights()


def check_model_options(clip: CLIPConfig, model: ModelOptions, heads: Heads) -> None:
  """Raises ValueError naming the config field of any inconsistent model option."""
  backbones.check_backbone_options(clip, model, heads)
  embed_dim, grid = backbones.joint_dim(clip, model), backbones.image_grid(clip, model)
  if model.global_pool not in ("token", "max"):
    raise ValueError(f"config.model.global_pool must be 'token' or 'max', got {model.global_pool!r}")
  if heads.classifier and model.num_classes < 1:
    raise ValueError(f"config.model.num_classes must be >= 1 for the ID classifier, got {model.num_classes}")
  if heads.mlm and clip.embed_dim % model.cross_heads:
    raise ValueError(f"embed_dim {clip.embed_dim} is not divisible by config.model.cross_heads {model.cross_heads}")
  if model.use_parts:
    stripe_bounds(grid[0], model.part.num_parts)
    if embed_dim % model.part.heads:
      raise ValueError(f"embed_dim {embed_dim} is not divisible by config.model.part.heads {model.part.heads}")
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
  x = max_along(jnp.where(valid[..., None], tokens, -jnp.inf), axis=1)
  return jnp.where(jnp.any(valid, axis=1)[:, None], x, 0)


class RetrievalModel(nn.Module):
  """Backbone + optional classifier, cross-former/MLM head and part model. See the module docstring for the
  contract."""

  clip_config: CLIPConfig
  options: ModelOptions
  heads: Heads

  def setup(self):
    c, o, heads = self.clip_config, self.options, self.heads
    check_model_options(c, o, heads)
    if o.backbone == "clip":
      self.clip = CLIP(c)
    else:
      for name, module in backbones.tower_modules(c, o).items():
        setattr(self, name, module)
    embed_dim = backbones.joint_dim(c, o)
    if heads.classifier:
      self.classifier = nn.Dense(o.num_classes, dtype=c.dtype, kernel_init=nn.initializers.normal(0.001))
    if heads.mlm:
      self.cross_former = CrossFormer(c.embed_dim, o.cross_layers, o.cross_heads, c.dtype, c.remat, c.attention_impl)
      self.mlm_head = MLMHead(c.embed_dim, c.vocab_size, o.cross_layers, c.dtype)
    if o.use_parts:
      self.part_model = PartModel(embed_dim, backbones.image_grid(c, o), o.part, c.dtype, c.remat, c.attention_impl)

  # ---------------------------------------------------------------- embeddings
  def image_embeddings(self, images: jax.Array) -> dict[str, jax.Array]:
    """images [B, H, W, 3] → {"tokens": [B, 1+N, E], "global": [B, E], + "coarse" [B, N_D, E], "part" [B, P, E],
    "foreground" [B, N] with the part model} (compute dtype; foreground f32)."""
    if self.options.backbone == "clip":
      tokens, cls = self.clip.encode_image(images)
    else:
      tokens, cls = backbones.encode_image(self, images)
    patches = tokens[:, 1:]
    out = {"tokens": tokens, "global": cls if self.options.global_pool == "token" else max_along(patches, axis=1)}
    if self.options.use_parts:
      out.update(self.part_model.encode_image(patches))
    return out

  def text_embeddings(self, ids: jax.Array, encoded: tuple[jax.Array, jax.Array] | None = None
                      ) -> dict[str, jax.Array]:
    """ids int [B, L] (0 = padding) → {"tokens": [B, L, E], "global": [B, E], + "coarse", "part" with the part
    model}. encoded: the text tower's (tokens [B, L, E], pooled [B, E]) of ``ids`` when already computed."""
    if encoded is not None:
      tokens, eot = encoded
    elif self.options.backbone == "clip":
      tokens, eot = self.clip.encode_text(ids)
    else:
      tokens, eot = backbones.encode_text(self, ids)
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

  # ---------------------------------------------------------------- training outputs
  def __call__(self, batch: dict[str, jax.Array], train: bool = True) -> dict:
    """Train batch (``tpsearch_jax.batch``) → outputs for ``objectives.compute_losses``:

    {"image": image_embeddings(images), "text": text_embeddings(caption_ids),
     + "image_logits", "text_logits" f32 [B, M, K] (classifier on every piece) with the classifier,
     + "mlm_hidden" [B, L, E] (cross-former on mlm_ids vs all image tokens) with the MLM head; ``mlm_logits``
     projects it onto the vocabulary, where the objective chooses (``tpsearch_jax.masked_mlm``)}.
    """
    del train  # no dropout or other train-only behaviour
    batch_lib.check_train_batch(batch, ("images", "caption_ids", "pids") + (batch_lib.MLM_KEYS if self.heads.mlm
                                                                              else ()))
    img = self.image_embeddings(batch["images"])
    if self.heads.mlm:
      encoded, (mlm_tokens, _) = self._encode_text_pair(batch["caption_ids"], batch["mlm_ids"])
      txt = self.text_embeddings(batch["caption_ids"], encoded=encoded)
    else:
      txt = self.text_embeddings(batch["caption_ids"])
    out = {"image": img, "text": txt}
    if self.heads.classifier:
      out["image_logits"] = _f32(self.classifier(self._pieces(img)))
      out["text_logits"] = _f32(self.classifier(self._pieces(txt)))
    if self.heads.mlm:
      out["mlm_hidden"] = self.cross_former(mlm_tokens, img["tokens"])
      if self.is_initializing():  # the head runs outside __call__ (objectives choose its positions): create its params
        self.mlm_logits(out["mlm_hidden"][:, :1])
    return out

  def _encode_text_pair(self, ids: jax.Array, mlm_ids: jax.Array):
    """Captions and their masked copies, int [B, L] each, through the text tower in one [2B, L] pass (rows
    interleaved, so a batch-sharded input stays local) → ((tokens [B, L, E], pooled [B, E]), the same for mlm_ids)."""
    b, length = ids.shape
    tokens, pooled = self.clip.encode_text(jnp.stack([ids, mlm_ids], axis=1).reshape(2 * b, length))
    tokens = tokens.reshape(b, 2, length, tokens.shape[-1])
    pooled = pooled.reshape(b, 2, pooled.shape[-1])
    return (tokens[:, 0], pooled[:, 0]), (tokens[:, 1], pooled[:, 1])

  def mlm_logits(self, hidden: jax.Array) -> jax.Array:
    """Cross-former output [..., E] → vocabulary logits f32 [..., V] (the MLM head)."""
    return _f32(self.mlm_head(hidden))

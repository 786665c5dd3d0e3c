"""Analytic FLOP count of a training step, and the peak FLOP/s of known accelerators (for MFU).

Only matrix multiplications are counted (2·m·n·k each): patch embedding, attention projections, attention scores and
the weighted sum, MLPs, output projections, the cross-former and its MLM head, the ID classifier and the batch
similarity matrices. LayerNorm, softmax, activations and the optimizer update are O(activations) and left out, so
the count is a slight lower bound of what XLA's cost analysis reports (≈1–2 % at width 128, less at ViT-B widths).
Causal text attention is counted at full T×T, as XLA computes it. The backward pass costs twice the forward for every
matmul except the patch embedding, whose input (the images) needs no gradient: it costs one forward there. These are
"model FLOPs": recomputation under remat is not counted, so MFU stays comparable between remat on and off.

The paper backbones (``config.model.backbone`` "vit_bert" / "rn50_bert") count BERT (post-LN layers, the pooler), the
ImageNet ViT or every ResNet convolution (2·C_in·C_out per kernel tap that lands on the input, i.e. taps on the zero
padding are not counted, as in XLA's cost analysis; the stem convolution, like the patch embedding, needs no input
gradient), and the new projections to the joint width; a frozen tower (lr × 0) is still differentiated by
the train step, so its backward pass is counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from tpsearch_jax import masked_mlm, objectives
from tpsearch_jax.models import backbones
from tpsearch_jax.models.bert import BertConfig
from tpsearch_jax.models.clip import CLIPConfig
from tpsearch_jax.models.resnet import ResNetConfig
from tpsearch_jax.models.vit import ViTConfig
from tpsearch_jax.training.options import Options

# Backward/forward FLOP ratio per breakdown entry: 2 (input grad + weight grad) unless listed here.
_BACKWARD_RATIO_OVERRIDES = {"vision/patch_embed": 1.0}  # images carry no gradient: weight grad only


def matmul(m: float, n: float, k: float) -> float:
  """FLOPs of an [m, k] × [k, n] product."""
  return 2.0 * m * n * k


def attention(q_len: int, kv_len: int, width: int, kv_width: int | None = None) -> dict[str, float]:
  """Multi-head attention over one sequence, heads·head_dim = width (projections included)."""
  kv_width = width if kv_width is None else kv_width
  return {
      "attn_qkv": matmul(q_len, width, width) + 2 * matmul(kv_len, width, kv_width),
      "attn_scores": matmul(q_len, kv_len, width),
      "attn_weighted_sum": matmul(q_len, width, kv_len),
      "attn_out": matmul(q_len, width, width),
  }


def transformer(tokens: int, width: int, layers: int, mlp_dim: int | None = None) -> dict[str, float]:
  """A stack of pre-LN self-attention blocks over one sequence of ``tokens`` positions; MLP hidden width ``mlp_dim``
  (None: 4·width)."""
  per_layer = attention(tokens, tokens, width)
  per_layer["mlp"] = 2 * matmul(tokens, 4 * width if mlp_dim is None else mlp_dim, width)
  return {name: layers * value for name, value in per_layer.items()}


def _prefixed(prefix: str, flops: Mapping[str, float], times: float = 1.0) -> dict[str, float]:
  return {f"{prefix}/{name}": times * value for name, value in flops.items()}


def vision_tower(clip: CLIPConfig) -> dict[str, float]:
  """Forward FLOPs of the ViT for one image (all tokens go through ln_post and ``proj``)."""
  gh, gw = clip.grid
  patches = gh * gw
  out = {"patch_embed": matmul(patches, clip.vision_width, 3 * clip.patch_size ** 2)}
  out.update(transformer(patches + 1, clip.vision_width, clip.vision_layers, clip.vision_mlp_width))
  out["proj"] = matmul(patches + 1, clip.embed_dim, clip.vision_width)
  return out


def text_tower(clip: CLIPConfig, length: int | None = None) -> dict[str, float]:
  """Forward FLOPs of the text transformer for one caption of ``length`` tokens (default context_length)."""
  length = clip.context_length if length is None else length
  out = transformer(length, clip.text_width, clip.text_layers, clip.text_mlp_width)
  out["proj"] = matmul(length, clip.embed_dim, clip.text_width)
  return out


def bert_tower(bert: BertConfig, length: int, embed_dim: int) -> dict[str, float]:
  """Forward FLOPs of BERT for one caption of ``length`` word pieces, the pooler and the projection to E."""
  out = transformer(length, bert.hidden_size, bert.num_layers, bert.intermediate_size)
  out["pooler"] = matmul(1, bert.hidden_size, bert.hidden_size)
  out["proj"] = matmul(length, embed_dim, bert.hidden_size)
  return out


def vit_tower(vit: ViTConfig, image_size: tuple[int, int], embed_dim: int) -> dict[str, float]:
  """Forward FLOPs of the ImageNet ViT for one image and the projection of all 1 + N tokens to E."""
  gh, gw = vit.grid(image_size)
  patches = gh * gw
  out = {"patch_embed": matmul(patches, vit.hidden_size, 3 * vit.patch_size ** 2)}
  out.update(transformer(patches + 1, vit.hidden_size, vit.num_layers, vit.mlp_dim))
  out["proj"] = matmul(patches + 1, embed_dim, vit.hidden_size)
  return out


def _conv_taps(size: int, kernel: int, stride: int) -> int:
  """Kernel taps on real input (padding kernel // 2 excluded) summed over the outputs of one spatial dimension."""
  pad = kernel // 2
  outputs = (size + 2 * pad - kernel) // stride + 1
  return sum(min(o * stride - pad + kernel, size) - max(o * stride - pad, 0) for o in range(outputs))


def conv2d(hw: tuple[int, int], kernel: int, stride: int, cin: int, cout: int) -> float:
  """FLOPs of a k×k convolution with padding k // 2 on an [h, w, cin] input (padding taps not counted)."""
  return 2.0 * _conv_taps(hw[0], kernel, stride) * _conv_taps(hw[1], kernel, stride) * cin * cout


def resnet_tower(resnet: ResNetConfig, image_size: tuple[int, int], embed_dim: int) -> dict[str, float]:
  """Forward FLOPs of the ResNet for one image: the stem ("patch_embed"), every bottleneck convolution ("convs"),
  and the projection of the h·w map positions to E."""
  h, w = image_size
  out = {"patch_embed": conv2d((h, w), 7, 2, 3, resnet.embedding_size), "convs": 0.0}
  h, w, cin = h // 4, w // 4, resnet.embedding_size  # stem stride 2, then the 3×3/2 max-pool
  for width, depth, stride in zip(resnet.hidden_sizes, resnet.depths, resnet.stage_strides):
    for j in range(depth):
      s = stride if j == 0 else 1
      ho, wo, mid = h // s, w // s, width // 4
      s0, s1 = (s, 1) if resnet.downsample_in_bottleneck else (1, s)  # which convolution carries the stride
      out["convs"] += (conv2d((h, w), 1, s0, cin, mid) + conv2d((h // s0, w // s0), 3, s1, mid, mid)
                       + conv2d((ho, wo), 1, 1, mid, width))
      if cin != width or s != 1:  # projection shortcut
        out["convs"] += conv2d((h, w), 1, s, cin, width)
      h, w, cin = ho, wo, width
  out["proj"] = matmul(h * w, embed_dim, cin)
  return out


def cross_former(q_len: int, kv_len: int, width: int, layers: int) -> dict[str, float]:
  """IRRA cross-former for one caption: cross-attention (text → image tokens), then ``layers`` self-attn blocks."""
  out = _prefixed("cross_attn", attention(q_len, kv_len, width))
  out.update(_prefixed("blocks", transformer(q_len, width, layers)))
  return out


def mlm_head_rows(loss, batch_size: int, length: int) -> int:
  """Positions the MLM head projects per step: all B·L ("full"), or the gathered capacity ("masked", its fast path)."""
  if loss.mlm_head == "full":
    return batch_size * length
  g = masked_mlm.group_size(batch_size, loss.mlm_group_rows)
  return batch_size // g * masked_mlm.capacity(g, length, loss.mlm_capacity)


def mlm_head(positions: int, width: int, vocab: int) -> dict[str, float]:
  """MLM head for one caption: dense width→width, then the vocabulary projection, at ``positions`` positions."""
  return {"dense": matmul(positions, width, width), "vocab": matmul(positions, vocab, width)}


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """Per-step FLOPs: ``forward`` breakdown by component (whole batch) and the forward+backward total."""

  forward: dict[str, float]
  batch_size: int

  @property
  def forward_total(self) -> float:
    return sum(self.forward.values())

  @property
  def backward(self) -> dict[str, float]:
    return {k: v * _BACKWARD_RATIO_OVERRIDES.get(k, 2.0) for k, v in self.forward.items()}

  @property
  def train_total(self) -> float:
    return self.forward_total + sum(self.backward.values())

  @property
  def per_sample(self) -> float:
    return self.train_total / self.batch_size

  def grouped(self) -> dict[str, float]:
    """Forward FLOPs summed by top-level component (text before the first '/')."""
    groups: dict[str, float] = {}
    for name, value in self.forward.items():
      top = name.split("/")[0]
      groups[top] = groups.get(top, 0.0) + value
    return groups


def _decoder_pass(queries: int, memory: int, width: int, layers: int, shared_kv: bool = False) -> dict[str, float]:
  """Part-model decoder over one sequence: per layer cross-attention (queries → memory), self-attention, MLP.

  shared_kv: the memory's key/value projections were already computed by another pass with the same decoder weights
  over the same memory (XLA computes them once), so they are not counted again.
  """
  out: dict[str, float] = {}
  for _ in range(layers):
    cross = attention(queries, memory, width)
    if shared_kv:
      cross["attn_qkv"] -= 2 * matmul(memory, width, width)
    for k, v in _prefixed("cross_attn", cross).items():
      out[k] = out.get(k, 0.0) + v
    for k, v in _prefixed("self", transformer(queries, width, 1)).items():
      out[k] = out.get(k, 0.0) + v
  return out


def _add(into: dict[str, float], more: Mapping[str, float]) -> None:
  for k, v in more.items():
    into[k] = into.get(k, 0.0) + v


def train_step_flops(options: Options, batch_size: int) -> StepFlops:
  """Analytic FLOPs of one training step of the run ``options`` (``training.options.run_options``) at global
  ``batch_size``.

  Built from the same method description as the model (``build_model`` + ``objectives.required_heads``): the image
  tower once; the text tower on the captions, and again on the
  masked ids when the MLM loss is on; cross-former + MLM head at all L positions; the shared classifier on every
  embedding piece of both modalities; one B×B similarity per global objective, per triplet-ranked embedding and per
  CMR part; EFA's per-pair aggregation and all-pairs set similarity; the part model's encoders and shared decoder.
  """
  clip, opts, lo = options.clip, options.model, options.loss
  heads = objectives.required_heads(lo)
  b = float(batch_size)
  length, embed = clip.context_length, backbones.joint_dim(clip, opts)
  gh, gw = backbones.image_grid(clip, opts)
  patches = gh * gw
  if opts.backbone == "clip":
    forward = _prefixed("vision", vision_tower(clip), b)
    forward.update(_prefixed("text", text_tower(clip), b))
  else:
    length = int(options.data.context_length)
    image = (vit_tower(opts.vit, clip.image_size, embed) if opts.backbone == "vit_bert"
             else resnet_tower(opts.resnet, clip.image_size, embed))
    forward = _prefixed("vision", image, b)
    forward.update(_prefixed("text", bert_tower(opts.bert, length, embed), b))
  if heads.mlm:
    forward.update(_prefixed("text_mlm", text_tower(clip), b))
    forward.update(_prefixed("cross_former", cross_former(length, patches + 1, embed, opts.cross_layers), b))
    forward.update(_prefixed("mlm_head", mlm_head(mlm_head_rows(lo, batch_size, length), embed, clip.vocab_size)))
  pieces = 1
  if opts.use_parts:
    p = opts.part
    pieces = 1 + p.num_queries + p.num_parts
    part: dict[str, float] = {}
    _add(part, _prefixed("image_encoder", transformer(patches, embed, p.encoder_layers)))
    _add(part, _prefixed("text_encoder", transformer(length, embed, p.encoder_layers)))
    _add(part, _prefixed("decoder", _decoder_pass(p.num_queries, patches, embed, p.decoder_layers)))  # image coarse
    _add(part, _prefixed("decoder", _decoder_pass(p.num_queries, length, embed, p.decoder_layers)))  # text coarse
    _add(part, _prefixed("decoder", _decoder_pass(p.num_parts, length, embed, p.decoder_layers,
                                                         shared_kv=True)))  # text parts: same memory K/V
    forward.update(_prefixed("part_model", part, b))
  if heads.classifier:
    forward["classifier"] = 2 * matmul(b * pieces, opts.num_classes, embed)  # image and text pieces
  sims = sum(1 for w in (lo.sdm, lo.asdm, lo.itc) if w)
  if lo.triplet:
    sims += (1 if lo.global_loss == "triplet" else 0) + (opts.part.num_queries if opts.use_parts else 0)
  if lo.cmr:
    sims += opts.part.num_parts * (3 if lo.cmr_commonality == "freq" else 1)  # "freq" adds two intra-modal ones
  if sims:
    forward["similarity"] = sims * matmul(b, b, embed)
  if lo.efa:
    # Per pair: text tokens × patches (CLS dropped), then W·V; set similarity of every (text i, image j) pair
    # between X ∈ {T (L tokens), V (N patches)} and the aggregated E (L tokens).
    forward["efa/aggregate"] = b * (matmul(length, patches, embed) + matmul(length, embed, patches))
    forward["efa/set_similarity"] = b * b * (matmul(length, length, embed) + matmul(patches, length, embed))
  return StepFlops(forward=forward, batch_size=batch_size)


# Dense peak FLOP/s per chip: (bf16, float32 as XLA runs it by default). GPUs run f32 dots on TF32 tensor cores by
# default; TPUs run them as bf16 passes, so their f32 entry repeats the bf16 peak. Ordered: first substring match wins.
_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("h100 pcie", 756e12, 378e12),
    ("h100 nvl", 835e12, 418e12),
    ("h100", 989e12, 494.5e12),  # SXM
    ("h200", 989e12, 494.5e12),
    ("gh200", 989e12, 494.5e12),
    ("b200", 2250e12, 1100e12),
    ("a100", 312e12, 156e12),
    ("l40s", 362e12, 183e12),
    ("l4", 121e12, 60e12),
    ("a10g", 70e12, 35e12),
    ("tpu v4", 275e12, 275e12),
    ("tpu v5 lite", 197e12, 197e12),  # v5e
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),
    ("tpu v6 lite", 918e12, 918e12),  # Trillium (v6e)
    ("tpu v6e", 918e12, 918e12),
)


def peak_flops(device_kind: str, dtype: str = "bfloat16") -> float | None:
  """Dense peak FLOP/s of one device of ``device_kind`` (jax Device.device_kind) at ``dtype``; None if unknown/CPU."""
  kind = device_kind.lower()
  for key, bf16, f32 in _PEAKS:
    if key in kind:
      return bf16 if dtype in ("bfloat16", "float16") else f32
  return None

"""ResNet (Hugging Face ``ResNetModel``, e.g. microsoft/resnet-50: bottleneck v1.5) in Flax Linen, NHWC.

Module names mirror the HF checkpoint (``embedder/embedder/convolution``, ``encoder/stages_{s}/layers_{j}/layer_{k}/
normalization``, ``…/shortcut/convolution``), so the import is one name rule. ``last_stride=1`` removes the stride of
the last stage (the re-id "last stride" trick): a 384×128 image then gives a 24×8 map instead of 12×4.

BatchNorm is **frozen**: it always normalises with the checkpoint's running statistics (PyTorch ``eval()``), in
training too; the affine scale and bias stay trainable. Nothing depends on the batch, so data parallelism over any
number of devices computes the same thing. Standalone, the statistics are the ``batch_stats`` collection
(``apply({"params": p, "batch_stats": s}, x)``); inside the retrieval model (``stats_in_params=True``) they sit next
to scale/bias as ``mean``/``var`` params behind a stop-gradient, with lr 0 and no weight decay in the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Architecture. Defaults: ResNet-50 (bottleneck, stride in the 3×3 convolution) with the standard last stride 2."""

  embedding_size: int = 64
  hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
  depths: tuple[int, ...] = (3, 4, 6, 3)
  downsample_in_first_stage: bool = False
  downsample_in_bottleneck: bool = False  # True: stride in the first 1×1 (v1); False: in the 3×3 (v1.5)
  last_stride: int = 2
  bn_eps: float = 1e-5

  def __post_init__(self):
    if len(self.hidden_sizes) != len(self.depths) or len(self.depths) < 2:
      raise ValueError(f"ResNet needs >= 2 stages with one width per stage, got hidden_sizes {self.hidden_sizes} and "
                       f"depths {self.depths}")
    if self.last_stride not in (1, 2):
      raise ValueError(f"last_stride must be 1 or 2, got {self.last_stride}")

  @property
  def stage_strides(self) -> tuple[int, ...]:
    strides = [2 if self.downsample_in_first_stage else 1] + [2] * (len(self.depths) - 1)
    strides[-1] = self.last_stride
    return tuple(strides)

  @property
  def stride(self) -> int:
    """Total stride: stem (4) × every stage's."""
    total = 4
    for s in self.stage_strides:
      total *= s
    return total

  def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the output map for images of ``image_size``; requires divisibility by the total stride."""
    h, w = image_size
    if h % self.stride or w % self.stride:
      raise ValueError(f"image_size {tuple(image_size)} is not divisible by the ResNet stride {self.stride}")
    return h // self.stride, w // self.stride


def summary(c: ResNetConfig) -> str:
  """One line for messages."""
  return (f"ResNet bottleneck stem {c.embedding_size}, widths {list(c.hidden_sizes)}, depths {list(c.depths)}, "
          f"last stride {c.last_stride}, downsample in {'1x1' if c.downsample_in_bottleneck else '3x3'}")


class FrozenBatchNorm(nn.Module):
  """(x − running mean) · scale / √(running var + eps) + bias over the last axis. [..., C] → [..., C]."""

  eps: float = 1e-5
  stats_in_params: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    if self.stats_in_params:
      mean = jax.lax.stop_gradient(self.param("mean", nn.initializers.zeros, (c,)))
      var = jax.lax.stop_gradient(self.param("var", nn.initializers.ones, (c,)))
    else:
      mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32).value
      var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32).value
    mul = scale * jax.lax.rsqrt(var + self.eps)
    return ((x.astype(jnp.float32) - mean) * mul + bias).astype(self.dtype)


class ConvLayer(nn.Module):
  """convolution (k×k, padding k//2, no bias) → normalization → ReLU unless ``relu=False``. NHWC."""

  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True
  eps: float = 1e-5
  stats_in_params: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k, pad = self.kernel, self.kernel // 2
    x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride), padding=((pad, pad), (pad, pad)),
                use_bias=False, dtype=self.dtype, name="convolution",
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"))(x)
    x = FrozenBatchNorm(self.eps, self.stats_in_params, self.dtype, name="normalization")(x)
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  """relu(layer_2(layer_1(layer_0(x))) + shortcut(x)); widths out/4, out/4, out. [B, H, W, in] → [B, H/s, W/s, out]."""

  features: int
  stride: int = 1
  downsample_in_bottleneck: bool = False
  eps: float = 1e-5
  stats_in_params: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = dict(eps=self.eps, stats_in_params=self.stats_in_params, dtype=self.dtype)
    residual = x
    if x.shape[-1] != self.features or self.stride != 1:
      residual = ConvLayer(self.features, 1, self.stride, relu=False, name="shortcut", **conv)(x)
    reduced = self.features // 4
    first, middle = (self.stride, 1) if self.downsample_in_bottleneck else (1, self.stride)
    y = ConvLayer(reduced, 1, first, name="layer_0", **conv)(x)
    y = ConvLayer(reduced, 3, middle, name="layer_1", **conv)(y)
    y = ConvLayer(self.features, 1, 1, relu=False, name="layer_2", **conv)(y)
    return nn.relu(y + residual)


class _Embedder(nn.Module):
  """7×7/2 convolution + BN + ReLU (``embedder``), then 3×3/2 max-pool with padding 1. → [B, H/4, W/4, C]."""

  config: ResNetConfig
  stats_in_params: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ConvLayer(self.config.embedding_size, 7, 2, eps=self.config.bn_eps, stats_in_params=self.stats_in_params,
                  dtype=self.dtype, name="embedder")(x)
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Stage(nn.Module):
  """``layers_{j}`` bottlenecks; the first one carries the stage's stride."""

  config: ResNetConfig
  features: int
  depth: int
  stride: int
  stats_in_params: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Bottleneck) if self.remat else Bottleneck
    for j in range(self.depth):
      x = block(self.features, self.stride if j == 0 else 1, self.config.downsample_in_bottleneck,
                self.config.bn_eps, self.stats_in_params, self.dtype, name=f"layers_{j}")(x)
    return x


class _Encoder(nn.Module):
  config: ResNetConfig
  stats_in_params: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    c = self.config
    for s, (width, depth, stride) in enumerate(zip(c.hidden_sizes, c.depths, c.stage_strides)):
      x = _Stage(c, width, depth, stride, self.stats_in_params, self.dtype, self.remat, name=f"stages_{s}")(x)
    return x


class ResNet(nn.Module):
  """images [B, H, W, 3] (normalised, NHWC) → feature map [B, H/stride, W/stride, hidden_sizes[-1]]: HF
  ``ResNetModel(...).last_hidden_state`` transposed to NHWC (with ``last_stride=2``)."""

  config: ResNetConfig = ResNetConfig()
  stats_in_params: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, images):
    x = _Embedder(self.config, self.stats_in_params, self.dtype, name="embedder")(images.astype(self.dtype))
    return _Encoder(self.config, self.stats_in_params, self.dtype, self.remat, name="encoder")(x)

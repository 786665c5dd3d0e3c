"""The ImageNet ViT (HF ``ViTModel``) on the shared transformer blocks, and its weight import (``load_vit``)."""

from tpsearch_jax.models.vit.model import ViTConfig, VisionTransformer
from tpsearch_jax.models.vit.weights import convert_state_dict, convert_vit, load_vit

__all__ = ["ViTConfig", "VisionTransformer", "convert_state_dict", "convert_vit", "load_vit"]

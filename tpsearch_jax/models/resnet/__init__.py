"""ResNet-50 (HF ``ResNetModel``) with frozen BatchNorm and an optional last stride 1, and its import."""

from tpsearch_jax.models.resnet.model import FrozenBatchNorm, ResNet, ResNetConfig
from tpsearch_jax.models.resnet.weights import convert_resnet, convert_state_dict, load_resnet50, merge_stats

__all__ = ["FrozenBatchNorm", "ResNet", "ResNetConfig", "convert_resnet", "convert_state_dict", "load_resnet50",
           "merge_stats"]

"""Pretrained-weight import in one place: CLIP (``tpsearch_jax.models.clip``, its former home was here) and the paper
backbones (``models/bert``, ``models/vit``, ``models/resnet``)."""

from tpsearch_jax.models.bert import load_bert
from tpsearch_jax.models.clip import (CheckpointError, check_params, convert_checkpoint, convert_state_dict, load_clip,
                                      load_clip_params, load_params, read_checkpoint, resize_posemb, save_params)
from tpsearch_jax.models.resnet import load_resnet50
from tpsearch_jax.models.vit import load_vit

__all__ = ["CheckpointError", "check_params", "convert_checkpoint", "convert_state_dict", "load_bert", "load_clip",
           "load_clip_params", "load_params", "load_resnet50", "load_vit", "read_checkpoint", "resize_posemb",
           "save_params"]

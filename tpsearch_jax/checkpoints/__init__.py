"""Former home of the pretrained-CLIP weight import, now ``tpsearch_jax.models.clip``; these names re-export it."""

from tpsearch_jax.models.clip import (CheckpointError, check_params, convert_checkpoint, convert_state_dict, load_clip,
                                      load_clip_params, load_params, read_checkpoint, resize_posemb, save_params)

__all__ = ["CheckpointError", "check_params", "convert_checkpoint", "convert_state_dict", "load_clip",
           "load_clip_params", "load_params", "read_checkpoint", "resize_posemb", "save_params"]

"""Pretrained CLIP weights: import from HF / OpenAI checkpoints, conversion to Flax params, params files."""

from tpsearch_jax.checkpoints.clip_import import check_params
from tpsearch_jax.checkpoints.clip_import import CheckpointError
from tpsearch_jax.checkpoints.clip_import import convert_checkpoint
from tpsearch_jax.checkpoints.clip_import import convert_state_dict
from tpsearch_jax.checkpoints.clip_import import load_clip
from tpsearch_jax.checkpoints.clip_import import load_clip_params
from tpsearch_jax.checkpoints.clip_import import read_checkpoint
from tpsearch_jax.checkpoints.params_io import load_params
from tpsearch_jax.checkpoints.params_io import save_params
from tpsearch_jax.checkpoints.posemb import resize_posemb

__all__ = ["CheckpointError", "check_params", "convert_checkpoint", "convert_state_dict", "load_clip",
           "load_clip_params", "load_params", "read_checkpoint", "resize_posemb", "save_params"]

"""CLIP in one place: the Flax towers, HF / OpenAI weight import, the BPE tokenizer and the image statistics.

``model`` (CLIPConfig, the towers, ``tiny_config``), ``weights`` (``load_clip``, ``convert_clip`` …) with
``layouts``, ``posemb`` and ``params_io``, ``tokenizer``, ``image_stats``. The transformer block itself is
``tpsearch_jax.models.blocks``, shared with the cross-former and the part model; the weight conversion CLI of every
backbone is ``tpsearch_jax.models.convert_weights``.
"""

from tpsearch_jax.models.blocks import LN_EPS, MLP, BlockInit, ResidualAttentionBlock, Transformer, quick_gelu
from tpsearch_jax.models.clip.image_stats import CLIP_MEAN, CLIP_STD
from tpsearch_jax.models.clip.layouts import CheckpointError
from tpsearch_jax.models.clip.model import CLIP, CLIPConfig, TextTransformer, VisionTransformer, tiny_config
from tpsearch_jax.models.clip.params_io import load_params, save_params
from tpsearch_jax.models.clip.posemb import resize_posemb
from tpsearch_jax.models.clip.tokenizer import ClipTokenizer, default_tokenizer, tokenize
from tpsearch_jax.models.clip.weights import (check_params, convert_clip, convert_state_dict, load_clip,
                                             load_clip_params, read_weights)

__all__ = [
    "CLIP", "CLIPConfig", "CLIP_MEAN", "CLIP_STD", "LN_EPS", "MLP", "BlockInit", "CheckpointError", "ClipTokenizer",
    "ResidualAttentionBlock", "TextTransformer", "Transformer", "VisionTransformer", "check_params",
    "convert_clip", "convert_state_dict", "default_tokenizer", "load_clip", "load_clip_params", "load_params",
    "quick_gelu", "read_weights", "resize_posemb", "save_params", "tiny_config", "tokenize",
]

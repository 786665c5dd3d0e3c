"""Models: the CLIP towers, the IRRA cross-former, the part model of Park et al., the retrieval model and its presets.

``method_options(config)`` (``registry.py``) reads ``config.model`` / ``config.loss`` into ``MethodOptions``;
``build_model(options)`` turns them into a ``RetrievalModel``.
"""

from __future__ import annotations

from tpsearch_jax.models.clip import CLIP, CLIPConfig
from tpsearch_jax.models.part_decoder import PartOptions
from tpsearch_jax.models.presets import METHODS, method_preset, tiny_model_config
from tpsearch_jax.models.registry import MethodOptions, build_model, check_options, method_options, resolve_dtype
from tpsearch_jax.models.retrieval import EmbedWeights, ModelOptions, RetrievalModel
from tpsearch_jax.objectives import Heads, LossOptions

__all__ = ["CLIP", "CLIPConfig", "EmbedWeights", "Heads", "LossOptions", "METHODS", "MethodOptions", "ModelOptions",
           "PartOptions", "RetrievalModel", "build_model", "check_options", "method_options", "method_preset",
           "resolve_dtype", "tiny_model_config"]

"""Models: the CLIP towers, the IRRA cross-former, the part model of Park et al., the retrieval model and its presets.

``build_model(config)`` (``registry.py``) turns ``config.model`` / ``config.loss`` into a ``RetrievalModel``.
"""

from __future__ import annotations

from tpsearch_jax.models.clip import CLIP, CLIPConfig
from tpsearch_jax.models.part_decoder import PartOptions
from tpsearch_jax.models.presets import METHODS, method_preset, tiny_model_config
from tpsearch_jax.models.registry import build_model, check_options, model_options, resolve_dtype
from tpsearch_jax.models.retrieval import EmbedWeights, ModelOptions, RetrievalModel
from tpsearch_jax.objectives import Heads, LossOptions

__all__ = ["CLIP", "CLIPConfig", "EmbedWeights", "Heads", "LossOptions", "METHODS", "ModelOptions", "PartOptions",
           "RetrievalModel", "build_model", "check_options", "method_preset", "model_options", "resolve_dtype",
           "tiny_model_config"]

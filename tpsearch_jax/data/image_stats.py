"""Former home of CLIP's image mean / std, now ``tpsearch_jax.models.clip.image_stats``; re-exported here."""

from tpsearch_jax.models.clip.image_stats import CLIP_MEAN, CLIP_STD

__all__ = ["CLIP_MEAN", "CLIP_STD"]

"""Data: benchmark annotation readers, the synthetic_pedes generator, tokenizer, TFDS builders, input pipelines.

Importing this package never imports TensorFlow (the TFDS builders and tf.data pipelines live in their own modules).
"""

from __future__ import annotations

from tpsearch_jax.data.annotations import (DATASET_NAMES, AnnotationError, Annotations, EvalSplit, ImageRecord,
                                           MissingImages, TrainRecord, find_missing_images, read_annotations)

__all__ = [
    "DATASET_NAMES", "AnnotationError", "Annotations", "EvalSplit", "ImageRecord", "MissingImages", "TrainRecord",
    "find_missing_images", "read_annotations",
]
